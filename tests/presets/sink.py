"""A small in-test OTLP/gRPC sink: stores every export request it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {item.key: value_of(item.value) for item in items}


@dataclass
class Span:
    resource: dict[str, Any]
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    events: list[tuple[str, dict[str, Any]]]
    trace_state: str = ""
    start_ns: int = 0
    end_ns: int = 0


@dataclass
class Log:
    resource: dict[str, Any]
    body: Any
    severity_text: str
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass
class Point:
    resource: dict[str, Any]
    metric: str
    attributes: dict[str, Any]


class Received:
    """Export requests (protobuf messages), read back as flat spans, logs and points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trace_requests: list[Any] = []
        self.metric_requests: list[Any] = []
        self.log_requests: list[Any] = []
        # id(request) -> the client connection it came over, and its gRPC metadata
        self.peers: dict[int, str] = {}
        self.metadata: dict[int, dict[str, str]] = {}

    @classmethod
    def of(cls, payloads: Iterable[Any]) -> Received:
        received = cls()
        for payload in payloads:
            if isinstance(payload, trace_service_pb2.ExportTraceServiceRequest):
                received.trace_requests.append(payload)
            elif isinstance(payload, metrics_service_pb2.ExportMetricsServiceRequest):
                received.metric_requests.append(payload)
            else:
                received.log_requests.append(payload)
        return received

    def spans(self) -> list[Span]:
        with self._lock:
            requests = list(self.trace_requests)
        return [
            Span(
                resource,
                span.name,
                span.kind,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                attributes(span.attributes),
                span.status.code,
                [(event.name, attributes(event.attributes)) for event in span.events],
                span.trace_state,
                span.start_time_unix_nano,
                span.end_time_unix_nano,
            )
            for resource, span in _walk(requests, "resource_spans", "scope_spans", "spans")
        ]

    def logs(self) -> list[Log]:
        with self._lock:
            requests = list(self.log_requests)
        return [
            Log(
                resource,
                value_of(record.body),
                record.severity_text,
                record.trace_id.hex(),
                record.span_id.hex(),
                attributes(record.attributes),
            )
            for resource, record in _walk(requests, "resource_logs", "scope_logs", "log_records")
        ]

    def metric_points(self) -> list[Point]:
        with self._lock:
            requests = list(self.metric_requests)
        points = []
        for resource, metric in _walk(requests, "resource_metrics", "scope_metrics", "metrics"):
            data = getattr(metric, metric.WhichOneof("data"))
            points.extend(
                Point(resource, metric.name, attributes(point.attributes))
                for point in data.data_points
            )
        return points

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


class OtlpSink(Received):
    """A gRPC OTLP receiver in the test process."""

    def __init__(self) -> None:
        super().__init__()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        sink = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._store(sink.trace_requests, request, context)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._store(sink.metric_requests, request, context)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._store(sink.log_requests, request, context)
                return logs_service_pb2.ExportLogsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _store(self, into: list[Any], request: Any, context: Any) -> None:
        with self._lock:
            into.append(request)
            self.peers[id(request)] = context.peer()
            self.metadata[id(request)] = dict(context.invocation_metadata())

    def clear(self) -> None:
        with self._lock:
            self.trace_requests.clear()
            self.metric_requests.clear()
            self.log_requests.clear()
            self.peers.clear()
            self.metadata.clear()

    def stop(self) -> None:
        self.server.stop(0)


def _walk(
    requests: list[Any], outer: str, middle: str, inner: str
) -> Iterator[tuple[dict[str, Any], Any]]:
    for request in requests:
        for resource_block in getattr(request, outer):
            resource = attributes(resource_block.resource.attributes)
            for scope_block in getattr(resource_block, middle):
                for item in getattr(scope_block, inner):
                    yield resource, item


__all__ = ["KeyValue", "OtlpSink"]
