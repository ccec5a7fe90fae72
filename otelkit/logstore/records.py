"""From OTLP log records to table rows, reading only the fields the store keeps.

This is the per-record hot path of ingestion: one tuple per record, resource and scope
columns computed once per ``ResourceLogs`` / ``ScopeLogs``, attributes serialised to JSON
only when there are any.
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from typing import Any

import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# The order of values in a row; every backend inserts these columns in this order.
COLUMNS = (
    "ts",
    "observed_ts",
    "severity_number",
    "severity_text",
    "body",
    "body_json",
    "attributes",
    "resource_attributes",
    "service_name",
    "service_namespace",
    "service_version",
    "deployment_environment",
    "service_instance_id",
    "scope_name",
    "scope_version",
    "trace_id",
    "span_id",
    "flags",
    "event_name",
)

Row = tuple[Any, ...]
# OTLP times are unsigned 64-bit; both databases store signed 64-bit integers.
MAX_NS = 2**63 - 1
# A record's time more than this after the store received it is a sender's bug (a clock
# set years ahead, -1 sent as an unsigned time): stored as sent, it would head every
# newest-first search and every tail for good, above the records of the present, and
# outlive retention. It is stored at the next time the log data model offers instead: the
# observed time if that is not as far ahead, else the time received. Ahead by less (clocks
# a little off) it is kept as sent.
MAX_AHEAD_NS = 3600 * 10**9
# The log data model's severity numbers are 1..24 (0: unspecified). Another number is a
# sender's bug too: the record is kept as unspecified, its severity_text as sent.
MAX_SEVERITY = 24

_encode = msgspec.json.Encoder().encode


def _dumps(value: Any) -> str:
    """Compact JSON text (UTF-8, not ASCII-escaped)."""
    return _encode(value).decode()


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the JSON value it stands for (bytes as base64, as OTLP/JSON)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def key_values(pairs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict (a repeated key keeps its last value)."""
    result: dict[str, Any] = {}
    for kv in pairs:
        value = kv.value
        # The common kinds inline: this runs for every attribute of every record. A
        # non-empty string_value is that kind without asking which one is set.
        text = value.string_value
        if text:
            result[kv.key] = text
            continue
        kind = value.WhichOneof("value")
        if kind == "int_value":
            result[kv.key] = value.int_value
        else:
            result[kv.key] = any_value(value)
    return result


def attributes_json(pairs: Any) -> str | None:
    """Attributes as a JSON object text, or None when there are none."""
    if not pairs:
        return None
    return _dumps(key_values(pairs))


def _resource_columns(pairs: list[KeyValue]) -> tuple[Any, ...]:
    attrs = key_values(pairs)
    env = attrs.get("deployment.environment.name", attrs.get("deployment.environment"))
    return (
        _dumps(attrs) if attrs else None,
        _text(attrs.get("service.name")),
        _text(attrs.get("service.namespace")),
        _text(attrs.get("service.version")),
        _text(env),
        _text(attrs.get("service.instance.id")),
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _dumps(value)


def rows_from_request(
    request: ExportLogsServiceRequest,
    now_ns: int | None = None,
    repairs: Counter[str] | None = None,
) -> list[Row]:
    """One row per log record, in :data:`COLUMNS` order.

    ``ts`` is the record's time, else its observed time, else ``now_ns`` (the time the
    store received it), as the log data model recommends; a time more than
    :data:`MAX_AHEAD_NS` after ``now_ns`` counts as absent. ``repairs`` counts the records
    whose time or severity number was repaired, by the value's name.
    """
    now = now_ns or time.time_ns()
    latest = now + MAX_AHEAD_NS
    times = severities = 0
    rows: list[Row] = []
    append = rows.append
    for resource_logs in request.resource_logs:
        resource = _resource_columns(list(resource_logs.resource.attributes))
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_name, scope_version = scope.name or None, scope.version or None
            for record in scope_logs.log_records:
                body = record.body
                text: str | None = body.string_value  # most bodies: a non-empty string
                is_json = False
                if not text:
                    kind = body.WhichOneof("value")
                    if kind is None:
                        text = None
                    elif kind != "string_value":
                        text, is_json = _encode(any_value(body)).decode(), True
                observed = record.observed_time_unix_nano
                when = record.time_unix_nano or observed or now
                if when > latest:
                    when = observed if 0 < observed <= latest else now
                    times += 1
                observed = min(observed, MAX_NS)
                attributes = record.attributes
                severity = record.severity_number
                if not 0 <= severity <= MAX_SEVERITY:
                    severity = 0
                    severities += 1
                # Absent and all-zero IDs (as some SDKs send without a context) are None.
                trace_id, span_id = record.trace_id, record.span_id
                append(
                    (
                        when,
                        observed or None,
                        severity,
                        record.severity_text or None,
                        text,
                        is_json,
                        _encode(key_values(attributes)).decode() if attributes else None,
                        *resource,
                        scope_name,
                        scope_version,
                        trace_id if trace_id and trace_id.strip(b"\x00") else None,
                        span_id if span_id and span_id.strip(b"\x00") else None,
                        record.flags,
                        record.event_name or None,
                    )
                )
    if repairs is not None and (times or severities):
        repairs.update(time=times, severity=severities)
    return rows
