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

import time
from collections.abc import Iterable
from typing import NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import (
    SEVERITY_NUMBER_ERROR,
    SEVERITY_NUMBER_INFO,
    SEVERITY_NUMBER_WARN,
    LogRecord,
    SeverityNumber,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import Field

from otelkit.collector.pdata import semconv
from otelkit.collector.pdata.signals import Payload, Signal
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
_USER_PREFIXES = ("enduser.", "user.")
_COPIED = ("http.route", "request_id", "http.response.body.size")
# Every key a record is made from, to the name it is read as (stable conventions).
_READ = {
    **{key: names[0] for names in (semconv.HTTP_METHOD, semconv.HTTP_STATUS_CODE,
                                   semconv.URL_PATH, semconv.URL_FULL)
       for key in names},
    **{key: key for key in (*_COPIED, EXPORTED_BY_APP)},
}  # fmt: skip


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


def severity(status: int) -> tuple[SeverityNumber.ValueType, str]:
    """As the presets: 5xx ERROR, 4xx WARN, anything else INFO."""
    if status >= 500:
        return SEVERITY_NUMBER_ERROR, "ERROR"
    if status >= 400:
        return SEVERITY_NUMBER_WARN, "WARN"
    return SEVERITY_NUMBER_INFO, "INFO"


class _Request(NamedTuple):
    """What a server span says about its request."""

    method: str
    path: str
    status: int
    found: dict[str, AnyValue]
    personal: list[KeyValue]


class AccessRecords:
    """Turns the server spans of a traces request into access records."""

    def __init__(self, config: AccessLogConfig) -> None:
        self._excluded = frozenset(config.exclude_paths)
        self._client_address = config.client_address

    def logs(self, request: ExportTraceServiceRequest) -> ExportLogsServiceRequest:
        """One record per server span, under the span's resource (each record is written
        in place: a record built apart would be copied in)."""
        logs = ExportLogsServiceRequest()
        observed = time.time_ns()
        for rs in request.resource_spans:
            records = None
            for span in _server_spans(ss.spans for ss in rs.scope_spans):
                served = self.request(span)
                if served is None:
                    continue
                if records is None:
                    rl = logs.resource_logs.add(schema_url=rs.schema_url)
                    rl.resource.CopyFrom(rs.resource)
                    sl = rl.scope_logs.add()
                    sl.scope.name = SCOPE_NAME
                    records = sl.log_records
                _write(records.add(observed_time_unix_nano=observed), span, served)
        return logs

    def request(self, span: Span) -> _Request | None:
        """The request a server span stands for, or None when it gets no record."""
        found: dict[str, AnyValue] = {}
        personal: list[KeyValue] = []
        for kv in span.attributes:
            key = kv.key
            name = _READ.get(key)
            if name is not None:
                if name == key or name not in found:  # the stable name wins
                    found[name] = kv.value
            elif key.startswith(_USER_PREFIXES) or (
                key == "client.address" and self._client_address
            ):
                personal.append(kv)
        method = found.get("http.request.method")
        if method is None or EXPORTED_BY_APP in found:
            return None
        path = _path(found)
        if path in self._excluded:
            return None
        status = _status(found.get("http.response.status_code"), span)
        if status is None:
            return None
        return _Request(method.string_value, path, status, found, personal)


def _write(record: LogRecord, span: Span, request: _Request) -> None:
    method, path, status, found, personal = request
    duration_ms = round(max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e6, 3)
    record.time_unix_nano = span.end_time_unix_nano
    record.severity_number, record.severity_text = severity(status)
    record.trace_id = span.trace_id
    record.span_id = span.span_id
    record.flags = span.flags & 0xFF
    record.body.string_value = f"{method} {path} {status} {duration_ms:.1f}ms"
    add = record.attributes.add
    add(key="http.request.method").value.string_value = method
    add(key="url.path").value.string_value = path
    add(key="http.response.status_code").value.int_value = status
    add(key="duration_ms").value.double_value = duration_ms
    for key in _COPIED:
        value = found.get(key)
        if value is not None:
            add(key=key).value.CopyFrom(value)
    record.attributes.extend(personal)


def _server_spans(span_lists: Iterable[Iterable[Span]]) -> Iterable[Span]:
    for spans in span_lists:
        for span in spans:
            if span.kind == _SERVER:
                yield span


def _path(found: dict[str, AnyValue]) -> str:
    """``url.path``; else ``http.target`` or ``url.full`` without the query string."""
    value = found.get("url.path")
    if value is not None:
        return value.string_value.split("?", 1)[0]
    value = found.get("url.full")
    return "" if value is None else _url_path(value.string_value)


def _url_path(url: str) -> str:
    """The path of an absolute URL (``urlsplit(url).path``, for a fraction of its cost)."""
    authority = url.find("://")
    rest = url[authority + 3 :] if authority >= 0 else url
    for mark in "?#":
        rest = rest.split(mark, 1)[0]
    if authority < 0:
        return rest
    start = rest.find("/")
    return "" if start < 0 else rest[start:]


def _status(value: AnyValue | None, span: Span) -> int | None:
    """The response status; 500 for an error span the server answered without one."""
    if value is not None:
        kind = value.WhichOneof("value")
        if kind == "int_value":
            return int(value.int_value)
        if kind == "string_value" and value.string_value.isdigit():
            return int(value.string_value)
        if kind == "double_value":
            return int(value.double_value)
    return 500 if span.status.code == _STATUS_ERROR else None


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
