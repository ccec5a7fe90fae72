"""perf_issues judges a request still running at ``wait`` once its root span arrives: an
app exports a long request's spans in parts (its export timer fires between calls), and
judged at ``wait`` after its first span, three of four sequential calls were seen
without the rest, so ``consecutive_http`` found nothing."""

from __future__ import annotations

import asyncio
from array import array
from collections import Counter

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from otelkit.budgets.findings import PERF_ISSUE_TYPE
from otelkit.budgets.tracebuffer import PackedScope, read_wire
from otelkit.collector.connectors.forward import ForwardConnector
from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
from otelkit.collector.processors.tail_sampling import TailSamplingConfig, TailSamplingProcessor
from otelkit.collector.runtime.component import ComponentID, Consumer, CreateSettings, Kind
from otelkit.collector.runtime.graph import Fanout
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, event_attrs, request
from tests.budgets.test_perf_issues_holds_bytes import Relay

REMOTE_PARENT = 0x300  # Span.flags: whether the parent is remote is known, and it is
WAIT = 0.1


def processor(
    max_wait: float = 30.0,
    next_consumer: Consumer | None = None,
    telemetry: SelfTelemetry | None = None,
) -> tuple[PerfIssuesProcessor, Sink]:
    sink = Sink()
    settings = CreateSettings(
        ComponentID("perf_issues"), Kind.PROCESSOR, telemetry or SelfTelemetry()
    )
    config = PerfIssuesConfig(wait=f"{WAIT}s", max_wait=f"{max_wait}s")
    return PerfIssuesProcessor(settings, config, next_consumer or sink), sink


def sequential_calls(trace: int, calls: int = 4) -> list[list[S]]:
    """The demo shop's /recommendations: four 750 ms calls one after the other to a route
    of the same service (a server span under each call), then the request's own span.
    One part per call, as an app's export timer cuts them."""
    root = trace * 100
    parts: list[list[S]] = []
    for i in range(calls):
        call = root + 10 + i
        at = i * 760.0
        parts.append(
            [
                S("GET /supplier/stock/{id}", "server", at + 2, 746, trace=trace,
                  span_id=root + 50 + i, parent=call),
                S("GET", "client", at, 750, {"http.request.method": "GET",
                  "url.full": f"http://127.0.0.1:8000/supplier/stock/{i}"},
                  trace=trace, span_id=call, parent=root),
            ]
        )  # fmt: skip
    parts[-1].append(S("GET /recommendations", "server", 0, calls * 760.0, trace=trace,
                       span_id=root))  # fmt: skip
    return parts


def short_request(trace: int) -> list[S]:
    root = trace * 100
    return [
        S("SELECT", "client", 1, 2, {"db.system": "postgresql"}, trace=trace,
          span_id=root + 1, parent=root),
        S("GET /products", "server", 0, 5, trace=trace, span_id=root),
    ]  # fmt: skip


def batch(spans: list[S]) -> ExportTraceServiceRequest:
    out = request(spans, "shop")
    for span in all_spans(out):
        if span.kind == 2 and span.parent_span_id:  # the supplier route: called over HTTP
            span.flags = REMOTE_PARENT
    return out


def findings(sink: Sink) -> Counter[str]:
    spans = [span for got in sink.got for span in all_spans(got)]  # type: ignore[arg-type]
    return Counter(str(f["otelkit.finding.type"]) for span in spans for f in event_attrs(span))


def delivered(sink: Sink) -> Counter[bytes]:
    return Counter(span.span_id for got in sink.got for span in all_spans(got))  # type: ignore[arg-type]


async def after_wait(proc: PerfIssuesProcessor) -> None:
    await asyncio.sleep(WAIT * 1.5)
    await proc.release()


def test_a_request_exported_in_parts_is_judged_once_its_root_arrives() -> None:
    proc, sink = processor()

    async def run() -> None:
        for n, part in enumerate(sequential_calls(trace=1)):
            # Other requests, whole in one export, share each batch.
            await proc.consume(batch(part + short_request(10 + n)))
            await after_wait(proc)
        await after_wait(proc)

    asyncio.run(run())
    assert findings(sink) == {"consecutive_http": 1}
    sent = delivered(sink)
    assert len(sent) == 9 + 4 * 2 and set(sent.values()) == {1}  # every span, once
    assert proc.buffer.waited_out == 0
    assert proc.held_bytes() == 0


def test_short_requests_are_not_held_past_wait() -> None:
    proc, sink = processor()

    async def run() -> None:
        await proc.consume(batch(short_request(1) + short_request(2)))
        await after_wait(proc)

    asyncio.run(run())
    assert len(delivered(sink)) == 4


def test_a_request_that_came_from_another_service_is_judged_at_wait() -> None:
    """Its root is in a service that sends elsewhere: its top span's parent is remote,
    so nothing of it waits; all its calls were exported together."""
    proc, sink = processor()
    parts = sequential_calls(trace=1)
    spans = [s for part in parts for s in part]
    spans[-1].parent = 999_999  # the caller's span, in another service
    for s in spans:
        s.parent = s.parent or 0

    async def run() -> None:
        await proc.consume(batch(spans))
        await after_wait(proc)

    asyncio.run(run())
    assert findings(sink) == {"consecutive_http": 1}
    assert len(delivered(sink)) == 9


def test_a_trace_whose_root_never_arrives_is_judged_at_max_wait() -> None:
    telemetry = SelfTelemetry()
    proc, sink = processor(max_wait=0.6, telemetry=telemetry)

    async def run() -> None:
        parts = sequential_calls(trace=1)
        await proc.consume(batch(parts[0] + short_request(2)))
        await after_wait(proc)
        assert len(delivered(sink)) == 2  # the short request; the call waits
        await proc.consume(batch(parts[1]))
        await after_wait(proc)
        assert len(delivered(sink)) == 2
        await asyncio.sleep(0.6)
        await proc.release()

    asyncio.run(run())
    assert len(delivered(sink)) == 6
    waited_out = "otelkit_perf_issues_traces_waited_out_total"
    assert telemetry.total(waited_out, processor="perf_issues") == 1
    assert proc.held_bytes() == 0


def test_shutdown_sends_the_traces_that_wait() -> None:
    proc, sink = processor()

    async def run() -> None:
        await proc.consume(batch(sequential_calls(trace=1)[0]))
        await after_wait(proc)
        assert not sink.got
        await proc.shutdown()

    asyncio.run(run())
    assert len(delivered(sink)) == 2


def test_spans_taken_out_of_a_packed_scope_leave_the_rest_whole() -> None:
    spans = [
        S("a", "client", trace=t, span_id=100 + k, parent=1) for k, t in enumerate([1, 2, 1, 3, 2])
    ]
    scope = batch(spans).resource_spans[0].scope_spans[0]
    scan = read_wire(scope)
    assert scan.wire is not None
    packed = PackedScope(scan.wire, scan.trace_ids, compressed=False)
    for k in (1, 4):  # trace 2's spans
        packed.remove(k)
    kept = ScopeSpans.FromString(packed.data())
    assert [s.span_id[-1] for s in kept.spans] == [100, 102, 103]
    released = packed.released()
    assert released.trace_ids == [t.to_bytes(16, "big") for t in (1, 1, 3)]
    data = released.wire.data
    starts, ends = array("I", released.wire.starts), array("I", released.wire.ends)
    for start, end, span in zip(starts, ends, kept.spans, strict=True):
        assert Span.FromString(data[start:end]) == span
    assert packed.kept() == 3


def kept_by_tail_sampling(relayed: bool) -> list[bytes]:
    """What tail sampling (keeping every trace) gets of perf_issues' output through a
    fan-out and a ``forward`` connector, as in the default configuration (scopes with
    spans taken out handed on as perf_issues knows them), or through a relay."""
    telemetry = SelfTelemetry()
    sink = Sink()
    tail_config = TailSamplingConfig.model_validate(
        {"decision_wait": "1h", "policies": [{"name": "all", "type": "always_sample"}]}
    )
    tail = TailSamplingProcessor(
        CreateSettings(ComponentID("tail_sampling"), Kind.PROCESSOR, telemetry), tail_config, sink
    )
    forward = ForwardConnector(tail)
    proc, _ = processor(next_consumer=Fanout([Sink(), Relay(forward) if relayed else forward]))

    async def run() -> None:
        for n, part in enumerate(sequential_calls(trace=1)):
            await proc.consume(batch(part + short_request(10 + n)))
            await after_wait(proc)
        await after_wait(proc)
        await tail.shutdown()

    asyncio.run(run())
    spans = [span for got in sink.got for span in all_spans(got)]  # type: ignore[arg-type]
    return sorted(span.SerializeToString(deterministic=True) for span in spans)


def test_tail_sampling_after_it_gets_every_span_once_with_its_marks() -> None:
    kept = kept_by_tail_sampling(relayed=False)
    assert kept == kept_by_tail_sampling(relayed=True)
    assert len(kept) == 17
    assert sum(PERF_ISSUE_TYPE.encode() in span for span in kept) == 4


def test_a_trace_rooted_in_a_client_span_is_judged_once_its_root_arrives() -> None:
    """A script's calls under one client span: no server span; its root is read, not
    flagged, when it arrives."""
    proc, sink = processor()
    parts = sequential_calls(trace=1)
    for part in parts:
        part[:] = [s for s in part if s.kind == "client"]  # no routes called, no server span
    parts[-1].append(S("sync", "client", 0, 3100, trace=1, span_id=100))

    async def run() -> None:
        for part in parts:
            await proc.consume(batch(part))
            await after_wait(proc)
            if part is not parts[-1]:
                assert not sink.got
        await after_wait(proc)

    asyncio.run(run())
    assert findings(sink) == {"consecutive_http": 1}
    assert len(delivered(sink)) == 5
    assert proc.buffer.waited_out == 0
