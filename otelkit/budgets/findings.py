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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN, LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

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
    """One log record per ``otelkit.finding`` span event, under the span's resource."""
    logs = ExportLogsServiceRequest()
    for rs in request.resource_spans:
        records = list(_records(ss.spans for ss in rs.scope_spans))
        if not records:
            continue
        rl = logs.resource_logs.add()
        rl.resource.CopyFrom(rs.resource)
        rl.schema_url = rs.schema_url
        sl = rl.scope_logs.add()
        sl.scope.name = SCOPE_NAME
        sl.log_records.extend(records)
    return logs


def _records(span_lists: Iterable[Iterable[Span]]) -> Iterable[LogRecord]:
    for spans in span_lists:
        for span in spans:
            if not span.events:
                continue
            for event in span.events:
                if event.name != EVENT_NAME:
                    continue
                record = LogRecord(
                    time_unix_nano=event.time_unix_nano,
                    observed_time_unix_nano=event.time_unix_nano,
                    severity_number=SEVERITY_NUMBER_WARN,
                    severity_text="WARN",
                    trace_id=span.trace_id,
                    span_id=span.span_id,
                    flags=span.flags & 0xFF,
                    event_name=EVENT_NAME,
                )
                record.attributes.extend(event.attributes)
                record.attributes.add(key="event.name", value=AnyValue(string_value=EVENT_NAME))
                record.attributes.add(key="span.name", value=AnyValue(string_value=span.name))
                for kv in event.attributes:
                    if kv.key == "otelkit.finding.title":
                        record.body.string_value = kv.value.string_value
                yield record


def service_name(resource_attributes: Iterable[KeyValue]) -> str:
    for kv in resource_attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return "unknown_service"
