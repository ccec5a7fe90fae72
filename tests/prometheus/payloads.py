"""Build OTLP requests for the Prometheus tests, field by field, and send the same kinds
of data through the real SDK."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace import Status as SdkStatus

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def kvs(attrs: Mapping[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in attrs.items():
        if isinstance(value, bool):
            v = AnyValue(bool_value=value)
        elif isinstance(value, int):
            v = AnyValue(int_value=value)
        elif isinstance(value, float):
            v = AnyValue(double_value=value)
        else:
            v = AnyValue(string_value=value)
        out.append(KeyValue(key=key, value=v))
    return out


def metrics_request(
    *metrics: Metric,
    resource: Mapping[str, Any] | None = None,
    scope: str = "test.scope",
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(
        kvs(resource if resource is not None else {"service.name": "shop"})
    )
    sm = rm.scope_metrics.add()
    sm.scope.name = scope
    sm.metrics.extend(metrics)
    return request


def sum_metric(
    name: str,
    value: float,
    *,
    start: int = T0,
    end: int = T0 + SECOND,
    monotonic: bool = True,
    temporality: int = CUMULATIVE,
    attrs: Mapping[str, Any] | None = None,
    unit: str = "",
    flags: int = 0,
) -> Metric:
    metric = Metric(name=name, unit=unit)
    metric.sum.is_monotonic = monotonic
    metric.sum.aggregation_temporality = temporality
    dp = metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=end, flags=flags)
    dp.as_double = value
    dp.attributes.extend(kvs(attrs or {}))
    return metric


def gauge_metric(name: str, value: float, *, end: int = T0 + SECOND, unit: str = "") -> Metric:
    metric = Metric(name=name, unit=unit)
    metric.gauge.data_points.add(time_unix_nano=end, as_double=value)
    return metric


def histogram_metric(
    name: str,
    bounds: Sequence[float],
    counts: Sequence[int],
    total: float,
    *,
    start: int = T0,
    end: int = T0 + SECOND,
    temporality: int = CUMULATIVE,
    unit: str = "s",
) -> Metric:
    metric = Metric(name=name, unit=unit)
    metric.histogram.aggregation_temporality = temporality
    metric.histogram.data_points.add(
        start_time_unix_nano=start,
        time_unix_nano=end,
        explicit_bounds=list(bounds),
        bucket_counts=list(counts),
        count=sum(counts),
        sum=total,
    )
    return metric


def span(
    name: str,
    duration_ms: float,
    *,
    kind: int = Span.SPAN_KIND_SERVER,
    status: int = Status.STATUS_CODE_UNSET,
    attrs: Mapping[str, Any] | None = None,
    trace_id: bytes = b"\x01" * 16,
    span_id: bytes = b"\x02" * 8,
    start: int = T0,
) -> Span:
    return Span(
        name=name,
        kind=kind,
        status=Status(code=status),
        trace_id=trace_id,
        span_id=span_id,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(duration_ms * 1_000_000),
        attributes=kvs(attrs or {}),
    )


def traces_request(
    *spans: Span, resource: Mapping[str, Any] | None = None
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        kvs(resource if resource is not None else {"service.name": "shop"})
    )
    ss = rs.scope_spans.add()
    ss.spans.extend(spans)
    return request


SDK_RESOURCE = Resource.create({
    "service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-1",
    "deployment.environment": "e2e",
})  # fmt: skip
JOB = "shop/checkout"


def send_sdk_traffic(grpc_port: int) -> list[str]:
    """13 server spans of ``JOB`` (12 ``GET /orders/{id}``, 3 of them errors, and one
    ``POST /orders``) and one metric of each instrument, through the real OTLP/gRPC
    exporters; returns the exported trace IDs."""
    endpoint = f"127.0.0.1:{grpc_port}"
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=SDK_RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=60_000
    )
    meter_provider = MeterProvider(metric_readers=[reader], resource=SDK_RESOURCE)
    tracer = tracer_provider.get_tracer("shop.web")
    for i in range(12):
        with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as request:
            request.set_attribute("http.route", "/orders/{id}")
            request.set_attribute("url.full", f"http://shop/orders/{i}?token=secret")
            if i % 4 == 0:
                request.set_status(SdkStatus(StatusCode.ERROR))
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as request:
        request.set_attribute("http.route", "/orders")
        request.set_attribute("http.request.method", "POST")
    meter = meter_provider.get_meter("shop.orders", "1.0")
    meter.create_counter("orders.placed", unit="{order}").add(5, {"payment": "card"})
    meter.create_gauge("queue.depth", unit="{item}").set(17)
    meter.create_histogram("checkout.duration", unit="s").record(0.25)
    meter.create_up_down_counter("carts.open", unit="{cart}").add(3)
    meter_provider.force_flush()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return sorted(
        {done.context.trace_id.to_bytes(16, "big").hex() for done in memory.get_finished_spans()}
    )
