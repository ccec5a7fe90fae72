"""perf_issues holds the batches it waits on as bytes, not as parsed messages, and what it
sends on is what it would send holding them parsed: the same spans, marks and findings."""

from __future__ import annotations

import asyncio
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from otelkit.budgets.findings import PERF_ISSUE_TYPE
from otelkit.budgets.tracebuffer import ScopeScan
from otelkit.collector.connectors.forward import ForwardConnector
from otelkit.collector.pdata.signals import Payload
from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
from otelkit.collector.processors.tail_sampling import TailSamplingConfig, TailSamplingProcessor
from otelkit.collector.runtime.component import ComponentID, Consumer, CreateSettings, Kind
from otelkit.collector.runtime.graph import Fanout
from otelkit.collector.runtime.memory import PARSED_BYTES_PER_WIRE_BYTE
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, attrs_of, event_attrs, request

DB = {"db.system": "postgresql", "db.namespace": "shop", "server.address": "db.internal"}
SERVICES = ("shop-api", "payments")


class HoldsMessages(PerfIssuesProcessor):
    """The same processor holding each batch as the parsed message it came as."""

    def packs_spans(self) -> bool:
        return False


def trace_spans(rng: random.Random, trace: int) -> list[S]:
    """A request's spans in the order they end: clean database calls, and now and then
    an N+1 query, a slow query, consecutive slow HTTP calls or an N+1 of API calls."""
    root = trace * 100
    spans: list[S] = []
    at = 0.0

    def call(name: str, ms: float, attrs: dict[str, str | int | bool], gap: float) -> None:
        nonlocal at
        spans.append(S(name, "client", at, ms, attrs, trace=trace,
                       span_id=root + len(spans) + 1, parent=root))  # fmt: skip
        at += ms + gap

    for _ in range(rng.randrange(1, 5)):
        query = rng.choice(["SELECT * FROM items WHERE id = 7", "UPDATE carts SET n = 2"])
        call("SELECT", rng.uniform(0.3, 8), {**DB, "db.query.text": query}, 0.2)
    problem = rng.randrange(10)
    if problem == 0:  # N+1 query
        for i in range(8):
            call("SELECT", 9, {**DB, "db.query.text": f"SELECT * FROM books WHERE a = {i}"}, 0.1)
    elif problem == 1:  # slow query
        call("SELECT", 700, {**DB, "db.query.text": "SELECT * FROM orders"}, 1)
    elif problem == 2:  # consecutive slow HTTP calls
        for i in range(3):
            call("GET", 1100, {"http.request.method": "GET",
                               "url.full": f"http://pay.internal/step{i}"}, 10)  # fmt: skip
    elif problem == 3:  # N+1 of API calls, started together
        for i in range(6):
            spans.append(S("GET", "client", at + i, 80,
                           {"http.request.method": "GET", "url.full": f"http://api.internal/u/{i}"},
                           trace=trace, span_id=root + 50 + i, parent=root))  # fmt: skip
        at += 90
    server: dict[str, str | int | bool] = {"http.request.method": "GET", "http.route": "/shop/{id}",
              "url.full": f"https://shop.example.com/shop/{trace}", "http.response.status_code": 200,
              "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}  # fmt: skip
    spans.append(S("GET /shop/{id}", "server", 0, at + 1, server, trace=trace, span_id=root))
    return spans


def traffic(seed: int = 5, traces: int = 300, batch: int = 40) -> list[ExportTraceServiceRequest]:
    """Interleaved traces of two services cut into batches (so many traces continue in
    the next batch); one batch also has a span without a trace ID."""
    rng = random.Random(seed)
    open_traces: list[tuple[str, list[S]]] = []
    ended: list[tuple[str, S]] = []
    next_trace = 1
    while next_trace <= traces or open_traces:
        while next_trace <= traces and len(open_traces) < 15:
            open_traces.append((rng.choice(SERVICES), trace_spans(rng, next_trace)))
            next_trace += 1
        service, spans = rng.choice(open_traces)
        ended.append((service, spans.pop(0)))
        if not spans:
            open_traces.remove((service, spans))
    batches = []
    for at in range(0, len(ended), batch):
        part = ended[at : at + batch]
        out = ExportTraceServiceRequest()
        for service in SERVICES:
            spans = [s for svc, s in part if svc == service]
            if spans:
                out.resource_spans.extend(request(spans, service).resource_spans)
        batches.append(out)
    batches[3].resource_spans[0].scope_spans[0].spans.add(name="no trace ID")
    return batches


def holding(
    processor_type: type[PerfIssuesProcessor], batches: list[ExportTraceServiceRequest]
) -> tuple[PerfIssuesProcessor, Sink, SelfTelemetry]:
    """A processor holding every batch (its wait outlasts the test)."""
    telemetry = SelfTelemetry()
    sink = Sink()
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
    processor = processor_type(settings, PerfIssuesConfig(wait="1h"), sink)

    async def feed() -> None:
        for batch in batches:
            await processor.consume(batch)

    asyncio.run(feed())
    assert not sink.got
    return processor, sink, telemetry


def sent_on(
    processor_type: type[PerfIssuesProcessor],
) -> tuple[list[ExportTraceServiceRequest], SelfTelemetry]:
    """What the processor sends on once its held traces are judged (at shutdown)."""
    processor, sink, telemetry = holding(processor_type, traffic())
    asyncio.run(processor.shutdown())
    return sink.got, telemetry  # type: ignore[return-value]


def test_what_is_sent_on_is_what_holding_messages_sends() -> None:
    got, telemetry = sent_on(PerfIssuesProcessor)
    expected, expected_telemetry = sent_on(HoldsMessages)
    assert [r.SerializeToString(deterministic=True) for r in got] == [
        r.SerializeToString(deterministic=True) for r in expected
    ]
    spans = [span for r in got for span in all_spans(r)]
    found = {str(f["otelkit.finding.type"]) for span in spans for f in event_attrs(span)}
    assert found == {
        "n_plus_one_db_queries",
        "slow_db_query",
        "consecutive_http",
        "n_plus_one_api_calls",
    }
    marked = [s for s in spans if "otelkit.perf_issue.type" in attrs_of(s)]
    assert len(marked) > 100
    for type_ in found:
        for service in SERVICES:
            labels = {"type": type_, "service": service}
            assert telemetry.value("otelkit_perf_issues_total", labels) == (
                expected_telemetry.value("otelkit_perf_issues_total", labels)
            )


def test_held_memory_is_a_fraction_of_the_parsed_batches() -> None:
    """What the memory limiter is told perf_issues holds is less than half of what the
    same batches and traces take held as parsed messages (about 3.5 times the encoded
    size, which made the default configuration refuse data at its own capacity)."""
    batches = traffic()
    parsed = PARSED_BYTES_PER_WIRE_BYTE * sum(b.ByteSize() for b in batches)
    processor, _, _ = holding(PerfIssuesProcessor, batches)
    messages, _, _ = holding(HoldsMessages, traffic())
    assert messages.held_bytes() > parsed
    assert 0 < processor.held_bytes() < 0.5 * messages.held_bytes()


class CountsScans(TailSamplingProcessor):
    """Tail sampling that counts the scopes it serialises and walks itself."""

    scanned = 0

    def scan(self, scope_spans: ScopeSpans) -> ScopeScan:
        self.scanned += 1
        return super().scan(scope_spans)


class Relay:
    """A consumer between the two that could change the batch (it says nothing)."""

    def __init__(self, next_consumer: Consumer) -> None:
        self._next = next_consumer

    async def consume(self, payload: Payload) -> None:
        await self._next.consume(payload)


def kept_by_tail_sampling(relayed: bool) -> tuple[list[bytes], CountsScans]:
    """The spans tail sampling keeps of perf_issues' output: handed on through a fan-out
    and a ``forward`` connector (as the default configuration does), or through a relay."""
    telemetry = SelfTelemetry()
    sink = Sink()
    tail_config = TailSamplingConfig.model_validate(
        {
            "decision_wait": "1h",
            "policies": [
                {"name": "some", "type": "probabilistic",
                 "probabilistic": {"sampling_percentage": 10}},
            ],
        }
    )  # fmt: skip
    tail = CountsScans(
        CreateSettings(ComponentID("tail_sampling"), Kind.PROCESSOR, telemetry), tail_config, sink
    )
    forward = ForwardConnector(tail)
    reads = Fanout([Sink(), Relay(forward) if relayed else forward])
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
    perf = PerfIssuesProcessor(settings, PerfIssuesConfig(wait="1h"), reads)

    async def run() -> None:
        for batch in traffic():
            await perf.consume(batch)
        await perf.shutdown()
        await tail.shutdown()

    asyncio.run(run())
    spans = [span for r in sink.got for span in all_spans(r)]
    return sorted(span.SerializeToString(deterministic=True) for span in spans), tail


def test_tail_sampling_after_it_keeps_the_same_spans_without_serialising_them_again() -> None:
    kept, tail = kept_by_tail_sampling(relayed=False)
    expected, relayed_tail = kept_by_tail_sampling(relayed=True)
    assert kept == expected
    marked = [s for s in kept if PERF_ISSUE_TYPE.encode() in s]
    assert len(marked) > 100  # perf_issues' marks reached tail sampling, which kept them
    assert relayed_tail.scanned > 0
    # Only the scopes of the batch perf_issues held as a message (it has a span without a
    # trace ID) were serialised and walked again.
    assert tail.scanned == sum(len(rs.scope_spans) for rs in traffic()[3].resource_spans)
