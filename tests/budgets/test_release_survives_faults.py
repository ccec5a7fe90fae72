"""A whole-trace processor's release goes on when judging or something after it fails: a
fault once stopped the release timer for good, so every later span was held until the
memory limiter refused all traces."""

from __future__ import annotations

import asyncio

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.graph import Fanout
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, request

WAIT = 0.05


class FailsOnce:
    """A reader (like a connector) with a fault on the first batch it is given."""

    mutates_data = False

    def __init__(self) -> None:
        self.calls = 0

    async def consume(self, payload: ExportTraceServiceRequest) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("a fault in a connector")


def test_a_fault_after_the_release_costs_that_batch_only() -> None:
    telemetry = SelfTelemetry()
    sink, faulty = Sink(), FailsOnce()
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
    config = PerfIssuesConfig(wait=f"{WAIT}s", max_wait="0s")
    processor = PerfIssuesProcessor(settings, config, Fanout([faulty, sink]))  # type: ignore[list-item]

    async def run() -> None:
        await processor.start(None)  # type: ignore[arg-type]
        for trace in (1, 2, 3):
            await processor.consume(request([S("GET /a", "server", 0, 5, trace=trace)], "shop"))
            for _ in range(100):  # released within a few ticks
                await asyncio.sleep(WAIT / 2)
                if len(sink.got) == trace:
                    break
        await processor.shutdown()

    asyncio.run(run())
    # The batch the fault hit still reached the fan-out's other consumer, and the timer
    # released every later batch.
    assert [all_spans(r)[0].trace_id[-1] for r in sink.got] == [1, 2, 3]  # type: ignore[arg-type]
    assert faulty.calls == 3
    assert telemetry.total("otelcol_processor_dropped_spans_total") == 1


def test_a_fault_in_judging_costs_the_findings_not_the_spans() -> None:
    """A client span whose URL ``urlsplit`` cannot read once made ``perf_issues`` raise
    while judging; the batches due with it were never released."""
    sink = Sink()
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, SelfTelemetry())
    config = PerfIssuesConfig(wait=f"{WAIT}s", max_wait="0s")
    processor = PerfIssuesProcessor(settings, config, sink)

    def fault(traces: object) -> None:
        raise RuntimeError("a fault in a detector")

    processor.judge = fault  # type: ignore[method-assign]
    batch = request([S("GET /a", "server", 0, 5, trace=1)], "shop")
    asyncio.run(processor.consume(batch))
    asyncio.run(processor.shutdown())
    assert [all_spans(r)[0].trace_id[-1] for r in sink.got] == [1]  # type: ignore[arg-type]
