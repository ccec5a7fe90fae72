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


# Poison: items some exporter cannot export as they are, among valid ones ---------------------
def poisoned_metrics() -> tuple[ExportMetricsServiceRequest, int, int]:
    """A request of valid points and points Prometheus cannot take (exponential histograms
    with scale -100 and offset 2**31-1, NaN or unsorted bounds, a NaN quantile, a metric
    name without letters); returns it with (valid points, invalid points)."""
    request = metrics([3, 4], prefix="ok")
    sm = request.resource_metrics[0].scope_metrics[0]
    good = sm.metrics.add(name="latency", unit="s")
    point = good.exponential_histogram.data_points.add(scale=3, count=3, time_unix_nano=5)
    point.positive.bucket_counts.extend([1, 2])
    for scale, offset in ((-100, 0), (0, 2**31 - 1), (100, -(2**31))):
        bad = sm.metrics.add(name=f"bad.exp.{scale}.{offset}", unit="s")
        dp = bad.exponential_histogram.data_points.add(scale=scale, count=2, time_unix_nano=5)
        dp.positive.offset = offset
        dp.positive.bucket_counts.extend([1, 1])
    for bounds in ([float("nan")], [5.0, 1.0]):
        hist = sm.metrics.add(name="bad.bounds").histogram.data_points.add(
            count=2, time_unix_nano=5
        )
        hist.explicit_bounds.extend(bounds)
        hist.bucket_counts.extend([1] * (len(bounds) + 1))
    summary = sm.metrics.add(name="bad.summary").summary.data_points.add(count=1, time_unix_nano=5)
    summary.quantile_values.add(quantile=float("nan"), value=1.0)
    sm.metrics.add(name="...").gauge.data_points.add(as_int=1, time_unix_nano=5)
    return request, 3 + 4 + 1, 7


def poisoned_traces() -> tuple[ExportTraceServiceRequest, int]:
    """Spans with odd but encodable values, and one whose trace ID is 20 bytes (no OTLP/JSON
    form, and a whole request the upstream collector refuses); returns (request, that span's
    index)."""
    request = traces([[30]])
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[3].attributes.add(key="nan").value.double_value = float("nan")
    spans[4].start_time_unix_nano = 2**64 - 1
    spans[5].name = "\x00\u202e\ud7ff" * 100
    spans[11].trace_id = b"\x01" * 20
    return request, 11
