"""Real OpenTelemetry SDK data and exporters, and readers of what collectors wrote.

Data is made with the SDK's in-memory exporters, then sent with the SDK's OTLP
exporters (gRPC or HTTP/protobuf), so the collector sees exactly what an application
sends. What arrives is compared item by item with the SDK's own protobuf encoding of
the same data: equal protobuf messages mean every ID, attribute and field survived.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
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

from otelkit.collector.pdata.otlp_json import iter_file
from otelkit.collector.pdata.signals import Payload

RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "e2e"})


# Making data -------------------------------------------------------------------------
def make_spans(count: int, tag: str = "", *, realistic: bool = False) -> Sequence[ReadableSpan]:
    """``count`` root spans, each with one child: ``2 * count`` spans, unique names.

    ``realistic`` adds what an instrumented web service records (full URL, user agent,
    client address, SQL text...): about 520 bytes a span encoded, as in real traffic."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("orders", "1.2.3")
    for i in range(count):
        with tracer.start_as_current_span(f"GET /orders/{tag}{i}") as span:
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("http.response.status_code", 200 + i % 5)
            span.set_attribute("order.ids", [i, i + 1])
            span.set_attribute("order.total", i * 1.5)
            if realistic:
                span.set_attributes(_WEB_ATTRIBUTES | {"url.full": _URL.format(i)})
            with tracer.start_as_current_span(f"SELECT orders {tag}{i}") as child:
                child.set_attribute("db.system.name", "postgresql")
                child.add_event("rows", {"count": i})
                if realistic:
                    child.set_attribute("db.query.text", _SQL)
    provider.shutdown()
    return memory.get_finished_spans()


_URL = "https://shop.example.com/api/v2/orders/{}?include=items,customer&currency=EUR"
_SQL = (
    "SELECT orders.id, orders.status, orders.total, customers.email FROM orders "
    "JOIN customers ON customers.id = orders.customer_id WHERE orders.id = $1"
)
_WEB_ATTRIBUTES: dict[str, str | int] = {
    "http.route": "/api/v2/orders/{order_id}",
    "server.address": "shop.example.com",
    "server.port": 443,
    "client.address": "203.0.113.42",
    "network.protocol.version": "1.1",
    "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
}


def make_metrics() -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("orders", "1.2.3")
    counter = meter.create_counter("orders.placed", unit="{order}")
    histogram = meter.create_histogram("http.server.request.duration", unit="s")
    updown = meter.create_up_down_counter("queue.depth")
    for region in ("eu", "us", "ap", "sa"):
        counter.add(3, {"region": region})
        histogram.record(0.25, {"http.route": f"/{region}"})
        updown.add(-2, {"region": region})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def make_logs(count: int, tag: str = "") -> Sequence[ReadableLogRecord]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("payments", "2.0")
    for i in range(count):
        logger.emit(
            LogRecord(
                body=f"payment {tag}{i} declined",
                severity_text="WARN",
                severity_number=SeverityNumber.WARN,
                attributes={"payment.id": f"p-{tag}{i}", "amount": i},
                trace_id=0x1234 + i,
                span_id=0x99 + i,
                trace_flags=1,  # type: ignore[arg-type]
            )
        )
    provider.shutdown()
    return memory.get_finished_logs()


# Sending -----------------------------------------------------------------------------
def sdk_exporters(
    transport: str, target: str, timeout: float = 10.0, **options: Any
) -> dict[str, Any]:
    """The SDK's span, metric and log exporters; ``target`` is host:port; ``options`` go to
    each exporter (``compression=...``)."""
    if transport == "grpc":
        endpoint = f"http://{target}"
        return {
            "traces": GrpcSpans(endpoint=endpoint, insecure=True, timeout=timeout, **options),
            "metrics": GrpcMetrics(endpoint=endpoint, insecure=True, timeout=timeout, **options),
            "logs": GrpcLogs(endpoint=endpoint, insecure=True, timeout=timeout, **options),
        }
    base = f"http://{target}"
    return {
        "traces": HttpSpans(endpoint=f"{base}/v1/traces", timeout=timeout, **options),
        "metrics": HttpMetrics(endpoint=f"{base}/v1/metrics", timeout=timeout, **options),
        "logs": HttpLogs(endpoint=f"{base}/v1/logs", timeout=timeout, **options),
    }


def send_all(
    transport: str,
    target: str,
    spans: Sequence[ReadableSpan] = (),
    metrics: MetricsData | None = None,
    logs: Sequence[ReadableLogRecord] = (),
    batch: int = 100,
    timeout: float = 10.0,
) -> None:
    """Export everything, ``batch`` items per request, failing on any SDK export failure."""
    exporters = sdk_exporters(transport, target, timeout)
    try:
        for start in range(0, len(spans), batch):
            result = exporters["traces"].export(list(spans[start : start + batch]))
            assert result.name == "SUCCESS", f"span export failed: {result}"
        if metrics is not None:
            result = exporters["metrics"].export(metrics)
            assert result.name == "SUCCESS", f"metric export failed: {result}"
        for start in range(0, len(logs), batch):
            result = exporters["logs"].export(list(logs[start : start + batch]))
            assert result.name == "SUCCESS", f"log export failed: {result}"
    finally:
        for exporter in exporters.values():
            exporter.shutdown()


# Reading what arrived ----------------------------------------------------------------
def read_output(path: Path) -> list[Payload]:
    """Every request the ``file`` exporter wrote so far (empty if nothing yet)."""
    if not path.exists():
        return []
    try:
        return list(iter_file(path))
    except ValueError:  # a line being written right now
        return []


def span_keys(payloads: Sequence[Payload]) -> Counter[bytes]:
    """One key per span: its resource and scope attributes and the span itself, encoded."""
    found: Counter[bytes] = Counter()
    for payload in payloads:
        for rs in getattr(payload, "resource_spans", ()):
            for ss in rs.scope_spans:
                for span in ss.spans:
                    found[_key(rs.resource, ss.scope, span)] += 1
    return found


def log_keys(payloads: Sequence[Payload]) -> Counter[bytes]:
    found: Counter[bytes] = Counter()
    for payload in payloads:
        for rl in getattr(payload, "resource_logs", ()):
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    found[_key(rl.resource, sl.scope, record)] += 1
    return found


def point_keys(payloads: Sequence[Payload]) -> Counter[bytes]:
    found: Counter[bytes] = Counter()
    for payload in payloads:
        for rm in getattr(payload, "resource_metrics", ()):
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    shape = metric.name.encode() + b"|" + kind.encode()
                    for point in data.data_points:
                        found[_key(rm.resource, sm.scope, point) + b"|" + shape] += 1
    return found


def expected_spans(spans: Sequence[ReadableSpan]) -> Counter[bytes]:
    return span_keys([encode_spans(spans)])


def expected_logs(logs: Sequence[ReadableLogRecord]) -> Counter[bytes]:
    return log_keys([encode_logs(logs)])


def expected_points(metrics: MetricsData) -> Counter[bytes]:
    return point_keys([encode_metrics(metrics)])


def _key(resource: Any, scope: Any, item: Any) -> bytes:
    return b"|".join(m.SerializeToString(deterministic=True) for m in (resource, scope, item))


# Waiting -----------------------------------------------------------------------------
def wait_until(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape(port: int) -> str:
    """The collector's self-telemetry, Prometheus text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total
