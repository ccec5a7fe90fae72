"""Build OTLP export requests for in-process component tests."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelkit.collector.pdata.signals import Payload, Signal


def attr(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def traces(shape: Sequence[Sequence[int]], prefix: str = "s") -> ExportTraceServiceRequest:
    """``shape[r][s]`` spans in scope ``s`` of resource ``r``; span names are unique."""
    request = ExportTraceServiceRequest()
    for r, scopes in enumerate(shape):
        rs = request.resource_spans.add(schema_url=f"res-schema-{r}")
        rs.resource.attributes.append(attr("service.name", f"svc-{prefix}{r}"))
        for s, count in enumerate(scopes):
            ss = rs.scope_spans.add(schema_url=f"scope-schema-{s}")
            ss.scope.name = f"scope-{r}-{s}"
            for i in range(count):
                span = ss.spans.add(name=f"{prefix}{r}.{s}.{i}")
                span.trace_id = bytes([r + 1] * 16)
                span.span_id = (r * 1000 + s * 100 + i + 1).to_bytes(8, "big")
    return request


def logs(shape: Sequence[Sequence[int]], prefix: str = "l") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for r, scopes in enumerate(shape):
        rl = request.resource_logs.add()
        rl.resource.attributes.append(attr("service.name", f"svc-{prefix}{r}"))
        for s, count in enumerate(scopes):
            sl = rl.scope_logs.add()
            sl.scope.name = f"scope-{r}-{s}"
            for i in range(count):
                sl.log_records.add().body.string_value = f"{prefix}{r}.{s}.{i}"
    return request


def metrics(points_per_metric: Sequence[int], prefix: str = "m") -> ExportMetricsServiceRequest:
    """One resource and scope; metric ``k`` is a monotonic sum with the given point count."""
    request = ExportMetricsServiceRequest()
    sm = request.resource_metrics.add().scope_metrics.add()
    sm.scope.name = "meter"
    for k, count in enumerate(points_per_metric):
        metric = sm.metrics.add(name=f"{prefix}{k}", unit="1")
        metric.sum.is_monotonic = True
        metric.sum.aggregation_temporality = 2
        for i in range(count):
            metric.sum.data_points.add(as_int=i, time_unix_nano=i + 1)
    return request


def item_names(payload: Payload) -> list[str]:
    """Span names, log bodies, or ``metric:point`` labels, in order."""
    if isinstance(payload, ExportTraceServiceRequest):
        return [s.name for rs in payload.resource_spans for ss in rs.scope_spans for s in ss.spans]
    if isinstance(payload, ExportLogsServiceRequest):
        return [
            r.body.string_value
            for rl in payload.resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
        ]
    return [
        f"{m.name}:{p.as_int}"
        for rm in payload.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.sum.data_points
    ]


def new_request(signal: Signal) -> Payload:
    return signal.new_request()
