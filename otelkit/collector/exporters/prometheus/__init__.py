"""Prometheus exporters: the ``prometheus`` scrape endpoint and the translation that
``prometheusremotewrite`` shares with it."""

from otelkit.collector.exporters.prometheus.exporter import factory

__all__ = ["factory"]
