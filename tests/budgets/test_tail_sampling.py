"""Tail sampling keeps what matters and drops the rest; whole-trace buffering."""

from __future__ import annotations

import asyncio

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.budgets.findings import KIND_BUDGET_BREACH, Finding, attach
from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
from otelkit.collector.processors.tail_sampling import TailSamplingConfig, TailSamplingProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, request, to_span


def sampler(wait: str = "0", **config: object) -> tuple[TailSamplingProcessor, Sink, SelfTelemetry]:
    telemetry = SelfTelemetry()
    sink = Sink()
    settings = CreateSettings(ComponentID("tail_sampling"), Kind.PROCESSOR, telemetry)
    cfg = TailSamplingConfig.model_validate({"decision_wait": wait, **config})
    return TailSamplingProcessor(settings, cfg, sink), sink, telemetry


def kept_traces(sink: Sink) -> set[int]:
    return {int.from_bytes(s.trace_id, "big") for r in sink.got for s in all_spans(r)}  # type: ignore[arg-type]


def test_keeps_errors_breaches_and_perf_issues_and_drops_the_rest() -> None:
    processor, sink, telemetry = sampler()
    batch = request(
        [
            S("ok", trace=1),
            S("child", kind="client", trace=1),
            S("failed", trace=2, error=True),
            S("child", trace=2),
            S("slow", trace=3, attrs={"otelkit.budget.name": "a", "otelkit.budget.exceeded": True}),
            S(
                "fine",
                trace=4,
                attrs={"otelkit.budget.name": "a", "otelkit.budget.exceeded": False},
            ),
            S("n+1", trace=5, attrs={"otelkit.perf_issue.type": "n_plus_one_db_queries"}),
        ]
    )
    asyncio.run(processor.consume(batch))
    assert kept_traces(sink) == {2, 3, 5}
    assert len(all_spans(sink.got[0])) == 4  # type: ignore[arg-type]  # whole traces kept
    assert telemetry.total("otelcol_processor_dropped_spans_total") == 3


def test_a_window_percentile_finding_keeps_its_trace_as_a_breach() -> None:
    """The finding sits on the slowest span of the batch that broke the objective; that
    span is within its own limit (not marked exceeded), yet the finding links to it."""
    finding = Finding(KIND_BUDGET_BREACH, "percentile", "Budget checkout: p95 ...", "op", "f",
                      [b"\x01" * 8])  # fmt: skip
    carrier = to_span(S("slow but within max", trace=7, attrs={"otelkit.budget.exceeded": False}))
    attach(carrier, finding, carrier.end_time_unix_nano)
    batch = request([S("fine", trace=8)])
    batch.resource_spans[0].scope_spans[0].spans.append(carrier)
    processor, sink, telemetry = sampler()
    asyncio.run(processor.consume(batch))
    assert kept_traces(sink) == {7}
    decisions = {"decision": "sampled", "reason": "budget_breach"}
    assert telemetry.value("otelkit_tail_sampling_decisions_total", decisions) == 1


def test_policies_latency_attribute_probabilistic() -> None:
    processor, sink, _ = sampler(
        policies=[
            {"name": "slow", "type": "latency", "latency": {"threshold_ms": 1000}},
            {
                "name": "vip",
                "type": "string_attribute",
                "string_attribute": {
                    "key": "app.tier",
                    "values": ["gold", "plat.*"],
                    "enabled_regex_matching": True,
                },
            },
        ]
    )
    batch = request(
        [
            S("root", trace=1, start_ms=0, ms=100),
            S("late child", trace=1, start_ms=1000, ms=50),
            S("quick", trace=2, ms=100),
            S("gold", trace=3, attrs={"app.tier": "platinum"}),
            S("bronze", trace=4, attrs={"app.tier": "bronze"}),
        ]
    )
    asyncio.run(processor.consume(batch))
    assert kept_traces(sink) == {1, 3}


def test_probabilistic_keeps_about_the_configured_share() -> None:
    processor, sink, _ = sampler(
        policies=[
            {"name": "tenth", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}
        ]
    )
    spans = [S("r", trace=(i * 0x9E3779B97F4A7C15) % 2**128) for i in range(1, 4001)]
    asyncio.run(processor.consume(request(spans)))
    assert 300 < len(kept_traces(sink)) < 500


def test_rate_limiting_caps_spans_per_second() -> None:
    processor, sink, _ = sampler(
        keep={"errors": True},
        policies=[
            {"name": "cap", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 50}}
        ],
    )
    processor._tokens = 50.0  # a full bucket, as after a quiet second
    asyncio.run(processor.consume(request([S("r", trace=i) for i in range(1, 201)])))
    assert 50 <= len(kept_traces(sink)) <= 52


def test_decision_waits_for_the_whole_trace_and_late_spans_follow_it() -> None:
    async def scenario() -> tuple[int, Sink]:
        processor, sink, _ = sampler(wait="200ms")
        await processor.start(None)  # type: ignore[arg-type]
        await processor.consume(request([S("root", trace=7), S("noise", trace=8)]))
        await processor.consume(request([S("db", kind="client", trace=7, error=True)]))
        before = len(sink.got)
        await asyncio.sleep(0.6)  # decided and released by the timer
        await processor.consume(request([S("late", trace=7), S("late", trace=8)]))
        await processor.shutdown()  # flushes what is held
        return before, sink

    before, sink = asyncio.run(scenario())
    assert before == 0  # nothing passes before decision_wait
    names = [s.name for r in sink.got for s in all_spans(r)]  # type: ignore[arg-type]
    assert sorted(names) == ["db", "late", "root"]  # trace 7 whole, its late span too
    assert kept_traces(sink) == {7}


def test_num_traces_bounds_memory_by_deciding_early() -> None:
    async def scenario() -> tuple[TailSamplingProcessor, Sink]:
        processor, sink, _ = sampler(wait="60s", num_traces=10, keep={"errors": True})
        for i in range(30):
            await processor.consume(request([S("r", trace=100 + i, error=True)]))
        return processor, sink

    processor, sink = asyncio.run(scenario())
    assert len(processor.buffer.traces) <= 10
    assert len(kept_traces(sink)) >= 20


def test_perf_issues_buffers_a_trace_split_across_batches() -> None:
    """The N+1 queries of one request arrive in two export batches; judged together."""

    async def scenario() -> list[ExportTraceServiceRequest]:
        telemetry = SelfTelemetry()
        sink = Sink()
        settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
        processor = PerfIssuesProcessor(settings, PerfIssuesConfig(wait="200ms"), sink)
        await processor.start(None)  # type: ignore[arg-type]
        query = {"db.system": "sqlite", "db.statement": "SELECT * FROM books WHERE id = 1"}
        root = S("GET /books", trace=9, span_id=1, ms=200)
        children = [
            S(
                "SELECT",
                kind="client",
                trace=9,
                parent=1,
                start_ms=20 * i,
                ms=15,
                attrs={**query, "db.statement": f"SELECT * FROM books WHERE id = {i}"},
            )
            for i in range(6)
        ]
        await processor.consume(request(children[:3]))
        await processor.consume(request([*children[3:], root]))
        await asyncio.sleep(0.5)
        await processor.shutdown()
        return sink.got  # type: ignore[return-value]

    batches = asyncio.run(scenario())
    assert len(batches) == 2  # batches released as they came, not re-cut
    spans = [s for b in batches for s in all_spans(b)]
    marked = [s for s in spans if any(kv.key == "otelkit.perf_issue.type" for kv in s.attributes)]
    assert len(marked) == 6
    [root] = [s for s in spans if s.name == "GET /books"]
    assert [e.name for e in root.events] == ["otelkit.finding"]


def test_marks_and_errors_are_told_apart_by_span_not_by_bytes_alone() -> None:
    """Bytes that look like an error status or a mark elsewhere keep nothing; real ones
    keep their trace wherever they sit in the batch, also across scopes and resources."""
    processor, sink, _ = sampler()
    first = request(
        [
            S("int 2 looks like ERROR", trace=1, attrs={"retries": 2, "x": 2}),
            S("child", trace=1),
            S("ok", trace=2),
            S("mark in value only", trace=3, attrs={"note": "otelkit.perf_issue.type"}),
            S("last span errors", trace=4, error=True),
        ]
    )
    second = request(
        [S("breach", trace=6, attrs={"otelkit.budget.exceeded": True}), S("ok", trace=7)],
        "other",
    )
    first.resource_spans.extend(second.resource_spans)
    first.resource_spans[0].scope_spans.add().spans.extend(
        all_spans(request([S("n+1", trace=8, attrs={"otelkit.perf_issue.type": "x"})]))
    )
    asyncio.run(processor.consume(first))
    assert kept_traces(sink) == {4, 6, 8}


def test_spans_without_a_leading_trace_id_still_group_by_trace() -> None:
    processor, sink, _ = sampler()
    batch = request([S("a", trace=1, error=True), S("b", trace=1), S("c", trace=2)])
    spans = all_spans(batch)
    spans[1].trace_id = b""  # an invalid span: grouped under the empty trace ID
    asyncio.run(processor.consume(batch))
    assert [s.name for s in all_spans(sink.got[0])] == ["a"]  # type: ignore[arg-type]


def test_batches_held_as_bytes_come_out_as_batches_held_as_messages() -> None:
    """Without span-reading policies batches are held as bytes; what is released is the
    same as when they are held as messages (a latency policy that never fires)."""

    def make_batch() -> ExportTraceServiceRequest:
        out = request(
            [S("a", trace=1), S("b", trace=2, error=True), S("c", trace=1), S("d", trace=3)]
        )
        out.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
        out.resource_spans[0].scope_spans[0].scope.name = "lib"
        out.resource_spans[0].scope_spans.add()  # an empty scope goes
        kept_scope = out.resource_spans[0].scope_spans.add(schema_url="s")
        kept_scope.spans.extend(all_spans(request([S("e", trace=2), S("f", trace=4)])))
        out.resource_spans.extend(request([S("g", trace=5)], "dropped-service").resource_spans)
        out.resource_spans.extend(request([S("h", trace=2)], "kept-service").resource_spans)
        return out

    never = {"name": "never", "type": "latency", "latency": {"threshold_ms": 1e9}}
    template = make_batch()
    outputs = []
    for policies in ([], [never]):
        processor, sink, telemetry = sampler("1h", policies=policies)
        batch = ExportTraceServiceRequest()
        batch.CopyFrom(template)
        asyncio.run(processor.consume(batch))
        assert len(processor.buffer) == 1
        asyncio.run(processor.shutdown())
        [released] = sink.got
        outputs.append(released.SerializeToString())  # type: ignore[attr-defined]
        assert telemetry.total("otelcol_processor_dropped_spans_total") == 5
    assert outputs[0] == outputs[1]
    out = ExportTraceServiceRequest.FromString(outputs[0])
    assert [[s.name for s in all_spans(out)]] == [["b", "e", "h"]]
    assert [rs.resource.attributes[0].value.string_value for rs in out.resource_spans] == [
        "shop-api",
        "kept-service",
    ]


def test_spans_of_every_size_come_out_byte_for_byte() -> None:
    """Short spans, spans of a few hundred bytes and spans past 16 KiB (their lengths
    take one, two and three bytes), interleaved by trace: what is kept of them is
    released exactly as when held as messages."""

    template = request(
        S("s", trace=1 + i % 4, error=i % 4 == 1, attrs=({"v": "x" * size} if size else {}))
        for i, size in enumerate([0, 200, 0, 20_000, 300, 0, 17_000, 100, 0, 5])
    )
    never = {"name": "never", "type": "latency", "latency": {"threshold_ms": 1e9}}
    outputs = []
    for policies in ([], [never]):
        processor, sink, _ = sampler("1h", policies=policies)
        batch = ExportTraceServiceRequest()
        batch.CopyFrom(template)
        asyncio.run(processor.consume(batch))
        asyncio.run(processor.shutdown())
        [released] = sink.got
        outputs.append(released.SerializeToString())  # type: ignore[attr-defined]
    assert outputs[0] == outputs[1]
    kept = ExportTraceServiceRequest.FromString(outputs[0])
    assert {s.trace_id[-1] for s in all_spans(kept)} == {2}
    assert len(all_spans(kept)) == 3


def test_a_packed_scope_gives_back_each_span_and_its_trace_id() -> None:
    from array import array

    from otelkit.budgets.tracebuffer import PackedScope, ScopeWire
    from otelkit.collector.pdata.wire import scope_spans_layout

    [scope] = (
        request([S("a", trace=1), S("b", trace=2, attrs={"v": "y" * 20_000}), S("c", trace=1)])
        .resource_spans[0]
        .scope_spans
    )
    scope.scope.name = "lib"
    scope.schema_url = "s"
    data = scope.SerializeToString()
    starts, ends, ids = scope_spans_layout(data)
    wire = ScopeWire(data, array("I", starts), array("I", ends))
    unpacked, trace_ids = PackedScope(wire, [t for t in ids if t is not None]).unpack()
    assert unpacked == wire
    assert trace_ids == ids


def test_error_statuses_are_found_whatever_else_the_statuses_hold() -> None:
    """An error with a message, and (in a second batch) beside a status code outside the
    enum whose byte looks like a span's field tag: each error keeps its trace only."""
    first = request([S("ok", trace=1), S("failed", trace=2), S("ok", trace=3)])
    second = request([S("odd", trace=4), S("failed", trace=5), S("ok", trace=6)])
    for batch, odd in ((first, None), (second, 0)):
        spans = all_spans(batch)
        spans[1].status.code = spans[1].status.STATUS_CODE_ERROR
        spans[1].status.message = "boom \x18\x02"
        if odd is not None:
            spans[odd].status.code = 18  # type: ignore[assignment]
    processor, sink, _ = sampler()
    asyncio.run(processor.consume(first))
    asyncio.run(processor.consume(second))
    assert kept_traces(sink) == {2, 5}
