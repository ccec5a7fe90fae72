"""Lean OTLP encoders: ``ExportTraceServiceRequest`` and ``ExportLogsServiceRequest`` wire
bytes straight from SDK spans and log records.

The stock exporters build a protobuf object per span or record, attribute and value, then
serialize it (about 27 us per span, on a thread that holds the GIL). These write the same
wire format directly, with the resource and scope encoded once per object and repeated
``key=value`` attributes (method, route, status, host) served from a cache. The result
parses to a message equal to the stock encoder's (see the tests).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.trace import SpanContext, SpanKind

_logger = logging.getLogger(__name__)
_SMALL = [bytes((n,)) for n in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_CACHE_LIMIT = 4096
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = [_varint(number << 3 | 2) for number in range(16)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (every field number used here is below 16)."""
    size = len(payload)
    if size < 128:
        return _TAGS[number] + _SMALL[size] + payload
    if size < 16384:
        return _TAGS[number] + bytes(((size & 0x7F) | 0x80, size >> 7)) + payload
    return _TAGS[number] + _varint(size) + payload


def _any_value(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode("utf-8"))
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return b"\x18" + _varint(value)
        # OTLP integers are 64-bit: a wider one (Python allows it) keeps its digits.
        return _field(1, str(value).encode("ascii"))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode("utf-8")) + _field(2, _any_value(value))


class _Encoder:
    """Resources, scopes and attributes, with per-exporter caches (one exporter thread)."""

    def __init__(self) -> None:
        # Encoded ``key=value`` fields, per field number (the same pair is field 1 of a
        # resource and field 9 of a span) and per value type (``True == 1 == 1.0``), keyed
        # by the ``(key, value)`` tuples the attribute dict yields.
        self._attributes: dict[int, dict[type, dict[tuple[str, Any], bytes]]] = {}
        self._resources: dict[int, tuple[Any, bytes, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes, bytes]] = {}

    def _attribute_fields(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        caches = self._attributes.get(number)
        if caches is None:
            caches = self._attributes[number] = {kind: {} for kind in (str, int, float, bool)}
        parts = []
        # BoundedAttributes wraps a dict; iterating the dict skips the Mapping machinery.
        for item in getattr(attributes, "_dict", attributes).items():
            cache = caches.get(type(item[1]))
            if cache is None:
                try:
                    parts.append(_field(number, _key_value(*item)))
                except TypeError:  # as the stock encoder: drop the attribute, keep the span
                    _logger.exception("cannot encode attribute %s", item[0])
                continue
            encoded = cache.get(item)
            if encoded is None:
                encoded = _field(number, _key_value(*item))
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[item] = encoded
            parts.append(encoded)
        return b"".join(parts)

    def _resource(self, resource: Any) -> tuple[bytes, bytes]:
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            body = _field(1, self._attribute_fields(1, resource.attributes))
            schema = _field(3, resource.schema_url.encode()) if resource.schema_url else b""
            cached = (resource, body, schema)
            self._resources[id(resource)] = cached
        return cached[1], cached[2]

    def _scope(self, scope: Any) -> tuple[bytes, bytes]:
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            if scope is None:
                body, schema = _field(1, b""), b""
            else:
                fields = _field(1, scope.name.encode()) if scope.name else b""
                if scope.version:
                    fields += _field(2, scope.version.encode())
                fields += self._attribute_fields(3, scope.attributes)
                body = _field(1, fields)
                schema = _field(3, scope.schema_url.encode()) if scope.schema_url else b""
            cached = (scope, body, schema)
            self._scopes[id(scope)] = cached
        return cached[1], cached[2]

    def encode(self, items: Sequence[Any]) -> bytes:
        raise NotImplementedError

    def _request(self, items: Iterable[tuple[Any, Any, bytes]]) -> bytes:
        """``Export*ServiceRequest`` bytes from (resource, scope, encoded item), grouped by
        resource then scope (the item is field 2 of its scope's message)."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for resource, scope, item in items:
            by_scope = groups.setdefault(id(resource), (resource, {}))[1]
            by_scope.setdefault(id(scope), (scope, []))[1].append(_field(2, item))
        out = []
        for resource, by_scope in groups.values():
            resource_body, resource_schema = self._resource(resource)
            scope_spans = []
            for scope, encoded in by_scope.values():
                scope_body, scope_schema = self._scope(scope)
                scope_spans.append(_field(2, scope_body + b"".join(encoded) + scope_schema))
            out.append(_field(1, resource_body + b"".join(scope_spans) + resource_schema))
        return b"".join(out)


class SpanEncoder(_Encoder):
    """Encodes batches of SDK spans and :data:`EncodedItem` items."""

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[str, bytes] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """``ExportTraceServiceRequest`` bytes, grouped by resource then scope."""
        return self._request(_with_group(span, self._span) for span in spans)

    def encoded(self, span: ReadableSpan) -> EncodedItem:
        """The span as an item :meth:`encode` sends as it is."""
        return encoded_item(span.resource, span.instrumentation_scope, self._span(span))

    def _span(self, span: ReadableSpan) -> bytes:
        # The SDK's public properties copy (attributes into a MappingProxyType, events and
        # links into tuples, under a lock); an ended span no longer changes, so its fields
        # are read directly where the SDK keeps them.
        fields = _SpanFields.of(span)
        context = fields.context
        assert context is not None
        parent = fields.parent
        parts = [
            b"\x0a\x10"
            + context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + context.span_id.to_bytes(8, "big")
        ]
        if context.trace_state:
            state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
            parts.append(_field(3, state.encode()))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        name = fields.name
        if name:
            parts.append(self._name_field(name))
        parts.append(_KIND_FIELDS[fields.kind])
        if fields.start_time:
            parts.append(b"\x39" + _FIXED64(fields.start_time))
        if fields.end_time:
            parts.append(b"\x41" + _FIXED64(fields.end_time))
        parts.append(self._attribute_fields(9, fields.attributes))
        if fields.dropped_attributes:
            parts.append(b"\x50" + _varint(fields.dropped_attributes))
        for event in fields.events:
            parts.append(_field(11, self._event(event)))
        if fields.dropped_events:
            parts.append(b"\x60" + _varint(fields.dropped_events))
        for link in fields.links:
            parts.append(_field(13, self._link(link)))
        if fields.dropped_links:
            parts.append(b"\x70" + _varint(fields.dropped_links))
        parts.append(self._status_field(fields.status))
        parts.append(_REMOTE_PARENT_FLAGS if parent is not None and parent.is_remote else _FLAGS)
        return b"".join(parts)

    def _name_field(self, name: str) -> bytes:
        """Span names repeat (one per route and operation): encode each once."""
        encoded = self._names.get(name)
        if encoded is None:
            encoded = _field(5, name.encode("utf-8"))
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            self._names[name] = encoded
        return encoded

    def _status_field(self, status: Any) -> bytes:
        if status is None or (status.status_code.value == 0 and not status.description):
            return _EMPTY_STATUS
        return _field(15, _status(status))

    def _event(self, event: Any) -> bytes:
        body = b"\x09" + _FIXED64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _field(2, event.name.encode("utf-8"))
        body += self._attribute_fields(3, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        return body

    def _link(self, link: Any) -> bytes:
        context: SpanContext = link.context
        body = b"\x0a\x10" + context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + context.span_id.to_bytes(8, "big")
        body += self._attribute_fields(4, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        return body + b"\x35" + _FIXED32(_flags(context))


# An item encoded ahead of export is a plain ``(group, bytes)`` tuple: the garbage
# collector stops tracking a tuple of atoms at its first pass, so items waiting in an
# export queue never reach the older generations (an object with a reference to its
# resource would, and every collection of those walks the whole heap). ``group`` indexes
# the (resource, scope) pair the item is sent under; there are a few per process.
EncodedItem = tuple[int, bytes]
_groups: list[tuple[Any, Any]] = []
_group_index: dict[tuple[int, int], int] = {}
_groups_lock = threading.Lock()


def takes_encoded_items(exporter: Any) -> bool:
    """Whether ``exporter`` sends encoded items as they are: otelkit's lean OTLP exporters
    do; the stock one a lean exporter falls back to (a release it does not know) does not,
    and is then given spans and records as the SDK makes them."""
    return getattr(exporter, "takes_encoded_items", False) is True


def encoded_item(resource: Any, instrumentation_scope: Any, encoded: bytes) -> EncodedItem:
    """An encoded span or log record, to be sent under ``resource`` and its scope."""
    key = (id(resource), id(instrumentation_scope))  # the pair is kept: its ids stay unique
    group = _group_index.get(key)
    if group is None:
        with _groups_lock:
            group = _group_index.get(key)
            if group is None:
                _groups.append((resource, instrumentation_scope))
                group = _group_index[key] = len(_groups) - 1
    return (group, encoded)


def _with_group(item: Any, encode: Callable[[Any], bytes]) -> tuple[Any, Any, bytes]:
    """(resource, scope, encoded item) of an SDK item or an :data:`EncodedItem`."""
    if type(item) is tuple:
        resource, scope = _groups[item[0]]
        return resource, scope, item[1]
    return item.resource, item.instrumentation_scope, encode(item)


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_PLAIN_TYPES = frozenset({str, bool, int, float})


def plain_attributes(attributes: Mapping[str, Any]) -> bool:
    """Whether the SDK would keep these attributes exactly as they are (non-empty string
    keys; ``str``, ``bool``, 64-bit ``int`` and ``float`` values), so they may be encoded
    without its cleaning."""
    for key, value in attributes.items():
        kind = type(value)
        if not key or kind not in _PLAIN_TYPES:
            return False
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
            return False
    return True


class LogEncoder(_Encoder):
    """Encodes batches of SDK log records (``ReadableLogRecord``) and
    :data:`EncodedItem` items."""

    def encode(self, records: Sequence[Any]) -> bytes:
        """``ExportLogsServiceRequest`` bytes, grouped by resource then scope."""
        return self._request(_with_group(record, self._record) for record in records)

    def log_record(
        self,
        timestamp: int,
        observed_timestamp: int,
        severity_number: int,
        severity_text: str,
        body: str,
        attributes: Mapping[str, Any],
        span_context: SpanContext,
        event_name: str | None,
    ) -> bytes:
        """One ``LogRecord`` message, field for field what :meth:`_record` writes for the
        SDK record these values make (attributes must pass :func:`plain_attributes`)."""
        return _log_record_message(
            timestamp,
            severity_number,
            severity_text,
            _field(1, body.encode("utf-8")),
            self._attribute_fields(6, attributes),
            0,
            int(span_context.trace_flags),
            span_context.trace_id,
            span_context.span_id,
            observed_timestamp,
            event_name,
        )

    def _record(self, readable: Any) -> bytes:
        record = readable.log_record
        return _log_record_message(
            record.timestamp,
            getattr(record.severity_number, "value", None),
            record.severity_text,
            _body(record.body),
            self._attribute_fields(6, record.attributes),
            readable.dropped_attributes,
            int(record.trace_flags or 0),
            record.trace_id,
            record.span_id,
            record.observed_timestamp,
            record.event_name,
        )


def _log_record_message(
    timestamp: int | None,
    severity_number: int | None,
    severity_text: str | None,
    body: bytes,
    attributes: bytes,
    dropped_attributes: int,
    flags: int,
    trace_id: int | None,
    span_id: int | None,
    observed_timestamp: int | None,
    event_name: str | None,
) -> bytes:
    """One ``LogRecord`` message: both writers above go through here, so they cannot differ."""
    parts = [b"\x09" + _FIXED64(timestamp)] if timestamp else []
    if severity_number:
        parts.append(b"\x10" + _varint(severity_number))
    if severity_text:
        parts.append(_field(3, severity_text.encode("utf-8")))
    parts.append(_field(5, body))
    parts.append(attributes)
    if dropped_attributes:
        parts.append(b"\x38" + _varint(dropped_attributes))
    if flags:
        parts.append(b"\x45" + _FIXED32(flags))
    if trace_id:
        parts.append(b"\x4a\x10" + trace_id.to_bytes(16, "big"))
    if span_id:
        parts.append(b"\x52\x08" + span_id.to_bytes(8, "big"))
    if observed_timestamp:
        parts.append(b"\x59" + _FIXED64(observed_timestamp))
    if event_name:
        parts.append(_field(12, event_name.encode("utf-8")))
    return b"".join(parts)


def _body(value: Any) -> bytes:
    try:
        return _any_value(value)
    except TypeError:  # keep the record: its text instead of a value OTLP has no type for
        return _any_value(str(value))


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    body = _field(2, status.description.encode("utf-8")) if status.description else b""
    code = status.status_code.value
    return body + (b"\x18" + _SMALL[code] if code else b"")


def _flags(context: SpanContext | None) -> int:
    if context is not None and context.is_remote:
        return _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE
    return _FLAGS_HAS_IS_REMOTE


_FLAGS = b"\x85\x01" + _FIXED32(_FLAGS_HAS_IS_REMOTE)
_REMOTE_PARENT_FLAGS = b"\x85\x01" + _FIXED32(_FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)
_EMPTY_STATUS = _field(15, b"")
_SDK_SPAN_TYPES = frozenset({ReadableSpan, Span})
_KIND_FIELDS = {kind: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}


class _SpanFields:
    """What the encoder reads from a span, without the SDK properties' defensive copies."""

    __slots__ = (
        "attributes",
        "context",
        "dropped_attributes",
        "dropped_events",
        "dropped_links",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )
    attributes: Mapping[str, Any] | None
    context: SpanContext | None
    dropped_attributes: int
    dropped_events: int
    dropped_links: int
    end_time: int | None
    events: Iterable[Any]
    kind: SpanKind
    links: Iterable[Any]
    name: str
    parent: SpanContext | None
    start_time: int | None
    status: Any

    @classmethod
    def of(cls, span: ReadableSpan) -> _SpanFields:
        if type(span) not in _SDK_SPAN_TYPES:  # a subclass may override what it shows
            return cls._public(span)
        fields = cls()
        try:
            raw = vars(span)
            attributes = raw["_attributes"]
            events = raw["_events"]
            links = raw["_links"]
            fields.name = raw["_name"]
            fields.context = raw["_context"]
            fields.parent = raw["_parent"]
            fields.kind = raw["_kind"]
            fields.start_time = raw["_start_time"]
            fields.end_time = raw["_end_time"]
            fields.status = raw["_status"]
        except (KeyError, TypeError):  # not the SDK's layout: use the public properties
            return cls._public(span)
        fields.attributes = getattr(attributes, "_dict", attributes)
        fields.dropped_attributes = getattr(attributes, "dropped", 0)
        fields.events = getattr(events, "_dq", events) or ()
        fields.dropped_events = getattr(events, "dropped", 0)
        fields.links = getattr(links, "_dq", links) or ()
        fields.dropped_links = getattr(links, "dropped", 0)
        return fields

    @classmethod
    def _public(cls, span: ReadableSpan) -> _SpanFields:
        fields = cls()
        fields.name = span.name
        fields.context = span.get_span_context()
        fields.parent = span.parent
        fields.kind = span.kind
        fields.start_time = span.start_time
        fields.end_time = span.end_time
        fields.status = span.status
        fields.attributes = span.attributes
        fields.dropped_attributes = span.dropped_attributes
        fields.events = span.events
        fields.dropped_events = span.dropped_events
        fields.links = span.links
        fields.dropped_links = span.dropped_links
        return fields


_TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _lean_grpc(stock: type, encoder: type[_Encoder], method: str, **options: Any) -> Any:
    """The stock OTLP/gRPC exporter (endpoint, TLS, headers, compression, retries)
    sending bytes from ``encoder`` instead of protobuf objects."""

    class LeanGrpcExporter(stock):  # type: ignore[misc]
        takes_encoded_items = True

        def __init__(self, **kwargs: Any) -> None:
            self._encoder = encoder()
            super().__init__(**kwargs)

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()
            channel = self._channel
            assert channel is not None

            class BytesStub:
                Export = channel.unary_unary(method)

            self._client = BytesStub()

        def _translate_data(self, data: Sequence[Any]) -> bytes:
            encoded: bytes = self._encoder.encode(data)
            return encoded

    return LeanGrpcExporter(**options)


def lean_grpc_span_exporter(**options: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return _lean_grpc(OTLPSpanExporter, SpanEncoder, _TRACES_METHOD, **options)


def lean_grpc_log_exporter(**options: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return _lean_grpc(OTLPLogExporter, LogEncoder, _LOGS_METHOD, **options)


_HTTP_EXPORTER_FIELDS = ("_shutdown", "_metrics", "_client", "_max_request_size")


def _lean_http(stock: type, encoder: type[_Encoder], result: Any, what: str, **options: Any) -> Any:
    """The stock OTLP/HTTP (protobuf) exporter (endpoint, TLS, headers, compression,
    retries, size limit, its own metrics) posting bytes from ``encoder``.

    The stock ``export`` encodes through a module function, so the lean one repeats its
    steps with the encoder swapped; should a later release keep its state elsewhere, the
    stock exporter is used unchanged.
    """
    from opentelemetry.exporter.otlp.proto.http import _common
    from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

    class LeanHttpExporter(stock):  # type: ignore[misc]
        takes_encoded_items = True

        def __init__(self, **kwargs: Any) -> None:
            self._encoder = encoder()
            super().__init__(**kwargs)

        def export(self, batch: Sequence[Any]) -> Any:
            if self._shutdown:
                _logger.warning("Exporter already shutdown, ignoring batch")
                return result.FAILURE
            with self._metrics.export_operation(len(batch)) as outcome:
                try:
                    data = self._encoder.encode(batch)
                except Exception as error:  # as the stock exporter: fail the batch
                    _logger.error("Failed to encode %s batch: %s", what, error)
                    outcome.error = error
                    return result.FAILURE
                if _common._is_request_too_large(data, self._max_request_size):
                    _logger.warning(
                        "Dropping %s batch: serialized size %d bytes exceeds "
                        "max_request_size %d bytes.",
                        what,
                        len(data),
                        self._max_request_size,
                    )
                    outcome.error = _common.RequestPayloadTooLargeError(
                        f"Serialized {what} request size {len(data)} bytes exceeds "
                        f"max_request_size {self._max_request_size} bytes."
                    )
                    return result.FAILURE
                sent = self._client.export(data)
                if not sent.success:
                    outcome.error = sent.error
                    outcome.error_attrs = (
                        {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                        if sent.status_code is not None
                        else None
                    )
                    return result.FAILURE
            return result.SUCCESS

    exporter = LeanHttpExporter(**options)
    if all(hasattr(exporter, name) for name in _HTTP_EXPORTER_FIELDS) and hasattr(
        _common, "_is_request_too_large"
    ):
        return exporter
    _logger.debug("this OTLP/HTTP exporter is not the one the lean export knows; using it as is")
    return stock(**options)


def lean_http_span_exporter(**options: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    return _lean_http(OTLPSpanExporter, SpanEncoder, SpanExportResult, "span", **options)


def lean_http_log_exporter(**options: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    return _lean_http(OTLPLogExporter, LogEncoder, LogRecordExportResult, "logs", **options)
