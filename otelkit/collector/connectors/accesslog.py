"""``accesslog`` connector (traces -> logs): one access record per HTTP server span.

The server span of a request already holds what an access log line says (method, route,
path, status, duration, request ID, trace and span IDs), so the collector writes the
request's access record from it instead of the application sending a second copy over
OTLP. The record is the one otelkit's presets write on the ``otelkit.access`` logger
(see :mod:`otelkit.presets.access`), field for field, so a log-store query for "every slow
request to /checkout" finds the same records whichever side made them:

* scope ``otelkit.access``, the span's resource, its trace and span IDs and trace flags,
  timestamped at the span's end;
* body ``GET /orders/5 200 31.2ms``; severity by status: 5xx ERROR, 4xx WARN, else INFO;
* ``http.request.method``, ``url.path`` (never the query string), ``http.response.status_code``,
  ``duration_ms`` (the span's duration), and, when the span has them, ``http.route``,
  ``http.response.body.size``, ``request_id``, ``enduser.*`` and ``user.*``, and
  ``client.address`` only with ``client_address: true``.

A server span is one of ``kind == SERVER`` with an HTTP method, in the stable or the older
conventions (``http.method``, ``http.status_code``, ``http.target``). A span without a
status code has a record only when its status is an error (an unhandled exception the
server answered with 500). Health probes (``exclude_paths``) have none, and neither has a
span marked ``otelkit.access.exported``: its application exports its own access records
(``OTELKIT_ACCESS_LOG=otlp`` or ``both``), so the log store gets one per request either way.

Put it beside ``findings`` on the traces pipeline that runs ``redaction`` (so what reaches
the log store is scrubbed) and before any sampling (so every request has its record)::

    traces/findings: {processors: [redaction, budget, perf_issues],
                      exporters: [findings, accesslog, forward]}
    logs:            {receivers: [otlp, findings, accesslog], exporters: [logstore]}

Other spans cost one look at their kind; the batch is only read, so a fan-out shares it.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Iterable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import (
    SEVERITY_NUMBER_ERROR,
    SEVERITY_NUMBER_INFO,
    SEVERITY_NUMBER_WARN,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import Field

from otelkit.collector.pdata import semconv
from otelkit.collector.pdata._otlpjson_checked import varint
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.pdata.wire import (
    DELIMITED_TAGS,
    delimited_field,
    key_pattern,
    logs_under_resources,
    raw_value_at,
    value_text,
)
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Connector,
    Consumer,
    CreateSettings,
    connector_factory,
)

SCOPE_NAME = "otelkit.access"  # the presets' access logger: one scope whoever wrote it
EXPORTED_BY_APP = "otelkit.access.exported"
HEALTH_PATHS = ("/health", "/health/live", "/health/ready")  # the presets' health probes
_SERVER = Span.SPAN_KIND_SERVER
_STATUS_ERROR = Status.STATUS_CODE_ERROR
_PERSONAL_PREFIXES = ("enduser.", "user.")
_CLIENT_ADDRESS = "client.address"
# Stable name first: the first found is read.
_METHOD = tuple(map(key_pattern, semconv.HTTP_METHOD))
_STATUS = tuple(map(key_pattern, semconv.HTTP_STATUS_CODE))
_PATH = tuple(map(key_pattern, semconv.URL_PATH))
_URL = tuple(map(key_pattern, semconv.URL_FULL))
_EXPORTED = key_pattern(EXPORTED_BY_APP)
# Copied as they are, when the span has them (their names are the record's).
_COPIED = tuple(map(key_pattern, ("http.route", "request_id", "http.response.body.size")))
_DURATION = key_pattern("duration_ms")
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack


_INT_VALUE = 0x18  # AnyValue.int_value: field 3, varint


_SCOPE = delimited_field(
    1, delimited_field(1, SCOPE_NAME.encode())
)  # ScopeLogs.scope: otelkit.access

# A record's severity_number and severity_text fields, by severity text.
_SEVERITIES = {
    name: b"\x10" + varint(number) + delimited_field(3, name.encode())
    for number, name in (
        (SEVERITY_NUMBER_ERROR, "ERROR"),
        (SEVERITY_NUMBER_WARN, "WARN"),
        (SEVERITY_NUMBER_INFO, "INFO"),
    )
}


class AccessLogConfig(ComponentConfig):
    exclude_paths: list[str] = Field(
        default_factory=lambda: list(HEALTH_PATHS),
        description="Request paths that get no access record (health probes).",
    )
    client_address: bool = Field(
        False,
        description="Copy the span's client.address (personal data) into each record, as "
        "the presets do with OTELKIT_CAPTURE_PII=true.",
    )


def severity(status: int) -> str:
    """As the presets: 5xx ERROR, 4xx WARN, anything else INFO."""
    if status >= 500:
        return "ERROR"
    if status >= 400:
        return "WARN"
    return "INFO"


class AccessRecords:
    """Turns the server spans of a traces request into access records.

    A server span is read from its wire bytes (one serialisation in C, a ``bytes.find``
    per key) and its record written as wire bytes, the whole logs request parsed once at
    the end: reading and building the messages field by field in Python costs several
    times more."""

    def __init__(self, config: AccessLogConfig) -> None:
        self._excluded = frozenset(config.exclude_paths)
        self._client_address = config.client_address

    def logs(self, request: ExportTraceServiceRequest) -> ExportLogsServiceRequest:
        """One record per server span, under the span's resource."""
        observed = b"\x59" + _FIXED64(time.time_ns())
        record = self.record
        resource_records = []
        for rs in request.resource_spans:
            records: list[bytes] = []  # each record's tag, length and fields, joined once
            for ss in rs.scope_spans:
                for span in [span for span in ss.spans if span.kind == _SERVER]:
                    made = record(span)
                    if made is not None:
                        records += (
                            DELIMITED_TAGS[2],
                            varint(len(made) + 9),
                            made,
                            observed,
                        )
            resource_records.append((rs, records))
        return logs_under_resources(_SCOPE, resource_records)

    def record(self, span: Span) -> bytes | None:
        """The ``LogRecord`` bytes of a server span's access record, or None when it has
        none (no HTTP method, a health probe, exported by the app, no response).

        Built as one list of byte strings joined once: a function call per field cost
        more than the rest of the record."""
        data = span.SerializeToString()
        method = _first(data, _METHOD)
        if method is None or (_EXPORTED in data and _first(data, (_EXPORTED,)) is not None):
            return None
        path = _path(data)
        if path in self._excluded:
            return None
        status = _status(_first(data, _STATUS), span)
        if status is None:
            return None
        method_text, method_attribute = _method(method)
        end = span.end_time_unix_nano
        duration_ms = round(max(end - span.start_time_unix_nano, 0) / 1e6, 3)
        body = f"{method_text} {path} {status} {duration_ms:.1f}ms".encode()
        path_bytes = path.encode()
        severity_fields, status_attribute = _status_fields(status)
        parts = [
            b"\x09",
            _FIXED64(end),
            severity_fields,
            status_attribute,
            *_string_field(5, body),
            method_attribute,
            *_attribute_parts(_PATH[0], b"\x0a" + varint(len(path_bytes)) + path_bytes),
            _DURATION_PREFIX,
            _DOUBLE(duration_ms),
        ]
        for pattern in _COPIED:
            at = data.find(pattern)
            if at >= 0:
                value = raw_value_at(data, pattern, at)
                if value is not None:
                    parts.append(_copied(pattern, value))
        if b"user." in data or (self._client_address and b"client.address" in data):
            parts += self._personal(span)
        trace_id, span_id = span.trace_id, span.span_id
        parts += (
            b"\x45",
            _FIXED32(span.flags & 0xFF),
            _TRACE_ID_16 if len(trace_id) == 16 else _tagvarint(9, trace_id),
            trace_id,
            _SPAN_ID_8 if len(span_id) == 8 else _tagvarint(10, span_id),
            span_id,
        )
        return b"".join(parts)

    def _personal(self, span: Span) -> list[bytes]:
        """``enduser.*``, ``user.*`` (and ``client.address`` when configured): rare, so
        looked for in the bytes first and read from the message only when there."""
        return [
            delimited_field(6, kv.SerializeToString())
            for kv in span.attributes
            if kv.key.startswith(_PERSONAL_PREFIXES)
            or (self._client_address and kv.key == _CLIENT_ADDRESS)
        ]


def _tagvarint(number: int, payload: bytes) -> bytes:
    """The tag and length that open a length-delimited field."""
    return DELIMITED_TAGS[number] + varint(len(payload))


def _string_field(number: int, text: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """An ``AnyValue`` string field: tag, length, string_value tag and length, text."""
    size = len(text)
    inner = varint(size)
    return DELIMITED_TAGS[number], varint(1 + len(inner) + size), b"\x0a" + inner, text


def _attribute_parts(pattern: bytes, value: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """A ``LogRecord.attributes`` entry: ``pattern`` (a key, see ``key_pattern``) and its
    ``AnyValue`` bytes, as parts to join."""
    size = len(value)
    inner = varint(size)
    return b"\x32", varint(len(pattern) + len(inner) + size), pattern, inner, value


def _attribute(pattern: bytes, value: bytes) -> bytes:
    return b"".join(_attribute_parts(pattern, value))


@functools.lru_cache(maxsize=1024)
def _status_fields(status: int) -> tuple[bytes, bytes]:
    """The severity fields and the status attribute of a record, by status."""
    return _SEVERITIES[severity(status)], _attribute(_STATUS[0], b"\x18" + varint(status))


_DURATION_PREFIX = b"".join(_attribute_parts(_DURATION, bytes(9))[:4]) + b"\x21"
_TRACE_ID_16 = _tagvarint(9, bytes(16))  # the tags and lengths of the usual IDs
_SPAN_ID_8 = _tagvarint(10, bytes(8))
# Attributes made once per value for the few values a method or a route takes; bounded in
# count and size, so a sender of endless distinct values only fills them.
_KEPT_VALUES = 1024
_KEPT_SIZE = 128
_METHODS: dict[bytes, tuple[str, bytes]] = {}
_ROUTES: dict[bytes, bytes] = {}
_ROUTE = _COPIED[0]


def _method(raw: bytes) -> tuple[str, bytes]:
    """The method's text and its attribute."""
    made = _METHODS.get(raw)
    if made is None:
        made = value_text(raw), _attribute(_METHOD[0], raw)
        if len(_METHODS) < _KEPT_VALUES and len(raw) <= _KEPT_SIZE:
            _METHODS[raw] = made
    return made


def _copied(pattern: bytes, raw: bytes) -> bytes:
    """A copied attribute (routes repeat; request IDs and sizes do not)."""
    if pattern is not _ROUTE:
        return _attribute(pattern, raw)
    made = _ROUTES.get(raw)
    if made is None:
        made = _attribute(pattern, raw)
        if len(_ROUTES) < _KEPT_VALUES and len(raw) <= _KEPT_SIZE:
            _ROUTES[raw] = made
    return made


def _first(data: bytes, patterns: Iterable[bytes]) -> bytes | None:
    """The ``AnyValue`` bytes of the first of these top-level attributes the span has."""
    for pattern in patterns:
        at = data.find(pattern)
        if at >= 0:
            raw = raw_value_at(data, pattern, at)
            if raw is not None:
                return raw
    return None


def _path(data: bytes) -> str:
    """``url.path``; else ``http.target`` or ``url.full`` without the query string."""
    raw = _first(data, _PATH)
    if raw is not None:
        return value_text(raw).split("?", 1)[0]
    raw = _first(data, _URL)
    return "" if raw is None else _url_path(value_text(raw))


def _url_path(url: str) -> str:
    """The path of an absolute URL (``urlsplit(url).path``, for a fraction of its cost)."""
    authority = url.find("://")
    rest = url[authority + 3 :] if authority >= 0 else url
    for mark in "?#":
        end = rest.find(mark)
        if end >= 0:
            rest = rest[:end]
    if authority < 0:
        return rest
    start = rest.find("/")
    return "" if start < 0 else rest[start:]


def _status(raw: bytes | None, span: Span) -> int | None:
    """The response status; 500 for an error span the server answered without one. A
    value that is no HTTP status (a whole number from 1 to 999) counts as none: a record
    carries its status as an OTLP integer, which a larger number would not fit."""
    status = None if raw is None else _status_value(raw)
    if status is not None and 0 < status < 1000:
        return status
    return 500 if span.status.code == _STATUS_ERROR else None


def _status_value(raw: bytes) -> int | None:
    if 2 <= len(raw) <= 3 and raw[0] == _INT_VALUE:  # a small int_value: 1 or 2 varint bytes
        return raw[1] if len(raw) == 2 else (raw[1] & 0x7F) | (raw[2] << 7)
    text = value_text(raw)
    try:
        return int(float(text)) if "." in text else int(text)
    except (ValueError, OverflowError):  # not a number, or an infinite one
        return None


class AccessLogConnector(Connector):
    mutates_data = False  # reads the spans, sends new log records

    def __init__(self, next_consumer: Consumer, config: AccessLogConfig) -> None:
        self._next = next_consumer
        self._records = AccessRecords(config)

    async def consume(self, payload: Payload) -> None:
        logs = self._records.logs(payload)
        if logs.resource_logs:
            await self._next.consume(logs)


def _create(
    settings: CreateSettings,
    config: AccessLogConfig,
    source: Signal,
    target: Signal,
    next_consumer: Consumer,
) -> AccessLogConnector:
    return AccessLogConnector(next_consumer, config)


factory = connector_factory(
    "accesslog", AccessLogConfig, _create, frozenset({(Signal.TRACES, Signal.LOGS)})
)
