"""OTel log records -> Sentry ``log`` items (``logs: true``).

One envelope carries one ``log`` item with up to :data:`MAX_LOGS_PER_ITEM` records, as
sentry-sdk batches them. Attributes are typed (``string``, ``boolean``, ``integer``,
``double``; anything else as its JSON text) and scrubbed; the trace ID is required by
Sentry, so a record without one gets a random one, as the SDKs do outside a trace.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelkit.collector.exporters.sentry.common import ResourceInfo, attributes, severity_of
from otelkit.collector.exporters.sentry.events import body_text, clean_text, dumps_text
from otelkit.collector.runtime.scrub import Scrubber

MAX_LOGS_PER_ITEM = 100
LogItem = dict[str, Any]


def sentry_level(severity_number: int) -> str:
    if severity_number >= 21:
        return "fatal"
    if severity_number >= 17:
        return "error"
    if severity_number >= 13:
        return "warn"
    if severity_number >= 9:
        return "info"
    if severity_number >= 5:
        return "debug"
    return "trace" if severity_number else "info"


def log_item(
    record: LogRecord, resource: ResourceInfo, scope: str, scrubber: Scrubber, now: float
) -> LogItem:
    attrs = scrubber.mapping(attributes(record.attributes))
    typed = _typed({**_resource_attributes(resource), **attrs})
    typed.setdefault("sentry.origin", {"value": "auto.otlp.otelkit", "type": "string"})
    if scope:
        typed["otel.scope.name"] = {"value": scope, "type": "string"}
    if record.severity_text:
        typed["otel.severity_text"] = {"value": record.severity_text, "type": "string"}
    when = record.time_unix_nano or record.observed_time_unix_nano
    severity = severity_of(record)
    item: LogItem = {
        "timestamp": when / 1e9 if when else now,
        "trace_id": record.trace_id.hex() if any(record.trace_id) else uuid.uuid4().hex,
        "level": sentry_level(severity),
        "body": clean_text(body_text(record, scrubber), scrubber),
        "attributes": typed,
    }
    if severity:
        item["severity_number"] = severity
    if any(record.span_id):
        item["span_id"] = record.span_id.hex()
    return item


def _resource_attributes(resource: ResourceInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if resource.environment:
        out["sentry.environment"] = resource.environment
    if resource.release:
        out["sentry.release"] = resource.release
    if resource.server_name:
        out["server.address"] = resource.server_name
    out["service.name"] = resource.service
    return out


def _typed(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    typed: dict[str, dict[str, Any]] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            typed[key] = {"value": value, "type": "boolean"}
        elif isinstance(value, int):
            typed[key] = {"value": value, "type": "integer"}
        elif isinstance(value, float):
            typed[key] = {"value": value, "type": "double"}
        elif isinstance(value, str):
            typed[key] = {"value": value, "type": "string"}
        else:
            typed[key] = {"value": dumps_text(value), "type": "string"}
    return typed
