"""The shared queue and retry logic every exporter relies on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.exporterhelper import ExporterHelperConfig, QueuedExporter
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry


class ScriptedExporter(QueuedExporter):
    """Fails with the scripted errors first, then succeeds; records what it delivered."""

    def __init__(
        self, telemetry: SelfTelemetry, config: dict[str, Any], script: list[Exception]
    ) -> None:
        settings = CreateSettings(ComponentID("scripted"), Kind.EXPORTER, telemetry)
        super().__init__(settings, ExporterHelperConfig.model_validate(config))
        self.script = list(script)
        self.delivered: list[str] = []
        self.attempts: list[float] = []
        self.blocked = asyncio.Event()
        self.blocked.set()

    async def send(self, payload: Payload) -> None:
        await self.blocked.wait()
        self.attempts.append(time.monotonic())
        if self.script:
            raise self.script.pop(0)
        assert isinstance(payload, ExportTraceServiceRequest)
        self.delivered.append(payload.resource_spans[0].scope_spans[0].spans[0].name)


def batch(name: str, spans: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(spans):
        scope.spans.add(name=name)
    return request


FAST_RETRY = {"initial_interval": "10ms", "max_interval": "50ms", "max_elapsed_time": "2s"}


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_retryable_failures_are_retried_until_delivered() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(
            telemetry, {"retry_on_failure": FAST_RETRY}, [RetryableError("503"), OSError("reset")]
        )
        await exporter.start(ServiceHost())
        await exporter.consume(batch("a", spans=4))
        await until(lambda: exporter.delivered)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.delivered == ["a"]
    assert len(exporter.attempts) == 3
    assert telemetry.total("otelcol_exporter_sent_spans_total") == 4
    assert telemetry.total("otelcol_exporter_send_failed_spans_total") == 0


def test_permanent_errors_are_dropped_once_and_counted_with_the_reason() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(
            telemetry, {"retry_on_failure": FAST_RETRY}, [PermanentError("400")]
        )
        await exporter.start(ServiceHost())
        await exporter.consume(batch("bad", spans=2))
        await exporter.consume(batch("good"))
        await until(lambda: exporter.delivered)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.delivered == ["good"]
    assert len(exporter.attempts) == 2
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="permanent") == 2


def test_retry_after_from_the_server_sets_the_wait() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(
            telemetry, {"retry_on_failure": FAST_RETRY}, [RetryableError("429", retry_after=0.3)]
        )
        await exporter.start(ServiceHost())
        await exporter.consume(batch("a"))
        await until(lambda: exporter.delivered)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.attempts[1] - exporter.attempts[0] >= 0.29


def test_giving_up_after_max_elapsed_time_is_counted() -> None:
    telemetry = SelfTelemetry()
    retry = {**FAST_RETRY, "max_elapsed_time": "100ms"}

    async def scenario() -> None:
        exporter = ScriptedExporter(telemetry, {"retry_on_failure": retry}, [OSError("down")] * 100)
        await exporter.start(ServiceHost())
        await exporter.consume(batch("a", spans=3))
        await until(lambda: telemetry.total("otelcol_exporter_send_failed_spans_total") == 3)
        await exporter.shutdown()

    asyncio.run(scenario())
    assert (
        telemetry.total("otelcol_exporter_send_failed_spans_total", reason="retry_exhausted") == 3
    )


def test_a_full_queue_pushes_back_with_a_retryable_error() -> None:
    telemetry = SelfTelemetry()
    config = {
        "sending_queue": {"queue_size": 2, "num_consumers": 1},
        "retry_on_failure": FAST_RETRY,
    }

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(telemetry, config, [])
        exporter.blocked.clear()
        await exporter.start(ServiceHost())
        await exporter.consume(batch("1"))
        await asyncio.sleep(0.05)  # the consumer takes "1" and blocks in send
        await exporter.consume(batch("2"))
        await exporter.consume(batch("3"))
        with pytest.raises(RetryableError, match="queue is full"):
            await exporter.consume(batch("4", spans=5))
        assert telemetry.total("otelcol_exporter_queue_size") == 3
        exporter.blocked.set()
        await until(lambda: len(exporter.delivered) == 3)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert exporter.delivered == ["1", "2", "3"]
    assert telemetry.total("otelcol_exporter_enqueue_failed_spans_total") == 5
    assert telemetry.total("otelcol_exporter_queue_capacity") == 2


def test_shutdown_counts_what_an_in_memory_queue_could_not_deliver() -> None:
    telemetry = SelfTelemetry()
    config = {
        "sending_queue": {"num_consumers": 1, "drain_timeout": "100ms"},
        "retry_on_failure": FAST_RETRY,
    }

    async def scenario() -> None:
        exporter = ScriptedExporter(telemetry, config, [OSError("down")] * 1000)
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name, spans=2))
        await exporter.shutdown()

    asyncio.run(scenario())
    lost = telemetry.total("otelcol_exporter_send_failed_spans_total", reason="shutdown")
    # Every span is accounted for: the batch abandoned mid-retry and the two still queued.
    assert lost == 6
    assert telemetry.total("otelcol_exporter_sent_spans_total") == 0


def test_persistent_queue_survives_a_restart(tmp_path: Path) -> None:
    config = {
        "sending_queue": {"storage": str(tmp_path), "num_consumers": 1, "drain_timeout": "100ms"},
        "retry_on_failure": FAST_RETRY,
    }

    async def first_run() -> None:
        exporter = ScriptedExporter(SelfTelemetry(), config, [OSError("down")] * 1000)
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name))
        await exporter.shutdown()

    async def second_run() -> ScriptedExporter:
        exporter = ScriptedExporter(SelfTelemetry(), config, [])
        await exporter.start(ServiceHost())
        await until(lambda: len(exporter.delivered) == 3)
        await exporter.shutdown()
        return exporter

    asyncio.run(first_run())
    assert len(list(tmp_path.rglob("*.pb"))) == 3
    exporter = asyncio.run(second_run())
    assert exporter.delivered == ["a", "b", "c"]
    assert list(tmp_path.rglob("*.pb")) == []
