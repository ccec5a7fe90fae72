"""Prometheus remote write: the ``prometheusremotewrite`` exporter."""

from otelkit.collector.exporters.prometheusremotewrite.exporter import factory

__all__ = ["factory"]
