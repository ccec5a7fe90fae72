"""``nop``: accepts and discards everything. The baseline for benchmarks and tests."""

from __future__ import annotations

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Exporter,
    exporter_factory,
)


class NopConfig(ComponentConfig):
    pass


class NopExporter(Exporter):
    def __init__(self, settings: CreateSettings) -> None:
        self._telemetry = settings.telemetry
        self._name = str(settings.id)

    async def consume(self, payload: Payload) -> None:
        self._telemetry.exporter_sent(self._name, signal_of(payload), count_items(payload))


def _create(settings: CreateSettings, config: NopConfig, signals: frozenset[Signal]) -> NopExporter:
    return NopExporter(settings)


factory = exporter_factory("nop", NopConfig, _create, frozenset(Signal))
