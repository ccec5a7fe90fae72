"""The lean span encoder writes what the stock OTLP encoder writes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceFlags, TraceState

from otelkit.presets.encoder import SpanEncoder
from tests.presets.sink import OtlpSink


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _spans() -> list[ReadableSpan]:
    keep = _Keep()
    spans: list[ReadableSpan] = []
    for resource in (
        Resource.create({"service.name": "a", "n": 1}),
        Resource({"service.name": "b"}, "https://schema/r"),
    ):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(keep))
        scoped = provider.get_tracer(
            "lib", "1.2", schema_url="https://schema/s", attributes={"s": True}
        )
        bare = provider.get_tracer("")
        remote = SpanContext(
            0xABC,
            0xDEF,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState([("k", "v")]),
        )
        with scoped.start_as_current_span(
            "GET /users/{id}",
            context=set_span_in_context(NonRecordingSpan(remote)),
            kind=SpanKind.SERVER,
            attributes={
                "str": "x",
                "empty": "",
                "int": 7,
                "negative": -3,
                "big": 2**62,
                "float": 1.5,
                "zero": 0.0,
                "true": True,
                "false": False,
                "strings": ("a", "b"),
                "ints": [1, 2],
                "bools": (True,),
                "floats": (0.5,),
                "none_list": (),
                "unicode": "grüße",
            },
        ) as server:
            server.add_event("event", {"a": 1}, timestamp=123)
            server.add_event("")
            server.set_status(Status(StatusCode.ERROR, "failed"))
            with bare.start_as_current_span(
                "", links=[Link(remote, {"l": "v"}), Link(server.get_span_context())]
            ) as child:
                child.set_status(Status(StatusCode.OK))
                child.set_attribute("long", "y" * 300)
    spans.extend(keep.spans)
    return spans


def test_encoding_parses_to_the_stock_message() -> None:
    spans = _spans()
    encoder = SpanEncoder()
    for _ in range(2):  # the second round is served from the caches
        assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)


def test_encoding_of_an_empty_batch_is_an_empty_request() -> None:
    assert SpanEncoder().encode([]) == b""


@pytest.mark.parametrize("value", [object(), {1, 2}])
def test_unsupported_values_are_refused(value: object) -> None:
    from otelkit.presets.encoder import _any_value

    with pytest.raises(TypeError):
        _any_value(value)


def test_the_lean_exporter_delivers_over_grpc(sink: OtlpSink) -> None:
    from otelkit.presets.encoder import lean_grpc_span_exporter

    sink.clear()
    exporter = lean_grpc_span_exporter(endpoint=sink.endpoint, timeout=5)
    spans = _spans()
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert sink.trace_requests == [encode_spans(spans)]
