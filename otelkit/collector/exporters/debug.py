"""``debug``: logs what reaches it, as the upstream ``debug`` exporter does.

``verbosity: basic`` (the default) logs one summary line per batch
(``TracesExporter: 1 resource spans, 512 spans``); ``normal`` adds about one line per
span, data point or log record; ``detailed`` logs every field of every item, laid out as
upstream does. Output goes through the ``logging`` module at INFO, on the logger
``otelkit.exporter.<id>`` (``use_internal_logger: false`` prints to standard output
instead). ``sampling_initial`` / ``sampling_thereafter`` thin the output as upstream:
in each second the first ``sampling_initial`` batches are logged, then every
``sampling_thereafter``-th one.

The output format is for people, not programs, and may change; use the ``file``
exporter for something to parse. Rendering ``normal`` and ``detailed`` output runs on a
worker thread, so large batches do not hold up the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.runtime.component import CreateSettings, exporter_factory
from otelkit.collector.runtime.exporterhelper import (
    ExporterHelperConfig,
    QueuedExporter,
    QueueSettings,
)
from otelkit.collector.runtime.listeners import Destination

INDENT = "     -> "
_SPAN_KINDS = ["Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"]
_STATUS_CODES = ["Unset", "Ok", "Error"]
_TEMPORALITIES = ["Unspecified", "Delta", "Cumulative"]
_SEVERITIES = ["Unspecified", *(f"{level}{n if n > 1 else ''}" for level in
               ("Trace", "Debug", "Info", "Warn", "Error", "Fatal") for n in range(1, 5))]  # fmt: skip
_DATA_TYPES = {"gauge": "Gauge", "sum": "Sum", "histogram": "Histogram",
               "exponential_histogram": "ExponentialHistogram", "summary": "Summary"}  # fmt: skip


class DebugQueueSettings(QueueSettings):
    num_consumers: int = Field(1, ge=1, le=1000, description="1 logs batches in arrival order.")


class DebugExporterConfig(ExporterHelperConfig):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = Field(2, ge=1, description="Batches logged each second in full.")
    sampling_thereafter: int = Field(1, ge=1, description="Then every Nth; 1 logs them all.")
    use_internal_logger: bool = Field(True, description="False prints to standard output.")
    sending_queue: DebugQueueSettings = DebugQueueSettings()


class Sampler:
    """Per second: the first ``initial`` events pass, then every ``thereafter``-th."""

    def __init__(
        self, initial: int, thereafter: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.initial, self.thereafter, self.clock = initial, thereafter, clock
        self._second = -1
        self._seen = 0

    def allow(self) -> bool:
        second = int(self.clock())
        if second != self._second:
            self._second, self._seen = second, 0
        self._seen += 1
        beyond = self._seen - self.initial
        return beyond <= 0 or beyond % self.thereafter == 0


class DebugExporter(QueuedExporter):
    def __init__(self, settings: CreateSettings, config: DebugExporterConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self.logger = logging.getLogger(f"otelkit.exporter.{settings.id}")
        self.sampler = Sampler(config.sampling_initial, config.sampling_thereafter)

    def destinations(self) -> list[Destination]:
        where = "the collector's log" if self.config.use_internal_logger else "standard output"
        return [Destination(f"{self.config.verbosity}-verbosity summaries", where)]

    async def send(self, payload: Payload) -> None:
        if not self.sampler.allow():
            return
        self._emit(summary(payload))
        if self.config.verbosity != "basic":
            render = normal_lines if self.config.verbosity == "normal" else detailed_lines
            text = await asyncio.to_thread(lambda: "\n".join(render(payload)))
            if text:
                self._emit(text)

    def _emit(self, text: str) -> None:
        if self.config.use_internal_logger:
            self.logger.info("%s", text)
        else:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


# Summaries (basic) --------------------------------------------------------------------
def summary(payload: Payload) -> str:
    if isinstance(payload, ExportMetricsServiceRequest):
        metrics = sum(len(sm.metrics) for rm in payload.resource_metrics for sm in rm.scope_metrics)
        return (
            f"MetricsExporter: {len(payload.resource_metrics)} resource metrics, "
            f"{metrics} metrics, {count_items(payload)} data points"
        )
    if isinstance(payload, ExportLogsServiceRequest):
        return (
            f"LogsExporter: {len(payload.resource_logs)} resource logs, "
            f"{count_items(payload)} log records"
        )
    return (
        f"TracesExporter: {len(payload.resource_spans)} resource spans, "
        f"{count_items(payload)} spans"
    )


# One line per item (normal) -------------------------------------------------------------
def normal_lines(payload: Payload) -> Iterator[str]:
    if isinstance(payload, ExportMetricsServiceRequest):
        for rm in payload.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    yield from _metric_lines(metric)
    elif isinstance(payload, ExportLogsServiceRequest):
        for rl in payload.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    parts = [any_value_text(record.body), _flat(record.attributes)]
                    yield " ".join(filter(None, parts)) or "(empty)"
    else:
        for rs in payload.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield " ".join(filter(None, [span.name, span.trace_id.hex(),
                                                 span.span_id.hex(), _flat(span.attributes)]))  # fmt: skip


def _metric_lines(metric: Metric) -> Iterator[str]:
    kind = metric.WhichOneof("data")
    if kind is None:
        yield f"{metric.name} (no data)"
        return
    for point in getattr(metric, kind).data_points:
        labels = ",".join(f"{kv.key}={any_value_text(kv.value)}" for kv in point.attributes)
        yield f"{metric.name}{{{labels}}} {_point_value(kind, point)}"


def _point_value(kind: str, point: Any) -> str:
    if kind in ("gauge", "sum"):
        return _number(point)
    parts = [f"count={point.count}", f"sum={_float(point.sum)}"]
    if kind == "summary":
        parts += [f"q{_float(q.quantile)}={_float(q.value)}" for q in point.quantile_values]
        return " ".join(parts)
    parts += [f"{name}={_float(getattr(point, name))}" for name in ("min", "max")
              if point.HasField(name)]  # fmt: skip
    return " ".join(parts)


def _flat(attributes: Iterable[KeyValue]) -> str:
    return " ".join(f"{kv.key}={any_value_text(kv.value)}" for kv in attributes)


# Every field (detailed) -----------------------------------------------------------------
def detailed_lines(payload: Payload) -> Iterator[str]:
    if isinstance(payload, ExportMetricsServiceRequest):
        for i, rm in enumerate(payload.resource_metrics):
            yield from _resource("ResourceMetrics", i, rm.resource, rm.schema_url)
            for j, sm in enumerate(rm.scope_metrics):
                yield from _scope("ScopeMetrics", j, sm.scope, sm.schema_url)
                for k, metric in enumerate(sm.metrics):
                    yield from _metric(k, metric)
    elif isinstance(payload, ExportLogsServiceRequest):
        for i, rl in enumerate(payload.resource_logs):
            yield from _resource("ResourceLog", i, rl.resource, rl.schema_url)
            for j, sl in enumerate(rl.scope_logs):
                yield from _scope("ScopeLogs", j, sl.scope, sl.schema_url)
                for k, record in enumerate(sl.log_records):
                    yield from _log_record(k, record)
    else:
        for i, rs in enumerate(payload.resource_spans):
            yield from _resource("ResourceSpans", i, rs.resource, rs.schema_url)
            for j, ss in enumerate(rs.scope_spans):
                yield from _scope("ScopeSpans", j, ss.scope, ss.schema_url)
                for k, span in enumerate(ss.spans):
                    yield from _span(k, span)


def _resource(title: str, index: int, resource: Resource, schema_url: str) -> Iterator[str]:
    yield f"{title} #{index}"
    yield f"Resource SchemaURL: {schema_url}"
    yield from _attributes("Resource attributes", resource.attributes)


def _scope(title: str, index: int, scope: InstrumentationScope, schema_url: str) -> Iterator[str]:
    yield f"{title} #{index}"
    yield f"{title} SchemaURL: {schema_url}"
    yield f"InstrumentationScope {scope.name} {scope.version}".rstrip()
    yield from _attributes("InstrumentationScope attributes", scope.attributes)


def _span(index: int, span: Span) -> Iterator[str]:
    yield f"Span #{index}"
    fields = [
        ("Trace ID", span.trace_id.hex()),
        ("Parent ID", span.parent_span_id.hex()),
        ("ID", span.span_id.hex()),
        ("Name", span.name),
        ("Kind", _enum_name(_SPAN_KINDS, span.kind)),
        ("TraceState", span.trace_state),
        ("Flags", str(span.flags)),
        ("Start time", timestamp(span.start_time_unix_nano)),
        ("End time", timestamp(span.end_time_unix_nano)),
        ("Status code", _enum_name(_STATUS_CODES, span.status.code)),
        ("Status message", span.status.message),
        ("DroppedAttributesCount", str(span.dropped_attributes_count)),
        ("DroppedEventsCount", str(span.dropped_events_count)),
        ("DroppedLinksCount", str(span.dropped_links_count)),
    ]
    for label, value in fields:
        yield f"    {label:<15}: {value}".rstrip()
    yield from _attributes("Attributes", span.attributes)
    if span.events:
        yield "Events:"
    for i, event in enumerate(span.events):
        yield f"SpanEvent #{i}"
        yield f"{INDENT}Name: {event.name}"
        yield f"{INDENT}Timestamp: {timestamp(event.time_unix_nano)}"
        yield f"{INDENT}DroppedAttributesCount: {event.dropped_attributes_count}"
        yield from _nested_attributes(event.attributes)
    if span.links:
        yield "Links:"
    for i, link in enumerate(span.links):
        yield f"SpanLink #{i}"
        yield f"{INDENT}Trace ID: {link.trace_id.hex()}"
        yield f"{INDENT}ID: {link.span_id.hex()}"
        yield f"{INDENT}TraceState: {link.trace_state}"
        yield f"{INDENT}Flags: {link.flags}"
        yield f"{INDENT}DroppedAttributesCount: {link.dropped_attributes_count}"
        yield from _nested_attributes(link.attributes)


def _log_record(index: int, record: LogRecord) -> Iterator[str]:
    yield f"LogRecord #{index}"
    yield f"ObservedTimestamp: {timestamp(record.observed_time_unix_nano)}"
    yield f"Timestamp: {timestamp(record.time_unix_nano)}"
    yield f"SeverityText: {record.severity_text}"
    severity = _enum_name(_SEVERITIES, record.severity_number)
    yield f"SeverityNumber: {severity}({record.severity_number})"
    if record.event_name:
        yield f"EventName: {record.event_name}"
    yield f"Body: {any_value_detail(record.body)}"
    yield from _attributes("Attributes", record.attributes)
    yield f"Trace ID: {record.trace_id.hex()}"
    yield f"Span ID: {record.span_id.hex()}"
    yield f"Flags: {record.flags}"
    yield f"DroppedAttributesCount: {record.dropped_attributes_count}"


def _metric(index: int, metric: Metric) -> Iterator[str]:
    kind = metric.WhichOneof("data")
    yield f"Metric #{index}"
    yield "Descriptor:"
    yield f"{INDENT}Name: {metric.name}"
    yield f"{INDENT}Description: {metric.description}"
    yield f"{INDENT}Unit: {metric.unit}"
    yield f"{INDENT}DataType: {_DATA_TYPES.get(kind or '', 'Empty')}"
    if kind is None:
        return
    data = getattr(metric, kind)
    if kind == "sum":
        yield f"{INDENT}IsMonotonic: {str(data.is_monotonic).lower()}"
    if kind in ("sum", "histogram", "exponential_histogram"):
        temporality = _enum_name(_TEMPORALITIES, data.aggregation_temporality)
        yield f"{INDENT}AggregationTemporality: {temporality}"
    yield from _attributes("Metadata", metric.metadata)
    title = {"gauge": "NumberDataPoints", "sum": "NumberDataPoints",
             "histogram": "HistogramDataPoints", "summary": "SummaryDataPoints",
             "exponential_histogram": "ExponentialHistogramDataPoints"}[kind]  # fmt: skip
    for i, point in enumerate(data.data_points):
        yield f"{title} #{i}"
        yield from _attributes("Data point attributes", point.attributes)
        yield f"StartTimestamp: {timestamp(point.start_time_unix_nano)}"
        yield f"Timestamp: {timestamp(point.time_unix_nano)}"
        yield from _point_detail(kind, point)
        if point.flags:
            yield f"Flags: {point.flags}"
        yield from _exemplars(getattr(point, "exemplars", ()))


def _point_detail(kind: str, point: Any) -> Iterator[str]:
    if kind in ("gauge", "sum"):
        yield f"Value: {_number(point)}"
        return
    yield f"Count: {point.count}"
    if kind == "summary" or point.HasField("sum"):
        yield f"Sum: {_float(point.sum)}"
    if kind == "summary":
        for i, q in enumerate(point.quantile_values):
            yield f"QuantileValue #{i}: Quantile {_float(q.quantile)}, Value {_float(q.value)}"
        return
    for name in ("min", "max"):
        if point.HasField(name):
            yield f"{name.capitalize()}: {_float(getattr(point, name))}"
    if kind == "histogram":
        for i, bound in enumerate(point.explicit_bounds):
            yield f"ExplicitBounds #{i}: {_float(bound)}"
        for i, count in enumerate(point.bucket_counts):
            yield f"Buckets #{i}, Count: {count}"
        return
    yield f"Scale: {point.scale}"
    yield f"ZeroCount: {point.zero_count}"
    yield f"ZeroThreshold: {_float(point.zero_threshold)}"
    for side in ("positive", "negative"):
        buckets = getattr(point, side)
        counts = ", ".join(str(c) for c in buckets.bucket_counts)
        yield f"{side.capitalize()} buckets: offset {buckets.offset}, counts [{counts}]"


def _exemplars(exemplars: Iterable[Exemplar]) -> Iterator[str]:
    items = list(exemplars)
    if items:
        yield "Exemplars:"
    for i, exemplar in enumerate(items):
        yield f"Exemplar #{i}"
        yield f"{INDENT}Trace ID: {exemplar.trace_id.hex()}"
        yield f"{INDENT}Span ID: {exemplar.span_id.hex()}"
        yield f"{INDENT}Timestamp: {timestamp(exemplar.time_unix_nano)}"
        yield f"{INDENT}Value: {_number(exemplar)}"
        yield from _nested_attributes(exemplar.filtered_attributes, "FilteredAttributes")


def _attributes(title: str, attributes: Iterable[KeyValue]) -> Iterator[str]:
    items = list(attributes)
    if items:
        yield f"{title}:"
    for kv in items:
        yield f"{INDENT}{kv.key}: {any_value_detail(kv.value)}"


def _nested_attributes(attributes: Iterable[KeyValue], title: str = "Attributes") -> Iterator[str]:
    items = list(attributes)
    if items:
        yield f"{INDENT}{title}:"
    for kv in items:
        yield f"          -> {kv.key}: {any_value_detail(kv.value)}"


# Values ---------------------------------------------------------------------------------
def any_value_detail(value: AnyValue) -> str:
    """``Str(text)``, ``Int(3)``, ``Slice([...])``, ``Map({...})`` ... as upstream."""
    kind = value.WhichOneof("value")
    names = {"string_value": "Str", "bool_value": "Bool", "int_value": "Int",
             "double_value": "Double", "bytes_value": "Bytes", "array_value": "Slice",
             "kvlist_value": "Map"}  # fmt: skip
    if kind not in names:
        return "Empty()"
    return f"{names[kind]}({any_value_text(value)})"


def _number(point: Any) -> str:
    return str(point.as_int) if point.WhichOneof("value") == "as_int" else _float(point.as_double)


def _float(value: float) -> str:
    return f"{value:.6f}"


def _enum_name(names: list[str], number: int) -> str:
    return names[number] if 0 <= number < len(names) else str(number)


def timestamp(unix_nano: int) -> str:
    """``2018-12-13 14:51:00.5 +0000 UTC``, as Go prints a time."""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{text}{fraction} +0000 UTC"


def _create(
    settings: CreateSettings, config: DebugExporterConfig, signals: frozenset[Signal]
) -> DebugExporter:
    return DebugExporter(settings, config)


factory = exporter_factory("debug", DebugExporterConfig, _create, frozenset(Signal))
