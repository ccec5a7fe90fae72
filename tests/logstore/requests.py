"""Build OTLP log requests the way SDKs send them, for in-process tests."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

SECOND = 1_000_000_000


@dataclass
class Rec:
    body: Any
    severity: int = 9
    severity_text: str = ""
    ts: int = 0
    trace_id: bytes = b""
    span_id: bytes = b""
    attributes: Mapping[str, Any] = field(default_factory=dict)


def to_any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    result = AnyValue()
    if isinstance(value, Mapping):
        for key, item in value.items():
            result.kvlist_value.values.add(key=key, value=to_any(item))
    else:
        for item in value:
            result.array_value.values.append(to_any(item))
    return result


def kvs(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=to_any(v)) for k, v in attributes.items()]


def request(
    records: Sequence[Rec],
    service: str = "checkout",
    resource: Mapping[str, Any] | None = None,
    scope: str = "app.module",
) -> ExportLogsServiceRequest:
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add()
    resource_logs.resource.attributes.extend(kvs({"service.name": service, **(resource or {})}))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = scope
    now = time.time_ns()
    for rec in records:
        record = scope_logs.log_records.add(
            time_unix_nano=rec.ts or now,
            observed_time_unix_nano=now,
            severity_number=rec.severity,  # type: ignore[arg-type]
            severity_text=rec.severity_text,
            trace_id=rec.trace_id,
            span_id=rec.span_id,
            flags=1 if rec.trace_id else 0,
        )
        if rec.body is not None:
            record.body.CopyFrom(to_any(rec.body))
        record.attributes.extend(kvs(rec.attributes))
    return message
