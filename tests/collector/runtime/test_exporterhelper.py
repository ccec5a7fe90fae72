"""The shared queue and retry logic every exporter relies on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, WorkerRole
from otelkit.collector.runtime.durable import DISK, Disk
from otelkit.collector.runtime.errors import OverloadedError, PermanentError, RetryableError
from otelkit.collector.runtime.exporterhelper import ExporterHelperConfig, QueuedExporter
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.support.durable import RecordingDisk


class ScriptedExporter(QueuedExporter):
    """Fails with the scripted errors first, then succeeds; records what it delivered."""

    def __init__(
        self,
        telemetry: SelfTelemetry,
        config: dict[str, Any],
        script: list[Exception],
        disk: Disk = DISK,
        worker: WorkerRole | None = None,
    ) -> None:
        settings = CreateSettings(ComponentID("scripted"), Kind.EXPORTER, telemetry, worker=worker)
        super().__init__(settings, ExporterHelperConfig.model_validate(config), disk=disk)
        self.script = list(script)
        self.delivered: list[str] = []
        self.batches: list[list[str]] = []
        self.attempts: list[float] = []
        self.blocked = asyncio.Event()
        self.blocked.set()

    async def send(self, payload: Payload) -> None:
        await self.blocked.wait()
        self.attempts.append(time.monotonic())
        if self.script:
            raise self.script.pop(0)
        assert isinstance(payload, ExportTraceServiceRequest)
        names = [
            span.name for rs in payload.resource_spans for ss in rs.scope_spans for span in ss.spans
        ]
        if any(name.startswith("poison") for name in names):
            raise OverflowError("math range error")  # what a converter raises on a bad value
        self.batches.append(names)
        self.delivered.append(names[0])


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


@pytest.mark.parametrize("batching", [False, True])
def test_shutdown_handing_over_returns_what_was_not_delivered(batching: bool) -> None:
    """For an owner with other destinations: nothing is dropped or counted as lost."""
    telemetry = SelfTelemetry()
    queue: dict[str, Any] = {"num_consumers": 1, "drain_timeout": "5s"}
    if batching:
        queue["batch"] = {"min_size": 100, "flush_timeout": "1s"}

    async def scenario() -> list[Payload]:
        exporter = ScriptedExporter(
            telemetry,
            {"sending_queue": queue, "retry_on_failure": FAST_RETRY},
            [OSError("down")] * 1000,
        )
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name, spans=2))
        await until(lambda: len(exporter.attempts) >= 2)  # failing: drain stops at once
        return await exporter.shutdown_handing_over()

    unsent = asyncio.run(scenario())
    names = sorted(
        s.name for p in unsent for rs in p.resource_spans for ss in rs.scope_spans for s in ss.spans
    )  # type: ignore[union-attr]
    assert names == ["a", "a", "b", "b", "c", "c"]
    assert telemetry.total("otelcol_exporter_send_failed_spans_total") == 0


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


def test_workers_sharing_a_persistent_queue_keep_every_request(tmp_path: Path) -> None:
    # Under --workers N every worker runs the exporter with the same storage: files of one
    # sequence in one directory overwrote each other's requests (34 of 60 left on disk).
    config = {
        "sending_queue": {"storage": str(tmp_path), "num_consumers": 1, "drain_timeout": "100ms"},
        "retry_on_failure": FAST_RETRY,
    }

    async def two_workers_while_the_destination_is_down() -> None:
        workers = [
            ScriptedExporter(SelfTelemetry(), config, [OSError("down")] * 1000,
                             worker=WorkerRole(index, 2))
            for index in range(2)
        ]  # fmt: skip
        for exporter in workers:
            await exporter.start(ServiceHost())
        for n in range(10):
            for index, exporter in enumerate(workers):
                await exporter.consume(batch(f"w{index}-{n}"))
        for exporter in workers:
            await exporter.shutdown()

    asyncio.run(two_workers_while_the_destination_is_down())
    assert len(list(tmp_path.rglob("*.pb"))) == 20
    delivered = asyncio.run(deliver_what_is_left(config, None, 20))
    for index in range(2):  # each worker's requests in the order they were taken
        assert [d for d in delivered if d.startswith(f"w{index}")] == [
            f"w{index}-{n}" for n in range(10)
        ]


@pytest.mark.parametrize(
    ("left_by", "taken_by"),
    [
        (None, WorkerRole(0, 2)),  # a single process, then --workers 2
        (WorkerRole(2, 3), WorkerRole(0, 2)),  # --workers 3, then 2
        (WorkerRole(1, 2), None),  # --workers 2, then a single process
        (WorkerRole(1, 2), WorkerRole(1, 2)),  # a killed worker, started again
    ],
)
def test_requests_left_by_another_run_are_taken_up(
    tmp_path: Path, left_by: WorkerRole | None, taken_by: WorkerRole | None
) -> None:
    config = {
        "sending_queue": {"storage": str(tmp_path), "num_consumers": 1, "drain_timeout": "100ms"},
        "retry_on_failure": FAST_RETRY,
    }

    async def left() -> None:
        exporter = ScriptedExporter(SelfTelemetry(), config, [OSError("down")] * 1000,
                                    worker=left_by)  # fmt: skip
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name))
        await exporter.shutdown()

    asyncio.run(left())
    assert asyncio.run(deliver_what_is_left(config, taken_by, 3)) == ["a", "b", "c"]
    assert list(tmp_path.rglob("*.pb")) == []


async def deliver_what_is_left(
    config: dict[str, Any], worker: WorkerRole | None, count: int
) -> list[str]:
    exporter = ScriptedExporter(SelfTelemetry(), config, [], worker=worker)
    await exporter.start(ServiceHost())
    await until(lambda: len(exporter.delivered) == count)
    await exporter.shutdown()
    return exporter.delivered


# Durability: the order of disk operations before the sender is answered -----------------
def test_a_persisted_request_is_written_fsynced_renamed_and_its_directory_fsynced_before_ack(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    config = {"sending_queue": {"storage": str(tmp_path), "num_consumers": 1}}

    async def scenario() -> None:
        exporter = ScriptedExporter(SelfTelemetry(), config, [], disk=RecordingDisk(events))
        exporter.blocked.clear()  # nothing is sent (and removed) while we look
        await exporter.start(ServiceHost())
        await exporter.consume(batch("a", spans=3))
        events.append("acknowledged")
        exporter.blocked.set()
        await until(lambda: exporter.delivered == ["a"])
        await exporter.shutdown()

    asyncio.run(scenario())
    name = "00000000000000000001.traces.3.pb"
    assert events == [
        f"write {name}.tmp",
        f"fsync {name}.tmp",
        f"rename {name}.tmp {name}",
        "fsync-dir scripted",
        "acknowledged",
    ]


def test_a_persistent_queue_holds_file_names_not_requests_in_memory(tmp_path: Path) -> None:
    async def scenario(storage: dict[str, str]) -> tuple[int, int]:
        config = {"sending_queue": {"num_consumers": 1, **storage}}
        exporter = ScriptedExporter(SelfTelemetry(), config, [])
        exporter.blocked.clear()
        await exporter.start(ServiceHost())
        for i in range(20):
            await exporter.consume(batch(f"b{i}", spans=50))
        held = exporter.held_bytes()
        exporter.blocked.set()
        await until(lambda: len(exporter.delivered) == 20)
        after = exporter.held_bytes()
        await exporter.shutdown()
        return held, after

    in_memory, drained = asyncio.run(scenario({}))
    assert in_memory > 20 * 50 * 5  # a few bytes a span at least, for 1,000 spans
    assert drained == 0
    on_disk, _ = asyncio.run(scenario({"storage": str(tmp_path)}))
    # Only the request being sent is in memory.
    assert on_disk < in_memory / 10


# Batching after the queue ------------------------------------------------------------
def test_queue_batching_joins_requests_up_to_min_size_and_cuts_at_max_size() -> None:
    config = {
        "sending_queue": {
            "num_consumers": 1,
            "batch": {"min_size": 10, "max_size": 10, "flush_timeout": "10s"},
        },
    }

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(SelfTelemetry(), config, [])
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name, spans=4))
        await until(lambda: len(exporter.batches) == 1)
        await exporter.shutdown()  # flushes the 2 spans still waiting
        return exporter

    exporter = asyncio.run(scenario())
    assert [len(b) for b in exporter.batches] == [10, 2]
    assert [b[0] for b in exporter.batches] == ["a", "c"]


def test_queue_batching_sends_a_partial_batch_after_the_flush_timeout() -> None:
    config = {"sending_queue": {"batch": {"flush_timeout": "50ms"}}}

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(SelfTelemetry(), config, [])
        await exporter.start(ServiceHost())
        await exporter.consume(batch("a", spans=2))
        await exporter.consume(batch("b", spans=3))
        await until(lambda: exporter.batches)
        await exporter.shutdown()
        return exporter

    assert [len(b) for b in asyncio.run(scenario()).batches] == [5]


def test_a_batch_from_the_persistent_queue_removes_its_files_once_sent(tmp_path: Path) -> None:
    config = {
        "sending_queue": {"storage": str(tmp_path), "batch": {"min_size": 4, "max_size": 4}},
        "retry_on_failure": FAST_RETRY,
    }

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(SelfTelemetry(), config, [OSError("down")])
        await exporter.start(ServiceHost())
        for name in "abc":
            await exporter.consume(batch(name, spans=3))
        assert len(list(tmp_path.rglob("*.pb"))) == 3  # on disk when acknowledged
        await until(lambda: sum(map(len, exporter.batches)) == 9)
        await until(lambda: not list(tmp_path.rglob("*.pb")))
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    assert sorted(len(b) for b in exporter.batches) == [1, 4, 4]


def test_batch_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_size"):
        ExporterHelperConfig.model_validate(
            {"sending_queue": {"batch": {"min_size": 10, "max_size": 5}}}
        )
    with pytest.raises(ValidationError, match="batch needs the queue"):
        ExporterHelperConfig.model_validate({"sending_queue": {"enabled": False, "batch": {}}})
    with pytest.raises(ValidationError, match="flush_timeout"):
        ExporterHelperConfig.model_validate({"sending_queue": {"batch": {"flush_timeout": "0"}}})
    config = ExporterHelperConfig.model_validate({"sending_queue": {"batch": None}})
    assert config.sending_queue.batch is not None
    assert config.sending_queue.batch.min_size == 8192


# Shutdown with storage -------------------------------------------------------------------
def test_shutdown_with_storage_and_the_destination_down_is_prompt(tmp_path: Path) -> None:
    config = {
        "sending_queue": {"storage": str(tmp_path), "drain_timeout": "20s", "num_consumers": 2},
        "retry_on_failure": {"initial_interval": "5s", "max_elapsed_time": "0"},
    }

    async def scenario() -> float:
        exporter = ScriptedExporter(SelfTelemetry(), config, [OSError("refused")] * 1000)
        await exporter.start(ServiceHost())
        for name in "abcde":
            await exporter.consume(batch(name))
        await until(lambda: exporter.attempts)
        started = time.monotonic()
        await exporter.shutdown()
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert took < 5, f"shutdown waited {took:.1f}s with everything on disk"
    assert len(list(tmp_path.rglob("*.pb"))) == 5


# Invalid items -----------------------------------------------------------------------------
def poisoned(names: list[str]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for name in names:
        scope.spans.add(name=name)
    return request


@pytest.mark.parametrize("queue", [True, False])
def test_an_invalid_item_is_dropped_alone_and_the_rest_delivered(queue: bool) -> None:
    telemetry = SelfTelemetry()
    names = [f"ok{i}" for i in range(20)]
    names[7] = "poison-a"
    names[13] = "poison-b"
    config = {"sending_queue": {"enabled": queue}, "retry_on_failure": FAST_RETRY}

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(telemetry, config, [])
        await exporter.start(ServiceHost())
        await exporter.consume(poisoned(names))  # the sender hears success either way
        await until(lambda: telemetry.total("otelcol_exporter_sent_spans_total") == 18)
        await exporter.shutdown()
        return exporter

    exporter = asyncio.run(scenario())
    delivered = sorted(name for b in exporter.batches for name in b)
    assert delivered == sorted(n for n in names if n.startswith("ok"))
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 2
    assert telemetry.total("otelcol_exporter_send_failed_spans_total") == 2


def accounted(telemetry: SelfTelemetry) -> float:
    """Spans sent or dropped."""
    return telemetry.total("otelcol_exporter_sent_spans_total") + telemetry.total(
        "otelcol_exporter_send_failed_spans_total"
    )


def _deliver(
    telemetry: SelfTelemetry, config: dict[str, Any], payload: Any, items: int
) -> ScriptedExporter:
    """Run a scripted exporter over ``payload`` until all its ``items`` are accounted for."""

    async def scenario() -> ScriptedExporter:
        exporter = ScriptedExporter(telemetry, config, [])
        await exporter.start(ServiceHost())
        await exporter.consume(payload)
        await until(lambda: accounted(telemetry) == items)
        await exporter.shutdown()
        return exporter

    return asyncio.run(scenario())


@pytest.mark.parametrize("queue", [True, False])
def test_many_invalid_items_in_a_batch_do_not_cost_the_valid_ones(queue: bool) -> None:
    """A batch whose first 60 items hold 20 invalid ones (hostile data) followed by 40 valid
    ones (an application's): finding the 20 takes more than 64 sends, yet every valid
    item is delivered."""
    telemetry = SelfTelemetry()
    names = [f"poison{i}" if i % 3 == 0 else f"odd{i}" for i in range(60)]
    names += [f"ok{i}" for i in range(40)]
    config = {"sending_queue": {"enabled": queue}, "retry_on_failure": FAST_RETRY}
    exporter = _deliver(telemetry, config, poisoned(names), len(names))
    delivered = sorted(name for b in exporter.batches for name in b)
    assert delivered == sorted(n for n in names if not n.startswith("poison"))
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 20


def test_a_run_of_invalid_items_at_the_start_of_a_batch_does_not_cost_the_valid_ones() -> None:
    """100 invalid items in a row, then 60 valid ones: looking at the first half's halves
    alone would use up the 64 sends before a valid piece was sent; halving breadth first
    reaches the valid half at once, so every valid item is delivered."""
    telemetry = SelfTelemetry()
    names = [f"poison{i}" for i in range(100)] + [f"ok{i}" for i in range(60)]
    exporter = _deliver(telemetry, {"retry_on_failure": FAST_RETRY}, poisoned(names), len(names))
    assert sorted(name for b in exporter.batches for name in b) == sorted(names[100:])
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 100


def test_invalid_items_spread_through_a_large_batch_do_not_cost_the_valid_ones() -> None:
    """42 invalid items among 4,096, one every hundred and one more among the first 128:
    every piece of 128 holds one, and so do the first two of 64, so 64 sends never
    reached a valid piece and everything was dropped; the search may now halve the
    batch into pieces of 64, some of them clean."""
    telemetry = SelfTelemetry()
    names = [f"poison{i}" if i % 100 == 50 or i == 100 else f"ok{i}" for i in range(4096)]
    exporter = _deliver(telemetry, {"retry_on_failure": FAST_RETRY}, poisoned(names), len(names))
    assert sorted(name for b in exporter.batches for name in b) == sorted(
        n for n in names if n.startswith("ok")
    )
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 42


def test_a_destination_that_refuses_every_item_as_invalid_gets_bounded_sends() -> None:
    """Halving cannot help when nothing is accepted: 1,000 items cost the first send and
    64 more and one per 32 items (94 in all, in pairs), not one send per item, and are all
    dropped and counted."""
    telemetry = SelfTelemetry()
    exporter = _deliver(
        telemetry, {"retry_on_failure": FAST_RETRY}, batch("poison", spans=1000), 1000
    )
    assert len(exporter.attempts) == 1 + 94
    assert exporter.delivered == []
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 1000


def test_a_downstream_overload_reaches_a_sender_waiting_on_an_unqueued_exporter() -> None:
    config = {
        "sending_queue": {"enabled": False},
        "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": "50ms"},
    }

    async def scenario() -> None:
        exporter = ScriptedExporter(SelfTelemetry(), config, [OverloadedError("429")] * 50)
        await exporter.start(ServiceHost())
        with pytest.raises(OverloadedError):
            await exporter.consume(batch("a"))
        await exporter.shutdown()

    asyncio.run(scenario())
