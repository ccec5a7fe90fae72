"""Findings (budget breaches, performance issues) and how they leave a traces pipeline.

A traces processor only sees traces, yet a finding must also reach the logs pipelines
(log store, Sentry issues). otelkit carries each finding **in the trace itself**, as a
span event named ``otelkit.finding`` on the span it concerns, and the ``findings``
connector (traces -> logs) turns every such event into a log record. So:

- the trace stays self-describing (any OTLP backend shows the finding on the span);
- no hidden in-process channel: the logs path is visible in the pipeline config;
- budget breaches and performance issues use the same path.

Span attributes (on offending spans, read by tail sampling and the Sentry exporter):

=================================  ==========================================================
``otelkit.budget.name``            the budget that owns the span
``otelkit.budget.limit_ms``        its per-span limit (ceiling, else tightest objective)
``otelkit.budget.exceeded``        ``true`` when the span is over that limit
``otelkit.perf_issue.type``        e.g. ``n_plus_one_db_queries`` (on every offending span)
``otelkit.perf_issue.fingerprint`` stable hex hash grouping the same issue across traces
=================================  ==========================================================

Event / log record attributes (``otelkit.finding.*``): ``kind`` (``budget_breach`` or
``perf_issue``), ``type``, ``title``, ``culprit``, ``fingerprint``, ``span_ids`` (hex
strings of the offending spans), plus ``otelkit.budget.*`` numbers for breaches. The log
record carries the trace and span IDs of the span the event sits on, severity WARN, the
title as body, and ``event.name = otelkit.finding``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from otelkit.collector.pdata._otlpjson_checked import varint
from otelkit.collector.pdata.wire import (
    DELIMITED_TAGS,
    delimited_field,
    logs_under_resources,
    read_varint,
)

EVENT_NAME = "otelkit.finding"
SCOPE_NAME = "otelkit.findings"
BUDGET_NAME = "otelkit.budget.name"
BUDGET_LIMIT_MS = "otelkit.budget.limit_ms"
BUDGET_EXCEEDED = "otelkit.budget.exceeded"
PERF_ISSUE_TYPE = "otelkit.perf_issue.type"
PERF_ISSUE_FINGERPRINT = "otelkit.perf_issue.fingerprint"
FINDING_KIND = "otelkit.finding.kind"
KIND_BUDGET_BREACH = "budget_breach"
KIND_PERF_ISSUE = "perf_issue"

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack


_SCOPE = delimited_field(1, delimited_field(1, SCOPE_NAME.encode()))  # ScopeLogs.scope
_WARN = (
    b"\x10" + varint(SEVERITY_NUMBER_WARN) + delimited_field(3, b"WARN")
)  # severity number, text
_EVENT_ATTRIBUTES = 0x1A  # Span.Event.attributes: field 3, length-delimited
_ATTRIBUTES_TAG = DELIMITED_TAGS[6]  # LogRecord.attributes
_TITLE_KEY = delimited_field(1, b"otelkit.finding.title")  # KeyValue.key
_SPAN_NAME_KEY = delimited_field(1, b"span.name")
_EVENT_NAME_ATTRIBUTE = delimited_field(
    6, KeyValue(key="event.name", value=AnyValue(string_value=EVENT_NAME)).SerializeToString()
)
_EVENT_NAME_FIELD = delimited_field(12, EVENT_NAME.encode())  # LogRecord.event_name


@dataclass
class Finding:
    kind: str
    type: str
    title: str
    culprit: str
    fingerprint: str
    span_ids: Sequence[bytes]
    extra: dict[str, str | float | int | bool] = field(default_factory=dict)


def fingerprint(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def put_value(out: AnyValue, value: str | float | int | bool | Sequence[str]) -> None:
    """Writes ``value`` into ``out`` in place: building an AnyValue and copying it in
    costs several times more (findings carry about ten attributes each)."""
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    else:
        values = out.array_value.values
        for v in value:
            values.add().string_value = v


def value_of(value: str | float | int | bool | Sequence[str]) -> AnyValue:
    out = AnyValue()
    put_value(out, value)
    return out


def set_attribute(span: Span, key: str, value: str | float | int | bool) -> None:
    """Set (replace or append) one span attribute."""
    for kv in span.attributes:
        if kv.key == key:
            kv.value.Clear()
            put_value(kv.value, value)
            return
    put_value(span.attributes.add(key=key).value, value)


def attach(span: Span, finding: Finding, time_unix_nano: int) -> None:
    """Record a finding as an ``otelkit.finding`` event on ``span``."""
    event = span.events.add(name=EVENT_NAME, time_unix_nano=time_unix_nano)
    attrs: dict[str, str | float | int | bool | Sequence[str]] = {
        FINDING_KIND: finding.kind,
        "otelkit.finding.type": finding.type,
        "otelkit.finding.title": finding.title,
        "otelkit.finding.culprit": finding.culprit,
        "otelkit.finding.fingerprint": finding.fingerprint,
        "otelkit.finding.span_ids": [s.hex() for s in finding.span_ids],
        **finding.extra,
    }
    add = event.attributes.add
    for key, value in attrs.items():
        put_value(add(key=key).value, value)


def findings_to_logs(request: ExportTraceServiceRequest) -> ExportLogsServiceRequest:
    """One log record per ``otelkit.finding`` span event, under the span's resource.

    Each record is written as wire bytes, the event's attributes copied as they are
    serialised, and the whole logs request parsed once: building the records field by
    field (and copying them into the request) cost several times more."""
    return logs_under_resources(
        _SCOPE, ((rs, _finding_records(rs)) for rs in request.resource_spans)
    )


def _finding_records(rs: ResourceSpans) -> list[bytes]:
    """The log record fields (tag and length included) of one ResourceSpans' findings."""
    return [
        delimited_field(2, record)
        for ss in rs.scope_spans
        for span in ss.spans
        if span.events
        for record in _records(span)
    ]


def _records(span: Span) -> list[bytes]:
    """The ``LogRecord`` bytes of the span's findings."""
    made = []
    tail: bytes | None = None  # what every record of this span ends with
    for event in span.events:
        if event.name != EVENT_NAME:
            continue
        if tail is None:
            tail = _span_tail(span)
        attributes, title = _event_attributes(event.SerializeToString())
        when = event.time_unix_nano
        times = b"\x09" + _FIXED64(when) + b"\x59" + _FIXED64(when) if when else b""
        body = b"" if title is None else delimited_field(5, delimited_field(1, title))
        made.append(times + _WARN + body + attributes + tail)
    return made


def _span_tail(span: Span) -> bytes:
    """The fields a finding's record takes from its span, after the event's attributes:
    the ``event.name`` and ``span.name`` attributes, flags, trace and span IDs and the
    record's ``event_name``."""
    name = delimited_field(2, delimited_field(1, span.name.encode()))
    flags = span.flags & 0xFF
    trace_id, span_id = span.trace_id, span.span_id
    return b"".join(
        (
            _EVENT_NAME_ATTRIBUTE,
            delimited_field(6, _SPAN_NAME_KEY + name),
            b"\x45" + _FIXED32(flags) if flags else b"",
            delimited_field(9, trace_id) if trace_id else b"",
            delimited_field(10, span_id) if span_id else b"",
            _EVENT_NAME_FIELD,
        )
    )


def _event_attributes(data: bytes) -> tuple[bytes, bytes | None]:
    """A serialised span event's attributes as ``LogRecord.attributes`` fields, and the
    text of its last ``otelkit.finding.title`` (empty if not a string), if it has one."""
    attributes = []  # each one's length and bytes, to be joined behind its new tag
    title: bytes | None = None
    at, size = 0, len(data)
    while at < size:
        tag = data[at]
        if tag == _EVENT_ATTRIBUTES:  # most fields: one-byte tag and (mostly) length
            length = data[at + 1]
            start = at + 2 if length < 0x80 else read_varint(data, at + 1)[1]
            if length >= 0x80:
                length = read_varint(data, at + 1)[0]
            end = start + length
            attributes.append(data[at + 1 : end])
            if data.startswith(_TITLE_KEY, start):
                title = KeyValue.FromString(data[start:end]).value.string_value.encode()
            at = end
            continue
        tag, at = read_varint(data, at)
        wire_type = tag & 7
        if wire_type == 2:
            length, at = read_varint(data, at)
            at += length
        elif wire_type == 0:
            at = read_varint(data, at)[1]
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        else:  # groups: no OTLP message has one, and upb parses none into a span event
            raise ValueError(f"span event field of wire type {wire_type}")
    if not attributes:
        return b"", title
    return _ATTRIBUTES_TAG + _ATTRIBUTES_TAG.join(attributes), title


def service_name(resource_attributes: Iterable[KeyValue]) -> str:
    for kv in resource_attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return "unknown_service"
