"""Telemetry made by the real OpenTelemetry SDK, and its OTLP exporters for each transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetrics,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "test"})


def make_spans(count: int) -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("orders", "1.2.3")
    for i in range(count):
        with tracer.start_as_current_span(f"GET /orders/{i}") as span:
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("http.response.status_code", 200 + i)
            span.set_attribute("order.ids", [i, i + 1])
            with tracer.start_as_current_span("SELECT orders") as child:
                child.set_attribute("db.system.name", "postgresql")
    provider.shutdown()
    return memory.get_finished_spans()


def make_metrics() -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("orders")
    counter = meter.create_counter("orders.placed", unit="{order}")
    histogram = meter.create_histogram("http.server.request.duration", unit="s")
    for region in ("eu", "us", "ap"):
        counter.add(3, {"region": region})
        histogram.record(0.25, {"http.route": f"/{region}"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def make_logs(count: int) -> Sequence[ReadableLogRecord]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("orders")
    for i in range(count):
        logger.emit(
            LogRecord(
                body=f"payment {i} declined",
                severity_text="WARN",
                severity_number=SeverityNumber.WARN,
                attributes={"payment.id": f"p-{i}"},
            )
        )
    provider.shutdown()
    return memory.get_finished_logs()


def exporters(transport: str, grpc_target: str, http_url: str, **options: Any) -> dict[str, Any]:
    """The SDK's span, metric and log exporters for ``transport``, aimed at the receiver."""
    if transport == "grpc":
        endpoint = f"http://{grpc_target}"
        return {
            "traces": GrpcSpans(endpoint=endpoint, insecure=True, **options),
            "metrics": GrpcMetrics(endpoint=endpoint, insecure=True, **options),
            "logs": GrpcLogs(endpoint=endpoint, insecure=True, **options),
        }
    return {
        "traces": HttpSpans(endpoint=f"{http_url}/v1/traces", **options),
        "metrics": HttpMetrics(endpoint=f"{http_url}/v1/metrics", **options),
        "logs": HttpLogs(endpoint=f"{http_url}/v1/logs", **options),
    }
