"""Run the ``prometheus`` exporter in-process on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig, PrometheusExporter
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry


@asynccontextmanager
async def running_exporter(**config: Any) -> AsyncIterator[PrometheusExporter]:
    settings = CreateSettings(ComponentID("prometheus"), Kind.EXPORTER, SelfTelemetry())
    exporter = PrometheusExporter(
        settings, PrometheusConfig.model_validate({"endpoint": "127.0.0.1:0", **config})
    )
    await exporter.start(ServiceHost())
    try:
        yield exporter
    finally:
        await exporter.shutdown()
