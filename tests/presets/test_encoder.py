"""The lean span and log encoders write what the stock OTLP encoders write."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def test_an_integer_wider_than_64_bits_keeps_its_digits() -> None:
    provider = TracerProvider()
    keep = _Keep()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    with provider.get_tracer("t").start_as_current_span(
        "wide", attributes={"wide": 2**70, "ok": -(2**63)}
    ):
        pass
    [span] = (
        ExportTraceServiceRequest.FromString(SpanEncoder().encode(keep.spans))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    values = {kv.key: kv.value for kv in span.attributes}
    assert values["wide"].string_value == str(2**70)
    assert values["ok"].int_value == -(2**63)


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


def test_a_pair_shared_by_resource_span_and_event_keeps_each_field() -> None:
    keep = _Keep()
    provider = TracerProvider(resource=Resource({"service.name": "a", "n": 1}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("lib", attributes={"n": 1})
    with tracer.start_as_current_span("s", attributes={"service.name": "a", "n": 1}) as span:
        span.add_event("e", {"service.name": "a", "n": 1})
    encoder = SpanEncoder()
    for _ in range(2):
        parsed = ExportTraceServiceRequest.FromString(encoder.encode(keep.spans))
        assert parsed == encode_spans(keep.spans)


class _Collect(BaseHTTPRequestHandler):
    bodies: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_lean_exporter_delivers_over_http() -> None:
    from otelkit.presets.encoder import lean_http_span_exporter

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        exporter = lean_http_span_exporter(endpoint=endpoint, timeout=5)
        assert type(exporter).__name__ == "LeanHttpExporter"
        spans = _spans()
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.export(spans) == SpanExportResult.FAILURE
    finally:
        server.shutdown()
        server.server_close()
    [(path, content_type, body)] = _Collect.bodies
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)


class _Proxy:
    """A span that offers only the public ReadableSpan properties (no instance dict)."""

    __slots__ = ("_span",)

    def __init__(self, span: ReadableSpan) -> None:
        self._span = span

    def __getattr__(self, name: str) -> object:
        return getattr(self._span, name)


def test_spans_of_another_layout_encode_through_their_properties() -> None:
    spans = _spans()
    proxied: list[Any] = [_Proxy(span) for span in spans]
    encoded = SpanEncoder().encode(proxied)
    assert ExportTraceServiceRequest.FromString(encoded) == encode_spans(spans)


class _Redacting(ReadableSpan):
    """A span type that shows less than it holds, as a filtering processor might pass on."""

    @property
    def attributes(self) -> Any:
        return {k: v for k, v in (self._attributes or {}).items() if k != "str"}


def test_a_span_subclass_is_encoded_as_it_presents_itself() -> None:
    spans = _spans()
    redacted = [
        _Redacting(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        for span in spans
    ]
    parsed = ExportTraceServiceRequest.FromString(SpanEncoder().encode(redacted))
    assert parsed == encode_spans(redacted)
    keys = {
        kv.key
        for resource in parsed.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
        for kv in span.attributes
    }
    assert "int" in keys and "str" not in keys


# --- log records ----------------------------------------------------------------------


def _log_records() -> list[Any]:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import (
        LoggerProvider,
        LogRecordDroppedAttributesWarning,
        LogRecordLimits,
    )
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    kept = InMemoryLogRecordExporter()
    tracer = TracerProvider().get_tracer("t")
    warnings.simplefilter("ignore", LogRecordDroppedAttributesWarning)
    for resource in (
        Resource.create({"service.name": "a", "n": 1}),
        Resource({"service.name": "b"}, "https://schema/r"),
    ):
        provider = LoggerProvider(resource=resource)
        provider._log_record_limits = LogRecordLimits(max_attributes=6)
        provider.add_log_record_processor(SimpleLogRecordProcessor(kept))
        scoped = provider.get_logger("lib", "1.2", "https://schema/s", attributes={"s": True})
        bare = provider.get_logger("")
        with tracer.start_as_current_span("request"):
            scoped.emit(
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                body="order 5 for user-5 ✓",
                attributes={"request_id": "r-1", "http.response.status_code": 200,
                            "duration_ms": 12.5, "ok": True, "tags": ["a", "b"],
                            "nested": {"k": [1, 2.5, None]}, "raw": b"\x00\x01"},
            )  # fmt: skip
        bare.emit(body={"event": "order", "total": 12.5}, event_name="order.placed")
        bare.emit(body=None, severity_number=SeverityNumber.INFO)
        bare.emit(body=[1, "two"], attributes={"none": None}, timestamp=1_800_000_000_000_000_001)
    return list(kept.get_finished_logs())


def test_log_encoding_parses_to_the_stock_message() -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from otelkit.presets.encoder import LogEncoder

    records = _log_records()
    assert any(record.dropped_attributes for record in records)
    encoder = LogEncoder()
    for _ in range(2):  # the second round is served from the caches
        assert ExportLogsServiceRequest.FromString(encoder.encode(records)) == encode_logs(records)


def test_the_lean_log_exporters_deliver_over_grpc_and_http(sink: OtlpSink) -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    from otelkit.presets.encoder import lean_grpc_log_exporter, lean_http_log_exporter

    records = _log_records()
    sink.clear()
    exporter = lean_grpc_log_exporter(endpoint=sink.endpoint, timeout=5)
    assert exporter.export(records) == LogRecordExportResult.SUCCESS
    exporter.shutdown()
    assert sink.log_requests == [encode_logs(records)]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collect.bodies.clear()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/logs"
        http_exporter = lean_http_log_exporter(endpoint=endpoint, timeout=5)
        assert type(http_exporter).__name__ == "LeanHttpExporter"
        assert http_exporter.export(records) == LogRecordExportResult.SUCCESS
    finally:
        server.shutdown()
        server.server_close()
    [(path, _, body)] = _Collect.bodies
    assert path == "/v1/logs"
    assert ExportLogsServiceRequest.FromString(body) == encode_logs(records)


class _EncodeBatches:
    """A log exporter that keeps each batch as the lean encoder's request bytes."""

    takes_encoded_items = True

    def __init__(self) -> None:
        from otelkit.presets.encoder import LogEncoder

        self.encoder = LogEncoder()
        self.requests: list[bytes] = []

    def export(self, batch: Sequence[Any]) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        self.requests.append(self.encoder.encode(batch))
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _handler_records() -> list[Any]:
    import logging

    records = []
    logger = logging.getLogger("shop.orders")
    extras: list[dict[str, Any]] = [
        {"request_id": "r-1", "http.response.status_code": 200, "duration_ms": 1.5, "ok": True},
        {"otel.event.name": "order.placed", "total": 12},
        {"tags": ["a", "b"]},  # not a plain value: the SDK cleans it
        {"big": 2**62, "negative": -1},
    ]
    for level, extra in zip((logging.INFO, logging.WARNING, logging.ERROR, 5), extras, strict=True):
        records.append(
            logger.makeRecord(logger.name, level, "f.py", 3, "n=%s", (1,), None, "place", extra)
        )
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        records.append(
            logger.makeRecord(
                logger.name, logging.CRITICAL, "f.py", 4, "x", (), sys.exc_info(), "place"
            )
        )
    return records


@pytest.mark.parametrize("code_attributes", [False, True])
def test_records_the_handler_encodes_itself_are_the_ones_the_sdk_exports(
    code_attributes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a lean processor the handler writes most records' OTLP bytes directly; the
    request is the stock encoder's for the records the SDK would have made."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    from otelkit.presets.logexport import LeanLogRecordProcessor, lean_processor
    from otelkit.presets.logs import OtlpHandler

    resource = Resource.create({"service.name": "shop"})
    lean_provider, stock_provider = (
        LoggerProvider(resource=resource),
        LoggerProvider(resource=resource),
    )
    batches = _EncodeBatches()
    lean_provider.add_log_record_processor(LeanLogRecordProcessor(batches))  # type: ignore[arg-type]
    kept = InMemoryLogRecordExporter()
    stock_provider.add_log_record_processor(SimpleLogRecordProcessor(kept))
    assert lean_processor(lean_provider) is not None and lean_processor(stock_provider) is None
    handlers = [OtlpHandler(p, "both", code_attributes) for p in (lean_provider, stock_provider)]
    encoded = []
    emit_encoded = LeanLogRecordProcessor.emit_encoded
    monkeypatch.setattr(
        LeanLogRecordProcessor,
        "emit_encoded",
        lambda self, *args: encoded.append(1) or emit_encoded(self, *args),
    )
    with TracerProvider().get_tracer("t").start_as_current_span("request"):
        for record in _handler_records():
            for handler in handlers:
                handler.handle(record)
    lean_provider.force_flush()
    [body] = batches.requests
    lean, stock = ExportLogsServiceRequest.FromString(body), encode_logs(kept.get_finished_logs())
    for message in (lean, stock):
        for record in message.resource_logs[0].scope_logs[0].log_records:
            assert record.observed_time_unix_nano > 0 and record.trace_id
            record.observed_time_unix_nano = 0  # the moment each handler saw the record
    assert lean == stock
    assert len(lean.resource_logs[0].scope_logs[0].log_records) == 5
    assert len(encoded) == 4  # all but the record with a list value


class _EncodeSpanBatches(SpanExporter):
    """A span exporter that keeps each batch as the lean encoder's request bytes."""

    takes_encoded_items = True

    def __init__(self) -> None:
        self.encoder = SpanEncoder()
        self.requests: list[bytes] = []

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.requests.append(self.encoder.encode(spans))
        return SpanExportResult.SUCCESS


def test_spans_queued_encoded_are_sent_as_the_stock_encoder_writes_them() -> None:
    """The lean processor queues each sampled span's bytes; the request the exporter sends
    is the stock encoder's of the same spans, while another processor on the provider
    still gets the spans themselves, and unsampled spans are not sent."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from otelkit.presets.spanexport import LeanSpanProcessor

    batches, kept = _EncodeSpanBatches(), _Keep()
    resource = Resource.create({"service.name": "shop"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(LeanSpanProcessor(batches))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("lib", "1.0")
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.response.status_code", 200)
        with provider.get_tracer("db").start_as_current_span("SELECT", attributes={"n": 1}):
            pass
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    tracer.start_span("dropped", context=set_span_in_context(NonRecordingSpan(unsampled))).end()
    provider.force_flush()
    assert all(type(span) is ReadableSpan for span in kept.spans) and len(kept.spans) == 2
    [body] = batches.requests
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(kept.spans)
    provider.shutdown()


def test_a_span_that_fails_to_encode_as_it_ends_is_still_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Encoding at the end of a span never raises into the application's code: the span
    is queued as it is and encoded by the export."""
    from otelkit.presets.spanexport import LeanSpanProcessor

    def fails(self: SpanEncoder, span: ReadableSpan) -> Any:
        raise RuntimeError("cannot encode")

    monkeypatch.setattr(SpanEncoder, "encoded", fails)
    batches, kept = _EncodeSpanBatches(), _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(LeanSpanProcessor(batches))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    provider.get_tracer("lib").start_span("GET /", attributes={"a": 1}).end()
    provider.force_flush()
    [body] = batches.requests
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(kept.spans)
    provider.shutdown()


def test_a_stock_exporter_the_lean_one_falls_back_to_gets_spans_and_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an OTLP/HTTP exporter release whose state the lean export does not know, the
    stock exporter is used: the lean processors then queue spans and records as the SDK
    makes them (the stock exporter cannot send encoded items), and every span arrives."""
    from otelkit.presets import encoder
    from otelkit.presets.logexport import LeanLogRecordProcessor
    from otelkit.presets.pipeline import PerProcessLogExporter, PerProcessSpanExporter
    from otelkit.presets.spanexport import LeanSpanProcessor

    monkeypatch.setattr(encoder, "_HTTP_EXPORTER_FIELDS", ("_a_field_no_release_has",))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collect.bodies.clear()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        spans = PerProcessSpanExporter(
            lambda: encoder.lean_http_span_exporter(endpoint=f"{base}/v1/traces", timeout=5)
        )
        kept = _Keep()
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(LeanSpanProcessor(spans))
        provider.add_span_processor(SimpleSpanProcessor(kept))
        provider.get_tracer("lib").start_span("GET /", attributes={"a": 1}).end()
        assert provider.force_flush()
        logs = PerProcessLogExporter(
            lambda: encoder.lean_http_log_exporter(endpoint=f"{base}/v1/logs", timeout=5)
        )
        assert not LeanLogRecordProcessor(logs).accepts({"a": 1})
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    [(path, _, body)] = _Collect.bodies
    assert path == "/v1/traces"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(kept.spans)
