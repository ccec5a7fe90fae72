"""Build OTLP spans for the budget tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.trace import SpanKind, Tracer, set_span_in_context

KINDS = {"internal": 1, "server": 2, "client": 3}
T0 = 1_700_000_000_000_000_000
_ids = itertools.count(1)


@dataclass
class S:
    """One span: name, kind, start/duration in ms, attributes."""

    name: str
    kind: str = "server"
    start_ms: float = 0.0
    ms: float = 10.0
    attrs: dict[str, str | int | bool] = field(default_factory=dict)
    error: bool = False
    trace: int = 1
    span_id: int = 0
    parent: int = 0
    ns: int | None = None  # exact duration in nanoseconds; overrides ``ms``


def _value(v: str | int | bool) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(string_value=v)


def to_span(s: S) -> Span:
    span = Span(name=s.name, kind=KINDS[s.kind])
    span.trace_id = s.trace.to_bytes(16, "big")
    span.span_id = (s.span_id or next(_ids) + 10_000).to_bytes(8, "big")
    if s.parent:
        span.parent_span_id = s.parent.to_bytes(8, "big")
    span.start_time_unix_nano = T0 + int(s.start_ms * 1e6)
    span.end_time_unix_nano = span.start_time_unix_nano + (
        s.ns if s.ns is not None else int(s.ms * 1e6)
    )
    span.attributes.extend(KeyValue(key=k, value=_value(v)) for k, v in s.attrs.items())
    if s.error:
        span.status.code = Status.STATUS_CODE_ERROR
    return span


def request(
    spans: Iterable[S], service: str = "shop-api", **resource: str
) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add()
    for k, v in {"service.name": service, **resource}.items():
        rs.resource.attributes.add(key=k, value=AnyValue(string_value=v))
    ss = rs.scope_spans.add()
    ss.spans.extend(to_span(s) for s in spans)
    return out


def all_spans(req: ExportTraceServiceRequest) -> list[Span]:
    return [span for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]


def attrs_of(span: Span) -> dict[str, object]:
    return {kv.key: plain(kv.value) for kv in span.attributes}


def plain(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def event_attrs(span: Span, name: str = "otelkit.finding") -> list[dict[str, object]]:
    return [
        {kv.key: plain(kv.value) for kv in event.attributes}
        for event in span.events
        if event.name == name
    ]


class Sink:
    """A consumer that keeps what it gets."""

    def __init__(self) -> None:
        self.got: list[object] = []

    async def consume(self, payload: object) -> None:
        self.got.append(payload)


MS = 1_000_000


def n_plus_one(tracer: Tracer, start: int) -> int:
    """An SDK request trace with six repeated queries (an N+1); its trace ID."""
    root = tracer.start_span("GET /books", kind=SpanKind.SERVER, start_time=start)
    context = set_span_in_context(root)
    for i in range(6):
        begin = start + (1 + i * 20) * MS
        query = tracer.start_span(
            "SELECT shop",
            kind=SpanKind.CLIENT,
            context=context,
            start_time=begin,
            attributes={
                "db.system": "postgresql",
                "db.statement": f"SELECT * FROM books WHERE author_id = {i}",
            },
        )
        query.end(end_time=begin + 15 * MS)
    root.end(end_time=start + 130 * MS)
    return root.get_span_context().trace_id
