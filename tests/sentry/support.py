"""Helpers for the Sentry exporter tests: run it in-process, build OTLP, check with Relay."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sentry_relay.processing import StoreNormalizer

from otelkit.collector.exporters.sentry import SentryConfig, SentryExporter, factory
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.logstore.requests import to_any

NORMALIZER = StoreNormalizer()
FAST = {
    "retry_on_failure": {
        "initial_interval": "10ms",
        "max_interval": "50ms",
        "max_elapsed_time": "3s",
    },
    "trace_wait": "50ms",
}
# For tests that must see everything arrive: minutes, not seconds, before giving up.
PATIENT = {
    "timeout": "60s",
    "retry_on_failure": {
        "initial_interval": "10ms",
        "max_interval": "200ms",
        "max_elapsed_time": "120s",
    },
}


def exporter(config: dict[str, Any], telemetry: SelfTelemetry | None = None) -> SentryExporter:
    settings = CreateSettings(ComponentID("sentry"), Kind.EXPORTER, telemetry or SelfTelemetry())
    made = factory.create(settings, SentryConfig.model_validate(config), frozenset(Signal))
    assert isinstance(made, SentryExporter)
    return made


def run(config: dict[str, Any], batches: Sequence[Payload], pause: float = 0.0) -> SelfTelemetry:
    """Start an exporter, hand it the batches (``pause`` seconds apart), shut it down."""
    telemetry = SelfTelemetry()

    async def scenario() -> None:
        exp = exporter({**FAST, **config}, telemetry)
        await exp.start(ServiceHost())
        for batch in batches:
            await exp.consume(batch)
            if pause:
                await asyncio.sleep(pause)
        await exp.shutdown()

    asyncio.run(scenario())
    return telemetry


def relay_check(payload: dict[str, Any]) -> dict[str, Any]:
    """Relay's own normalisation: no errors, no error annotations anywhere in ``_meta``."""
    normalized: dict[str, Any] = NORMALIZER.normalize_event(payload)
    assert not normalized.get("errors"), normalized.get("errors")
    problems = list(_meta_errors(normalized.get("_meta", {}), ""))
    assert not problems, problems
    return normalized


def _meta_errors(meta: Any, path: str) -> Any:
    if isinstance(meta, dict):
        for key, value in meta.items():
            if key == "" and isinstance(value, dict) and value.get("err"):
                yield path, value["err"]
            else:
                yield from _meta_errors(value, f"{path}.{key}")


# OTLP building -------------------------------------------------------------------------
def sdk_tracer(
    service: str = "shop", **resource: Any
) -> tuple[Any, InMemorySpanExporter, TracerProvider]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": service, "service.version": "1.2.3",
             "deployment.environment.name": "test", "host.name": "web-1", **resource}
        )
    )  # fmt: skip
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("tests.sentry"), memory, provider


def to_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    encoded = encode_spans(spans)
    request = ExportTraceServiceRequest()
    request.ParseFromString(encoded.SerializeToString())
    return request


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=to_any(value))


def raw_span(
    trace_id: bytes,
    span_id: bytes,
    parent: bytes = b"",
    *,
    name: str = "op",
    kind: int = Span.SPAN_KIND_INTERNAL,
    start: float = 1_790_000_000.0,
    duration: float = 0.01,
    attrs: dict[str, Any] | None = None,
    error: bool = False,
    exception: dict[str, Any] | None = None,
) -> Span:
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=int(start * 1e9),
        end_time_unix_nano=int((start + duration) * 1e9),
    )
    span.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    if error:
        span.status.code = Status.STATUS_CODE_ERROR
    if exception is not None:
        event = span.events.add(name="exception", time_unix_nano=int((start + duration) * 1e9))
        event.attributes.extend(kv(k, v) for k, v in exception.items())
    return span


def trace_request(
    spans: Sequence[Span], service: str = "shop", **resource: Any
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attrs = {
        "service.name": service,
        "service.version": "1.2.3",
        "telemetry.sdk.language": "python",
        **resource,
    }
    rs.resource.attributes.extend(kv(k, v) for k, v in attrs.items())
    ss = rs.scope_spans.add()
    ss.scope.name = "tests.sentry"
    ss.spans.extend(spans)
    return request


def logs_request(records: Sequence[LogRecord], service: str = "shop") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend([kv("service.name", service), kv("service.version", "1.2.3")])
    sl = rl.scope_logs.add()
    sl.scope.name = "app.payments"
    sl.log_records.extend(records)
    return request


def random_id(n: int) -> bytes:
    return os.urandom(n)
