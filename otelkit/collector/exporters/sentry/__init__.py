"""``sentry`` exporter: OpenTelemetry errors with real stack frames, whole-trace
transactions and logs, sent to Sentry (or any Sentry-compatible server) as envelopes.

See :mod:`otelkit.collector.exporters.sentry.exporter` for how data flows.
"""

from __future__ import annotations

from otelkit.collector.exporters.sentry.config import SentryConfig
from otelkit.collector.exporters.sentry.exporter import SentryExporter
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import CreateSettings, exporter_factory

__all__ = ["SentryConfig", "SentryExporter", "factory"]


def _create(
    settings: CreateSettings, config: SentryConfig, signals: frozenset[Signal]
) -> SentryExporter:
    return SentryExporter(settings, config, signals)


factory = exporter_factory("sentry", SentryConfig, _create, frozenset({Signal.TRACES, Signal.LOGS}))
