"""The batch processor: merging, splitting, timeouts, shutdown flush and backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from pydantic import ValidationError

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.pdata.split import split_off
from otelkit.collector.processors.batch import BatchConfig, BatchProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import item_names, logs, metrics, traces


class Downstream:
    """Records batches; refuses while ``refuse`` is set (retryable or permanent)."""

    def __init__(self) -> None:
        self.batches: list[Payload] = []
        self.refuse: type[Exception] | None = None
        self.offers = 0

    async def consume(self, payload: Payload) -> None:
        self.offers += 1
        if self.refuse is not None:
            raise self.refuse("downstream says no")
        self.batches.append(payload)

    def names(self) -> list[str]:
        return [name for batch in self.batches for name in item_names(batch)]

    def sizes(self) -> list[int]:
        return [count_items(b) for b in self.batches]


def run(
    test: Callable[[BatchProcessor, Downstream, SelfTelemetry], Awaitable[None]],
    signal: Signal = Signal.TRACES,
    **config: object,
) -> None:
    async def main() -> None:
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("batch"), Kind.PROCESSOR, telemetry)
        downstream = Downstream()
        processor = BatchProcessor(settings, BatchConfig.model_validate(config), signal, downstream)
        await processor.start(ServiceHost())
        try:
            await test(processor, downstream, telemetry)
        finally:
            await processor.shutdown()

    asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# Splitting ---------------------------------------------------------------------------
def test_split_keeps_order_resource_and_scope_on_both_sides() -> None:
    request = traces([[2, 3], [4]])
    original = item_names(request)
    head = split_off(request, 4)
    assert item_names(head) + item_names(request) == original
    assert [len(ss.spans) for rs in head.resource_spans for ss in rs.scope_spans] == [2, 2]
    # The scope cut in two appears on both sides with its name and schema URL.
    cut_head = head.resource_spans[0].scope_spans[1]
    cut_tail = request.resource_spans[0].scope_spans[0]
    assert cut_head.scope.name == cut_tail.scope.name == "scope-0-1"
    assert cut_head.schema_url == cut_tail.schema_url == "scope-schema-1"
    assert head.resource_spans[0].resource == request.resource_spans[0].resource
    assert head.resource_spans[0].schema_url == request.resource_spans[0].schema_url


def test_split_at_a_resource_boundary_moves_whole_resources() -> None:
    request = traces([[2], [3], [1]])
    head = split_off(request, 5)
    assert len(head.resource_spans) == 2
    assert item_names(request) == ["s2.0.0"]


def test_split_logs_across_scopes() -> None:
    request = logs([[1, 1, 1]])
    head = split_off(request, 2)
    assert item_names(head) == ["l0.0.0", "l0.1.0"]
    assert item_names(request) == ["l0.2.0"]
    assert request.resource_logs[0].resource == head.resource_logs[0].resource


def test_split_inside_a_metric_keeps_its_definition() -> None:
    request = metrics([2, 5])
    head = split_off(request, 4)
    assert item_names(head) == ["m0:0", "m0:1", "m1:0", "m1:1"]
    assert item_names(request) == ["m1:2", "m1:3", "m1:4"]
    for part in (head, request):
        metric = part.resource_metrics[0].scope_metrics[0].metrics[-1]
        assert (metric.name, metric.unit) == ("m1", "1")
        assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2


# Sending -----------------------------------------------------------------------------
def test_small_requests_are_merged_into_one_batch_on_reaching_the_size() -> None:
    async def check(p: BatchProcessor, down: Downstream, _: SelfTelemetry) -> None:
        for i in range(4):
            await p.consume(traces([[3]], prefix=f"r{i}-"))
        assert down.sizes() == [12]
        assert len(down.batches[0].resource_spans) == 4
        assert down.names() == [f"r{i}-0.0.{j}" for i in range(4) for j in range(3)]

    run(check, send_batch_size=10, timeout="1h")


def test_oversized_batches_are_split_at_the_max_size() -> None:
    async def check(p: BatchProcessor, down: Downstream, _: SelfTelemetry) -> None:
        await p.consume(traces([[4, 4], [4]]))
        assert down.sizes() == [5, 5]
        assert p.held_items == 2

    run(check, send_batch_size=5, send_batch_max_size=5, timeout="1h")


def test_timeout_sends_a_partial_batch() -> None:
    async def check(p: BatchProcessor, down: Downstream, _: SelfTelemetry) -> None:
        await p.consume(traces([[3]]))
        await eventually(lambda: down.sizes() == [3])

    run(check, send_batch_size=100, timeout="20ms")


def test_zero_timeout_sends_at_once_in_pieces_of_the_max_size() -> None:
    async def check(p: BatchProcessor, down: Downstream, _: SelfTelemetry) -> None:
        await p.consume(logs([[7]]))
        assert down.sizes() == [3, 3, 1]

    run(check, Signal.LOGS, send_batch_size=0, send_batch_max_size=3, timeout="0")


def test_shutdown_flushes_what_is_held() -> None:
    down = Downstream()

    async def check(p: BatchProcessor, d: Downstream, _: SelfTelemetry) -> None:
        await p.consume(metrics([2, 2]))
        assert d.batches == []
        down.batches = d.batches

    run(check, Signal.METRICS, send_batch_size=100, timeout="1h")
    assert [count_items(b) for b in down.batches] == [4]


# Backpressure ------------------------------------------------------------------------
def test_retryable_refusal_keeps_the_data_and_retries_on_the_next_tick() -> None:
    async def check(p: BatchProcessor, down: Downstream, t: SelfTelemetry) -> None:
        down.refuse = RetryableError
        await p.consume(traces([[5]], prefix="a"))
        await eventually(lambda: down.offers >= 3)
        assert down.batches == []
        down.refuse = None
        await eventually(lambda: down.sizes() == [5])
        assert down.names() == [f"a0.0.{i}" for i in range(5)]
        assert t.total("otelcol_processor_dropped_spans_total") == 0

    run(check, send_batch_size=5, timeout="10ms")


def test_a_refused_batch_is_offered_again_only_on_a_tick() -> None:
    async def check(p: BatchProcessor, down: Downstream, _: SelfTelemetry) -> None:
        down.refuse = RetryableError
        await p.consume(traces([[5]], prefix="a"))
        await p.consume(traces([[5]], prefix="b"))
        assert down.offers == 1  # new data does not hammer a refusing consumer
        down.refuse = None
        await p.shutdown()  # delivers both batches, in order
        assert down.names() == [f"{x}0.0.{i}" for x in "ab" for i in range(5)]

    run(check, send_batch_size=5, timeout="1h")


def test_consume_refuses_while_the_held_backlog_is_over_the_bound() -> None:
    async def check(p: BatchProcessor, down: Downstream, t: SelfTelemetry) -> None:
        down.refuse = RetryableError
        await p.consume(traces([[6]], prefix="a"))
        await p.consume(traces([[6]], prefix="b"))
        with pytest.raises(RetryableError):
            await p.consume(traces([[3]], prefix="c"))
        assert t.total("otelcol_processor_refused_spans_total", processor="batch") == 3
        down.refuse = None
        await eventually(lambda: p.held_items == 0)
        await p.consume(traces([[5]], prefix="d"))
        assert sorted(down.names()) == sorted(
            [f"{x}0.0.{i}" for x in "ab" for i in range(6)] + [f"d0.0.{i}" for i in range(5)]
        )

    run(check, send_batch_size=5, timeout="10ms", max_pending_items=10)


def test_permanent_refusal_drops_and_counts() -> None:
    async def check(p: BatchProcessor, down: Downstream, t: SelfTelemetry) -> None:
        down.refuse = PermanentError
        await p.consume(traces([[4]]))
        assert p.held_items == 0
        assert t.total("otelcol_processor_dropped_spans_total", processor="batch") == 4

    run(check, send_batch_size=4, timeout="1h")


def test_shutdown_counts_what_the_next_consumer_never_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("otelkit.collector.processors.batch._SHUTDOWN_RETRY_SECONDS", 0.05)
    telemetry: list[SelfTelemetry] = []

    async def check(p: BatchProcessor, down: Downstream, t: SelfTelemetry) -> None:
        down.refuse = RetryableError
        await p.consume(traces([[3]]))
        telemetry.append(t)

    run(check, send_batch_size=100, timeout="1h")
    assert telemetry[0].total("otelcol_processor_dropped_spans_total") == 3


# Config ------------------------------------------------------------------------------
def test_defaults_match_upstream() -> None:
    config = BatchConfig()
    assert (config.send_batch_size, config.timeout, config.send_batch_max_size) == (8192, 0.2, 0)


def test_max_size_below_size_is_rejected() -> None:
    with pytest.raises(ValidationError, match="send_batch_max_size"):
        BatchConfig(send_batch_size=100, send_batch_max_size=10)


# Before an exporter that acknowledges durably ---------------------------------------------
def run_durable(
    test: Callable[[BatchProcessor, Downstream], Awaitable[None]], **config: object
) -> None:
    async def main() -> None:
        settings = CreateSettings(
            ComponentID("batch"), Kind.PROCESSOR, SelfTelemetry(), durable_downstream=("logstore",)
        )
        downstream = Downstream()
        processor = BatchProcessor(
            settings, BatchConfig.model_validate(config), Signal.LOGS, downstream
        )
        await processor.start(ServiceHost())
        try:
            await test(processor, downstream)
        finally:
            await processor.shutdown()

    asyncio.run(main())


def test_senders_are_answered_only_once_a_durable_exporter_took_their_batch() -> None:
    async def check(p: BatchProcessor, down: Downstream) -> None:
        senders = [asyncio.create_task(p.consume(logs([[2]], prefix=f"r{i}-"))) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in senders)  # waiting for the timeout's batch
        await asyncio.gather(*senders)
        assert down.sizes() == [6]

    run_durable(check, timeout="200ms")


def test_a_refusal_from_a_durable_exporter_reaches_every_sender_of_the_batch() -> None:
    async def check(p: BatchProcessor, down: Downstream) -> None:
        down.refuse = RetryableError
        senders = [asyncio.create_task(p.consume(logs([[2]], prefix=f"r{i}-"))) for i in range(2)]
        results = await asyncio.gather(*senders, return_exceptions=True)
        assert all(isinstance(r, RetryableError) for r in results)
        assert p.held_items == 0  # not kept: the senders retry it
        down.refuse = None
        await p.consume(logs([[1]]))
        assert down.sizes() == [1]

    run_durable(check, timeout="50ms")
