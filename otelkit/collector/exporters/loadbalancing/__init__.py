"""The ``loadbalancing`` exporter: trace-aware routing over OTLP/gRPC backends."""

from otelkit.collector.exporters.loadbalancing.exporter import factory

__all__ = ["factory"]
