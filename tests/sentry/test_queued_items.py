"""The exporter helper's queued items: the retry unit of exporters that convert first."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.exporterhelper import (
    ExporterHelperConfig,
    QueuedExporter,
    QueuedItem,
)
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "50ms", "max_elapsed_time": "2s"}


class DroppedError(PermanentError):
    reason = "rate_limited"
    logged = True


class ItemExporter(QueuedExporter):
    def __init__(self, telemetry: SelfTelemetry, config: dict[str, Any], script: list[Exception]):
        settings = CreateSettings(ComponentID("items"), Kind.EXPORTER, telemetry)
        super().__init__(settings, ExporterHelperConfig.model_validate(config))
        self.script = list(script)
        self.delivered: list[str] = []

    async def send_item(self, item: QueuedItem) -> None:
        if self.script:
            raise self.script.pop(0)
        self.delivered.append(item.data)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_items_are_retried_and_counted_by_their_own_item_count() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> ItemExporter:
        exporter = ItemExporter(
            telemetry,
            {"retry_on_failure": FAST_RETRY, "sending_queue": {"num_consumers": 1}},
            [RetryableError("500")],
        )
        await exporter.start(ServiceHost())
        await exporter.enqueue([QueuedItem(Signal.TRACES, 3, "a")])
        await until(lambda: exporter.delivered)
        exporter.script.append(DroppedError("429"))
        await exporter.enqueue([QueuedItem(Signal.LOGS, 2, "b"), QueuedItem(Signal.LOGS, 1, "c")])
        await until(lambda: len(exporter.delivered) == 2)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.delivered == ["a", "c"]
    assert telemetry.total("otelcol_exporter_sent_spans_total") == 3
    assert telemetry.total("otelcol_exporter_sent_log_records_total") == 1
    failed = telemetry.total(
        "otelcol_exporter_send_failed_log_records_total", reason="rate_limited"
    )
    assert failed == 2


def test_items_that_do_not_fit_are_refused_together() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> ItemExporter:
        exporter = ItemExporter(telemetry, {"sending_queue": {"queue_size": 2}}, [])
        await exporter.enqueue([QueuedItem(Signal.TRACES, 1, "a")])
        with pytest.raises(RetryableError):
            await exporter.enqueue([QueuedItem(Signal.TRACES, 1, "b")] * 2)
        assert exporter.queue_size() == 1
        await exporter.start(ServiceHost())
        await until(lambda: exporter.delivered)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.delivered == ["a"]
    assert telemetry.total("otelcol_exporter_enqueue_failed_spans_total") == 2
