"""The OpenTelemetry SDK's own OTLP exporters deliver everything to the receiver intact."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.errors import OverloadedError, RetryableError
from tests.collector.e2e.clients import make_logs, make_metrics, make_spans, sdk_exporters
from tests.collector.receivers.harness import RunningReceiver, running_receiver

TRANSPORTS = ["grpc", "http"]


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(kvs: list[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


def received_spans(running: RunningReceiver) -> dict[tuple[bytes, bytes], Any]:
    spans = {}
    for request in running.consumers[Signal.TRACES].payloads:
        assert isinstance(request, ExportTraceServiceRequest)
        for rs in request.resource_spans:
            assert attributes(rs.resource.attributes)["service.name"] == "checkout"
            for ss in rs.scope_spans:
                assert (ss.scope.name, ss.scope.version) == ("orders", "1.2.3")
                for span in ss.spans:
                    spans[(span.trace_id, span.span_id)] = span
    return spans


@pytest.fixture(scope="module")
def receiver() -> Any:
    with running_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_consumers(receiver: RunningReceiver) -> None:
    for consumer in receiver.consumers.values():
        consumer.payloads.clear()
        consumer.refuse_next.clear()


def _exporters(transport: str, receiver: RunningReceiver, **options: Any) -> dict[str, Any]:
    target = receiver.grpc_target if transport == "grpc" else receiver.http_target
    return sdk_exporters(transport, target, timeout=10, **options)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_sdk_span_arrives_with_ids_parents_and_attributes(
    receiver: RunningReceiver, transport: str
) -> None:
    sent = make_spans(40)
    exporter = _exporters(transport, receiver)["traces"]
    try:
        assert exporter.export(sent) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    got = received_spans(receiver)
    assert len(got) == len(sent) == 80
    for span in sent:
        key = (span.context.trace_id.to_bytes(16, "big"), span.context.span_id.to_bytes(8, "big"))
        received = got[key]
        assert received.name == span.name
        assert received.parent_span_id == (
            span.parent.span_id.to_bytes(8, "big") if span.parent else b""
        )
        assert received.start_time_unix_nano == span.start_time
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()}
        assert attributes(received.attributes) == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_sdk_metric_point_arrives_with_its_attributes(
    receiver: RunningReceiver, transport: str
) -> None:
    exporter = _exporters(transport, receiver)["metrics"]
    try:
        assert exporter.export(make_metrics()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()

    points: dict[tuple[str, str], Any] = {}
    for request in receiver.consumers[Signal.METRICS].payloads:
        assert isinstance(request, ExportMetricsServiceRequest)
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        label = next(iter(attributes(point.attributes).values()))
                        points[(metric.name, label)] = point
    assert {name for name, _ in points} == {
        "orders.placed",
        "http.server.request.duration",
        "queue.depth",
    }
    assert {points[("queue.depth", r)].as_int for r in ("eu", "us", "ap", "sa")} == {-2}
    assert {points[("orders.placed", r)].as_int for r in ("eu", "us", "ap")} == {3}
    for route in ("/eu", "/us", "/ap"):
        histogram = points[("http.server.request.duration", route)]
        assert (histogram.count, histogram.sum) == (1, 0.25)
    assert receiver.accepted(Signal.METRICS, transport) >= 6


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_sdk_log_record_arrives_with_body_and_attributes(
    receiver: RunningReceiver, transport: str
) -> None:
    sent = make_logs(25)
    exporter = _exporters(transport, receiver)["logs"]
    try:
        assert exporter.export(sent) is LogRecordExportResult.SUCCESS
    finally:
        exporter.shutdown()

    records = [
        record
        for request in receiver.consumers[Signal.LOGS].payloads
        if isinstance(request, ExportLogsServiceRequest)
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]
    assert [r.body.string_value for r in records] == [f"payment {i} declined" for i in range(25)]
    assert [attributes(r.attributes)["payment.id"] for r in records] == [
        f"p-{i}" for i in range(25)
    ]
    assert {r.severity_text for r in records} == {"WARN"}


@pytest.mark.parametrize(
    ("transport", "compression"),
    [("grpc", grpc.Compression.Gzip), ("http", Compression.Gzip)],
)
def test_gzip_compressed_sdk_exports_arrive(
    receiver: RunningReceiver, transport: str, compression: Any
) -> None:
    sent = make_spans(10)
    exporter = _exporters(transport, receiver, compression=compression)["traces"]
    try:
        assert exporter.export(sent) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(received_spans(receiver)) == 20


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("error", [RetryableError, OverloadedError])
def test_sdk_retries_refused_batches_until_the_pipeline_takes_them(
    receiver: RunningReceiver, transport: str, error: type[RetryableError]
) -> None:
    consumer = receiver.consumers[Signal.TRACES]
    consumer.refuse_next.extend([error("queue is full", retry_after=0.2)] * 2)
    refused_before = receiver.refused(Signal.TRACES, transport)
    sent = make_spans(5)
    exporter = _exporters(transport, receiver)["traces"]
    try:
        assert exporter.export(sent) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    assert not consumer.refuse_next, "the SDK should have been refused twice"
    assert len(received_spans(receiver)) == 10
    assert receiver.refused(Signal.TRACES, transport) - refused_before == 20
