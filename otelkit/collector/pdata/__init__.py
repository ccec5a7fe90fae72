"""Helpers for the OTLP protobuf messages that move through pipelines (the pdata)."""

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of

__all__ = ["Payload", "Signal", "count_items", "signal_of"]
