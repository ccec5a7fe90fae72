"""The three OTLP signals and the request messages that carry them.

Pipelines move whole ``Export*ServiceRequest`` messages, as the upstream collector
moves pdata: no per-item conversion on the hot path.
"""

from __future__ import annotations

from enum import StrEnum

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

Payload = ExportTraceServiceRequest | ExportMetricsServiceRequest | ExportLogsServiceRequest


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    @property
    def request_type(
        self,
    ) -> type[ExportTraceServiceRequest | ExportMetricsServiceRequest | ExportLogsServiceRequest]:
        return _REQUEST_TYPES[self]

    @property
    def item_name(self) -> str:
        """The unit the upstream collector counts this signal in (its metric name suffix)."""
        return _ITEM_NAMES[self]

    def new_request(self) -> Payload:
        return _REQUEST_TYPES[self]()


_REQUEST_TYPES: dict[Signal, type[Payload]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}
_ITEM_NAMES = {Signal.TRACES: "spans", Signal.METRICS: "metric_points", Signal.LOGS: "log_records"}


def signal_of(payload: Payload) -> Signal:
    if isinstance(payload, ExportTraceServiceRequest):
        return Signal.TRACES
    if isinstance(payload, ExportMetricsServiceRequest):
        return Signal.METRICS
    return Signal.LOGS


def count_items(payload: Payload) -> int:
    """Spans, metric data points or log records in a request."""
    if isinstance(payload, ExportTraceServiceRequest):
        return sum(len(ss.spans) for rs in payload.resource_spans for ss in rs.scope_spans)
    if isinstance(payload, ExportLogsServiceRequest):
        return sum(len(sl.log_records) for rl in payload.resource_logs for sl in rl.scope_logs)
    return sum(
        _count_points(m)
        for rm in payload.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


def _count_points(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0
    return len(getattr(metric, kind).data_points)
