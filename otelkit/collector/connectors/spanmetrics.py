"""``spanmetrics``: RED metrics from spans (traces in, metrics out).

Per service, span name, span kind and status code, plus configured dimensions looked up
on the span, then the resource, then the dimension's default, it keeps:

* ``traces.span.metrics.calls`` — a monotonic sum (``traces_span_metrics_calls_total``);
* ``traces.span.metrics.duration`` — an explicit-bucket histogram in ms or s
  (``traces_span_metrics_duration_milliseconds``), upstream's default buckets;

and sends them downstream as one ``ExportMetricsServiceRequest`` every
``metrics_flush_interval``. Keys are the upstream connector's. Choices where otelkit
differs from upstream, on purpose:

* ``metrics_flush_interval`` defaults to 15s (upstream: 60s) so dashboards built on
  ``rate(...[1m])`` see several points per window.
* ``metrics_expiration`` defaults to 5m (upstream: never): series of routes or services
  that go quiet are dropped, so memory follows live traffic, not history.
* ``aggregation_cardinality_limit`` defaults to 10000 series per resource (upstream:
  unlimited). New series past the limit fold into one series per resource labelled
  ``otel.metric.overflow="true"`` (``otel_metric_overflow`` in Prometheus); the spans
  folded are counted in ``otelcol_connector_spanmetrics_overflow_spans_total``.
* Head-sampled spans are counted as the spans they stand for. A span whose W3C
  ``tracestate`` carries OpenTelemetry's consistent-probability threshold (``ot=th:c``:
  kept with probability p = 1 - T/2^56) adds 1/p (its adjusted count) to the calls, the
  histogram's count and bucket, and 1/p times its duration to the sum; ``th:0`` or no
  ``th`` is 1. OTLP histogram counts are integers, so counts are reported rounded per
  bucket (calls are their sum, equal to the histogram's count; under delta temporality
  the unreported fraction carries to the next flush). A malformed ``th`` counts once,
  is counted in ``otelcol_connector_spanmetrics_malformed_threshold_spans`` and logged
  the first time. Upstream's connector counts every span once.
* Raw URLs and query text never become labels: ``url.full``, ``http.url``,
  ``http.target``, ``url.path``, ``url.query``, ``db.statement``, ``db.query.text`` and
  similar are refused as dimensions at configuration time (use ``http.route`` and
  ``db.operation.name``), and span names lose any query string and ``scheme://host``
  before they are used.

Spans are counted a ``ScopeSpans`` at a time, from its serialised form (one C-level
call): upb parses those bytes again through two shadow message types, one that gives the
name, kind, start and end times and status of every span as columns, one that gives each
span's bytes, so no Python object is made per span or per attribute. Configured
dimensions are found with ``bytes.find`` in the spans' bytes and decoded only when they
make a new series; a status is decoded once per distinct value, a trace state parsed once
per distinct value; trace and span IDs are read only when an exemplar slot is free.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from operator import attrgetter, mul, sub
from typing import Any, Literal, cast

from google.protobuf import descriptor_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from pydantic import Field, field_validator, model_validator

from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.pdata.tracestate import MalformedThresholdError, adjusted_count
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.pdata.wire import key_pattern, raw_value_at, shadow_classes
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Connector,
    Consumer,
    CreateSettings,
    Host,
    connector_factory,
)
from otelkit.collector.runtime.errors import ComponentError, PermanentError
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.spanmetrics")

DEFAULT_BUCKETS_MS = (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000,
                      15000)  # fmt: skip
REFUSED_DIMENSIONS = frozenset({
    "url.full", "url.original", "url.path", "url.query", "url.fragment", "http.url",
    "http.target", "db.statement", "db.query.text", "db.query.parameter",
    "exception.message", "exception.stacktrace",
})  # fmt: skip
DEFAULT_DIMENSIONS = ("service.name", "span.name", "span.kind", "status.code")
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
SCOPE_NAME = "otelkit.connectors.spanmetrics"
_SPAN_KINDS = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
               "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")  # fmt: skip
_STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")
Temporality = Literal["AGGREGATION_TEMPORALITY_CUMULATIVE", "AGGREGATION_TEMPORALITY_DELTA"]
_CUMULATIVE: Temporality = "AGGREGATION_TEMPORALITY_CUMULATIVE"
_DELTA: Temporality = "AGGREGATION_TEMPORALITY_DELTA"
_BUILD_CHUNK = 1000
_ATTRIBUTE_TAG = 0x4A  # Span.attributes: field 9, length-delimited
_STATUS_CODE = attrgetter("status.code")
_TRACE_STATE = attrgetter("trace_state")
_WEIGHTS_CACHED = 1024  # distinct trace states whose adjusted count is remembered
_CACHED_TRACE_STATE_CHARS = 512  # the W3C limit; longer ones are parsed every time
_SHADOW_PACKAGE = "otelkit.spanmetrics"
_STATUS_CODES_CACHED = 1024  # distinct serialised statuses whose code is remembered


# Shadow readings of a serialised ScopeSpans ------------------------------------------------
def _shadow_classes() -> tuple[Any, Any]:
    """Two message types that read a serialised ``ScopeSpans`` in C, without a Python
    object per span:

    * ``SpanColumns`` declares ``spans`` as one message rather than a repeated one, so the
      parser merges every span into it and each field of ``Columns`` holds that field of
      every span that sets it, in order (a field at its default value is absent from the
      bytes, so a column is used only when it has an entry for every span);
    * ``SpanBytes`` declares ``spans`` as ``repeated bytes``: each span's wire bytes.
    """
    f = descriptor_pb2.FieldDescriptorProto
    columns = [
        (name, number, kind, f.LABEL_REPEATED, "")
        for name, number, kind in (
            ("trace_state", 3, f.TYPE_STRING),
            ("name", 5, f.TYPE_STRING),
            ("kind", 6, f.TYPE_INT32),
            ("start_time_unix_nano", 7, f.TYPE_FIXED64),
            ("end_time_unix_nano", 8, f.TYPE_FIXED64),
            ("status", 15, f.TYPE_BYTES),
        )
    ]
    classes = shadow_classes(
        _SHADOW_PACKAGE,
        {
            "Columns": columns,
            "SpanColumns": [("spans", 2, f.TYPE_MESSAGE, f.LABEL_OPTIONAL, "Columns")],
            "SpanBytes": [("spans", 2, f.TYPE_BYTES, f.LABEL_REPEATED, "")],
        },
    )
    return classes["SpanColumns"], classes["SpanBytes"]


_SPAN_COLUMNS, _SPAN_BYTES = _shadow_classes()


# Configuration -------------------------------------------------------------------------
class Dimension(ComponentConfig):
    name: str
    default: str | None = Field(None, description="Used when neither span nor resource has it.")


class ExplicitBuckets(ComponentConfig):
    buckets: list[Duration] = Field(description="Upper bounds as durations: 2ms, 100ms, 1s.")


class HistogramConfig(ComponentConfig):
    disable: bool = False
    unit: Literal["ms", "s"] = "ms"
    explicit: ExplicitBuckets | None = None

    def bounds(self) -> tuple[float, ...]:
        """Bucket bounds in the histogram's unit."""
        scale = 1000.0 if self.unit == "ms" else 1.0
        if self.explicit is None:
            return tuple(b / 1000.0 * scale for b in DEFAULT_BUCKETS_MS)
        return tuple(sorted({b * scale for b in self.explicit.buckets}))


class ExemplarsConfig(ComponentConfig):
    enabled: bool = False
    max_per_data_point: int = Field(5, ge=1, description="Kept per series between flushes.")


class SpanMetricsConfig(ComponentConfig):
    histogram: HistogramConfig = HistogramConfig()
    dimensions: list[Dimension] = Field(default_factory=list)
    exclude_dimensions: list[str] = Field(default_factory=list)
    aggregation_temporality: Temporality = _CUMULATIVE
    metrics_flush_interval: Duration = Field(15.0, gt=0)
    metrics_expiration: Duration = Field(300.0, description="0 keeps quiet series forever.")
    aggregation_cardinality_limit: int = Field(
        10_000, ge=0, description="Series per resource before overflow; 0 is unlimited."
    )
    namespace: str = "traces.span.metrics"
    exemplars: ExemplarsConfig = ExemplarsConfig()
    resource_metrics_key_attributes: list[str] = Field(
        default_factory=list,
        description="Resource attributes that identify (and are kept on) an output "
        "resource; empty keeps every resource attribute.",
    )

    @field_validator("dimensions")
    @classmethod
    def _no_raw_urls_or_queries(cls, dims: list[Dimension]) -> list[Dimension]:
        names = [d.name for d in dims]
        for name in names:
            if name in REFUSED_DIMENSIONS or name.startswith(("http.request.header.",
                                                              "http.response.header.")):  # fmt: skip
                raise ValueError(
                    f"{name!r} cannot be a dimension: raw URLs, headers and query text make "
                    "one series per request; use http.route, http.request.method, "
                    "db.operation.name or db.collection.name"
                )
            if name in DEFAULT_DIMENSIONS:
                raise ValueError(f"{name!r} is always a dimension; list only extra ones")
        if len(set(names)) != len(names):
            raise ValueError("each dimension may be listed once")
        return dims

    @field_validator("exclude_dimensions")
    @classmethod
    def _known_defaults(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in DEFAULT_DIMENSIONS:
                raise ValueError(f"{name!r} is not a default dimension: {DEFAULT_DIMENSIONS}")
        return names

    @model_validator(mode="after")
    def _buckets_present(self) -> SpanMetricsConfig:
        if self.histogram.explicit is not None and not self.histogram.explicit.buckets:
            raise ValueError("histogram.explicit.buckets must list at least one bound")
        return self


# State -----------------------------------------------------------------------------------
class _Series:
    """Calls, duration sum and bucket counts of one series. Counts are ints until a
    sampled span (adjusted count 1/p) makes them floats; they are reported rounded."""

    __slots__ = ("attributes", "buckets", "calls", "carry", "exemplars", "flushed_calls",
                 "last_active", "start_ns", "total")  # fmt: skip

    def __init__(self, attributes: list[KeyValue], buckets: int, now_ns: int, now: float) -> None:
        self.attributes = attributes
        self.calls: float = 0
        self.total = 0.0
        self.buckets: list[float] = [0] * buckets
        # Delta temporality: per bucket, the fraction of a span not yet reported.
        self.carry: list[float] | None = None
        self.exemplars: list[tuple[bytes, bytes, float, int]] = []
        self.start_ns = now_ns
        self.flushed_calls: float = 0
        self.last_active = now


class _ResourceState:
    """The series of one output resource.

    ``series`` is keyed as the hot path sees a span: dimension values found on the span
    are the raw ``AnyValue`` bytes. ``canonical`` is keyed by the decoded label values; a
    new raw key is looked up there, so the same value sent as ``200`` and ``"200"`` is
    one series. Only ``canonical`` counts toward the cardinality limit.
    """

    __slots__ = ("base_values", "canonical", "overflow", "resource", "series", "service")

    def __init__(self, resource: Resource, service: str, base_values: list[str | None]) -> None:
        self.resource = resource
        self.service = service
        self.base_values: list[bytes | str | None] = list(base_values)
        self.series: dict[tuple[Any, ...], _Series] = {}
        self.canonical: dict[tuple[Any, ...], _Series] = {}
        self.overflow: _Series | None = None


def safe_span_name(name: str) -> str:
    """A span name fit for a label: no query string or fragment, no ``scheme://host``."""
    name = name.partition("?")[0].partition("#")[0]
    if "://" in name:
        before, _, rest = name.partition("://")
        method = before.rpartition(" ")[0]
        path = "/" + rest.partition("/")[2]
        name = f"{method} {path}" if method else path
    return name


# The connector ---------------------------------------------------------------------------
class SpanMetricsConnector(Connector):
    mutates_data = False  # reads the spans; keeps only copies of names, values and IDs

    def __init__(
        self, settings: CreateSettings, config: SpanMetricsConfig, next_consumer: Consumer
    ) -> None:
        self.config = config
        self.name = str(settings.id)
        self.next = next_consumer
        self.telemetry = settings.telemetry
        self.bounds = config.histogram.bounds()
        self._scale = 1e-6 if config.histogram.unit == "ms" else 1e-9
        self._dimensions = config.dimensions
        self._patterns = [(i, key_pattern(d.name)) for i, d in enumerate(config.dimensions)]
        self._excluded = frozenset(config.exclude_dimensions)
        self._delta = config.aggregation_temporality == _DELTA
        self._resources: dict[bytes, _ResourceState] = {}
        self._safe_names: dict[str, str] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush_ns = time.time_ns()
        self._overflow_spans = self.telemetry.counter(
            "otelcol_connector_spanmetrics_overflow_spans",
            "Spans counted in the overflow series because the cardinality limit was reached",
            ("connector",),
        ).labels(self.name)
        self._series_gauge = self.telemetry.gauge(
            "otelcol_connector_spanmetrics_series", "Series the connector holds", ("connector",)
        ).labels(self.name)
        self._weights: dict[str, float] = {}  # trace state -> adjusted count
        self._known_status_codes: dict[bytes, int] = {}  # serialised Status -> its code
        self._malformed = self.telemetry.counter(
            "otelcol_connector_spanmetrics_malformed_threshold_spans",
            "Spans whose tracestate ot entry has an invalid th (counted once each)",
            ("connector",),
        ).labels(self.name)
        self._malformed_logged = False

    async def start(self, host: Host) -> None:
        self._flush_task = asyncio.create_task(self._flush_loop(), name=f"{self.name}-flush")

    async def shutdown(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        await self.flush()

    async def consume(self, payload: Payload) -> None:
        if not hasattr(payload, "resource_spans"):
            raise PermanentError(f"connector {self.name} takes traces only")
        self.aggregate(payload.resource_spans)

    # Hot path ------------------------------------------------------------------------
    def aggregate(self, resource_spans: Sequence[Any]) -> None:
        """Count every span of a request, one ``ScopeSpans`` at a time."""
        for rs in resource_spans:
            state = self._resource_state(rs.resource)
            for ss in rs.scope_spans:
                if ss.spans:
                    self._count(state, ss)

    def _count(self, state: _ResourceState, scope_spans: Any) -> None:
        """Count the spans of one ``ScopeSpans``.

        Its bytes are read in C, column by column (see :func:`_shadow_classes`), and
        per-span steps are ``map`` and ``zip`` over columns; Python runs per span only
        to add to a series and per dimension value found.
        """
        spans = scope_spans.spans
        count = len(spans)
        data = scope_spans.SerializeToString()
        columns = _SPAN_COLUMNS.FromString(data).spans

        def column(values: Any, field: str) -> Any:
            return values if len(values) == count else list(map(attrgetter(field), spans))

        names = column(columns.name, "name")
        kinds = column(columns.kind, "kind")
        starts_ns = column(columns.start_time_unix_nano, "start_time_unix_nano")
        ends_ns = column(columns.end_time_unix_nano, "end_time_unix_nano")
        if len(columns.status) == count:
            codes = self._status_codes(columns.status)
        else:
            codes = list(map(_STATUS_CODE, spans))
        labels = self._safe_span_names(names)
        if self._patterns:
            values = self._dimension_columns(state, data, count)
            keys = list(zip(labels, kinds, codes, *values, strict=True))
        else:
            keys = list(zip(labels, kinds, codes, strict=True))
        found = list(map(state.series.get, keys))
        if None in found:
            series = self._find_series(state, keys, found)
        else:
            series = cast(list[_Series], found)
        durations = list(map(mul, map(sub, ends_ns, starts_ns), repeat(self._scale)))
        slots = list(map(bisect.bisect_left, repeat(self.bounds), durations))
        if columns.trace_state:  # some span has one: it may stand for several
            self._add_weighted(series, durations, slots, list(map(_TRACE_STATE, spans)))
        else:
            for s, duration, slot in zip(series, durations, slots, strict=True):
                s.calls += 1
                s.total += duration
                s.buckets[slot] += 1
        if self.config.exemplars.enabled:
            self._sample_exemplars(spans, series, durations, ends_ns)

    def _add_weighted(
        self,
        series: list[_Series],
        durations: list[float],
        slots: list[int],
        trace_states: Sequence[str],
    ) -> None:
        """Add spans of which some carry a trace state: a head-sampled span stands for
        1/p spans."""
        weights = self._weights
        for s, duration, slot, trace_state in zip(
            series, durations, slots, trace_states, strict=True
        ):
            if (
                trace_state
                and (weight := weights.get(trace_state) or self._weight(trace_state)) != 1.0
            ):
                s.calls += weight
                s.total += duration * weight
                s.buckets[slot] += weight
            else:
                s.calls += 1
                s.total += duration
                s.buckets[slot] += 1

    def _sample_exemplars(
        self,
        spans: Sequence[Any],
        series: list[_Series],
        durations: list[float],
        ends_ns: Sequence[int],
    ) -> None:
        """The first spans of each series since the last flush, up to the limit."""
        limit = self.config.exemplars.max_per_data_point
        for s in set(series):
            k = -1
            for _ in range(limit - len(s.exemplars)):
                try:
                    k = series.index(s, k + 1)
                except ValueError:
                    break
                span = spans[k]
                s.exemplars.append((span.trace_id, span.span_id, durations[k], ends_ns[k]))

    def _find_series(
        self, state: _ResourceState, keys: list[tuple[Any, ...]], found: list[_Series | None]
    ) -> list[_Series]:
        """``found`` with its gaps filled: keys not seen before, or past the limit."""
        table = state.series
        return [
            s or table.get(key) or self._new_series(state, key)
            for s, key in zip(found, keys, strict=True)
        ]

    def _safe_span_names(self, names: Sequence[str]) -> list[str]:
        labels = list(map(self._safe_names.get, names))
        if None in labels:
            for k, label in enumerate(labels):
                if label is None:
                    labels[k] = self._safe_names.get(names[k]) or self._remember_safe_name(names[k])
        return labels  # type: ignore[return-value]

    def _status_codes(self, statuses: Sequence[bytes]) -> list[int]:
        """Each span's status code, from its serialised ``Status``."""
        known = self._known_status_codes
        codes = list(map(known.get, statuses))
        if None in codes:
            for k, code in enumerate(codes):
                if code is None:
                    raw = statuses[k]
                    codes[k] = known.get(raw)
                    if codes[k] is None:
                        if len(known) >= _STATUS_CODES_CACHED:
                            known.clear()
                        codes[k] = known[raw] = Status.FromString(raw).code
        return codes  # type: ignore[return-value]

    def _dimension_columns(self, state: _ResourceState, data: bytes, count: int) -> list[list[Any]]:
        """Per dimension, each span's raw ``AnyValue`` bytes, or the resource's value.

        Values are found with ``bytes.find`` in the spans' wire bytes, laid end to end,
        rather than by walking attributes in Python.
        """
        pieces = list(_SPAN_BYTES.FromString(data).spans)  # each span's bytes made once
        joined = b"".join(pieces)
        bounds = list(accumulate(map(len, pieces), initial=0))
        return [
            _column(joined, bounds, pattern, state.base_values[index], count)
            for index, pattern in self._patterns
        ]

    def _weight(self, trace_state: str) -> float:
        """The adjusted count of a span with this trace state (1 when its ``th`` is
        malformed: counted, and logged the first time)."""
        try:
            weight = adjusted_count(trace_state)
        except MalformedThresholdError as exc:
            self._malformed.inc()
            if not self._malformed_logged:
                self._malformed_logged = True
                log.warning(
                    "connector %s: a span's tracestate has a malformed %s; such spans count "
                    "once (otelcol_connector_spanmetrics_malformed_threshold_spans_total)",
                    self.name,
                    exc,
                )
            return 1.0
        if len(trace_state) <= _CACHED_TRACE_STATE_CHARS:
            if len(self._weights) >= _WEIGHTS_CACHED:
                self._weights.clear()
            self._weights[trace_state] = weight
        return weight

    def _remember_safe_name(self, raw: str) -> str:
        if len(self._safe_names) >= 10_000:
            self._safe_names.clear()
        name = self._safe_names[raw] = safe_span_name(raw)
        return name

    def _resource_state(self, resource: Resource) -> _ResourceState:
        keys = self.config.resource_metrics_key_attributes
        if keys:
            kept = Resource()
            kept.attributes.extend(
                kv for kv in resource.attributes if kv.key in keys or kv.key == "service.name"
            )
            resource = kept
        identity = resource.SerializeToString(deterministic=True)
        state = self._resources.get(identity)
        if state is None:
            state = self._new_resource_state(resource)
            self._resources[identity] = state
        return state

    def _new_resource_state(self, resource: Resource) -> _ResourceState:
        attrs = {kv.key: kv.value for kv in resource.attributes}
        service = any_value_text(attrs["service.name"]) if "service.name" in attrs else ""
        base: list[str | None] = []
        for dim in self._dimensions:
            value = attrs.get(dim.name)
            base.append(any_value_text(value) if value is not None else dim.default)
        copy = Resource()
        copy.CopyFrom(resource)
        return _ResourceState(copy, service, base)

    def _new_series(self, state: _ResourceState, key: tuple[Any, ...]) -> _Series:
        canonical = _canonical(key)
        series = state.canonical.get(canonical)
        if series is not None:
            state.series[key] = series
            return series
        now_ns, now = time.time_ns(), time.monotonic()
        limit = self.config.aggregation_cardinality_limit
        if limit and len(state.canonical) >= limit:
            self._overflow_spans.inc()
            if state.overflow is None:
                attributes = [_kv("service.name", state.service), _kv(OVERFLOW_ATTRIBUTE, True)]
                state.overflow = _Series(attributes, len(self.bounds) + 1, now_ns, now)
            state.overflow.last_active = now
            return state.overflow
        series = _Series(self._attributes(state, canonical), len(self.bounds) + 1, now_ns, now)
        state.series[key] = state.canonical[canonical] = series
        return series

    def _attributes(self, state: _ResourceState, key: tuple[Any, ...]) -> list[KeyValue]:
        name, kind, code, *values = key
        defaults = {
            "service.name": state.service,
            "span.name": name,
            "span.kind": _SPAN_KINDS[kind] if 0 <= kind < len(_SPAN_KINDS) else str(kind),
            "status.code": _STATUS_CODES[code] if 0 <= code < len(_STATUS_CODES) else str(code),
        }
        attributes = [_kv(k, v) for k, v in defaults.items() if k not in self._excluded]
        for dim, value in zip(self._dimensions, values, strict=True):
            if value is not None:
                attributes.append(_kv(dim.name, value))
        return attributes

    # Flushing ------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("connector %s: flush failed", self.name)

    async def flush(self) -> None:
        """Send every live series downstream; drop quiet ones; reset deltas. The request
        is built in chunks, yielding to the event loop between them."""
        request = ExportMetricsServiceRequest()
        for _ in self._build(request):
            await asyncio.sleep(0)
        if not request.resource_metrics:
            return
        try:
            await self.next.consume(request)
        except ComponentError as exc:
            # Cumulative state is kept, so the next flush carries these counts again.
            log.warning("connector %s: downstream refused span metrics: %s", self.name, exc)

    def build_request(self) -> ExportMetricsServiceRequest:
        """The request a flush would send now (and the state changes a flush makes)."""
        request = ExportMetricsServiceRequest()
        for _ in self._build(request):
            pass
        return request

    def _build(self, request: ExportMetricsServiceRequest) -> Iterator[None]:
        """Fill ``request``, yielding every ``_BUILD_CHUNK`` series."""
        now_ns, now = time.time_ns(), time.monotonic()
        self._expire(now)
        total = 0
        for state in list(self._resources.values()):
            series = list(state.canonical.values())
            if state.overflow is not None:
                series.append(state.overflow)
            if self._delta:
                series = [s for s in series if s.calls]
            total += len(series)
            if not series:
                continue
            calls, duration = self._add_resource(request, state)
            for start in range(0, len(series), _BUILD_CHUNK):
                self._add_series(calls, duration, series[start : start + _BUILD_CHUNK], now_ns)
                yield
        self._series_gauge.set(total)
        self._last_flush_ns = now_ns

    def _expire(self, now: float) -> None:
        expiration = self.config.metrics_expiration
        for identity, state in list(self._resources.items()):
            expired: set[int] = set()
            for key, s in list(state.canonical.items()):
                if s.calls != s.flushed_calls:
                    s.last_active = now
                elif expiration and now - s.last_active >= expiration:
                    del state.canonical[key]
                    expired.add(id(s))
            if expired:
                state.series = {k: s for k, s in state.series.items() if id(s) not in expired}
            overflow = state.overflow
            if overflow is not None:
                if overflow.calls != overflow.flushed_calls:
                    overflow.last_active = now
                elif expiration and now - overflow.last_active >= expiration:
                    state.overflow = None
            if not state.canonical and state.overflow is None:
                del self._resources[identity]

    def _add_resource(
        self, request: ExportMetricsServiceRequest, state: _ResourceState
    ) -> tuple[Any, Any]:
        """The resource's calls and (unless disabled) duration metrics, still empty."""
        temporality = (
            AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
            if self._delta
            else AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        )
        rm = request.resource_metrics.add()
        rm.resource.CopyFrom(state.resource)
        sm = rm.scope_metrics.add()
        sm.scope.name = SCOPE_NAME
        calls = sm.metrics.add()
        calls.name = f"{self.config.namespace}.calls"
        calls.description = "Spans counted, per service, operation, kind and status"
        calls.sum.is_monotonic = True
        calls.sum.aggregation_temporality = temporality
        duration = None
        if not self.config.histogram.disable:
            duration = sm.metrics.add()
            duration.name = f"{self.config.namespace}.duration"
            duration.unit = self.config.histogram.unit
            duration.description = "Span durations, per service, operation, kind and status"
            duration.histogram.aggregation_temporality = temporality
        return calls, duration

    def _add_series(self, calls: Any, duration: Any, series: list[_Series], now_ns: int) -> None:
        for s in series:
            start = self._last_flush_ns if self._delta else s.start_ns
            counts = _whole_counts(s, carry=self._delta)
            self._add_points(calls, duration, s, start, now_ns, counts)
            s.flushed_calls = s.calls
            s.exemplars.clear()
            if self._delta:
                s.calls, s.total, s.buckets = 0, 0.0, [0] * len(s.buckets)
                s.flushed_calls = 0

    def _add_points(
        self, calls: Any, duration: Any, s: _Series, start: int, now_ns: int, counts: list[int]
    ) -> None:
        count = sum(counts)
        dp = calls.sum.data_points.add()
        dp.attributes.extend(s.attributes)
        dp.start_time_unix_nano = start
        dp.time_unix_nano = now_ns
        dp.as_int = count
        if duration is None:
            _add_exemplars(dp, s.exemplars)
            return
        hp = duration.histogram.data_points.add()
        hp.attributes.extend(s.attributes)
        hp.start_time_unix_nano = start
        hp.time_unix_nano = now_ns
        hp.count = count
        hp.sum = s.total
        hp.bucket_counts.extend(counts)
        hp.explicit_bounds.extend(self.bounds)
        _add_exemplars(dp, s.exemplars)
        _add_exemplars(hp, s.exemplars)


def _column(joined: bytes, bounds: list[int], pattern: bytes, base: Any, count: int) -> list[Any]:
    """Each span's raw value of the attribute ``pattern`` starts, or ``base``: spans lie
    end to end in ``joined``, span k from ``bounds[k]`` to ``bounds[k + 1]``. A span's
    value is the one :func:`~otelkit.collector.pdata.wire.raw_value_at` finds in its own
    bytes from the first occurrence of ``pattern``."""
    column = [base] * count
    size = len(pattern)
    find, span_at = joined.find, bisect.bisect_right
    at = find(pattern)
    while at >= 0:
        k = span_at(bounds, at) - 1
        start, stop = bounds[k], bounds[k + 1]
        end = at + size
        if end >= stop:  # across two spans, or nothing after it: not in span k
            at = find(pattern, at + 1)
            continue
        length = joined[end]
        if (
            joined[at - 1] == size + 1 + length
            and joined[at - 2] == _ATTRIBUTE_TAG
            and length < 0x80
            and at - start >= 2
            and end + 1 + length <= stop
        ):
            column[k] = joined[end + 1 : end + 1 + length]
        else:
            value = _framed_value(joined[start:stop], pattern, at - start)
            if value is not None:
                column[k] = value
        at = find(pattern, stop)
    return column


def _framed_value(span: bytes, pattern: bytes, at: int) -> bytes | None:
    """:func:`~otelkit.collector.pdata.wire.raw_value_at`, None where a length runs past
    the span's end."""
    try:
        return raw_value_at(span, pattern, at)
    except IndexError:
        return None


def _whole_counts(s: _Series, carry: bool) -> list[int]:
    """The series' bucket counts in whole spans. OTLP histogram counts are integers, so
    adjusted counts are rounded per bucket (the calls counter is their sum, so it always
    equals the histogram's count); with ``carry`` (delta temporality) the fraction not
    reported is kept for the next flush, so rounding never drifts."""
    if type(s.calls) is int and s.carry is None:
        return s.buckets  # type: ignore[return-value]  # no sampled span: already ints
    totals = (
        s.buckets if s.carry is None else [b + c for b, c in zip(s.buckets, s.carry, strict=True)]
    )
    counts = [round(total) for total in totals]
    if carry:
        s.carry = [total - n for total, n in zip(totals, counts, strict=True)]
    return counts


def _canonical(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A hot-path key with raw ``AnyValue`` bytes decoded to label text."""
    if not any(isinstance(part, bytes) for part in key):
        return key
    head, values = key[:3], key[3:]
    decoded = (
        any_value_text(AnyValue.FromString(v)) if isinstance(v, bytes) else v for v in values
    )
    return (*head, *(None if value == "" else value for value in decoded))


def _add_exemplars(point: Any, exemplars: list[tuple[bytes, bytes, float, int]]) -> None:
    for trace_id, span_id, value, time_ns in exemplars:
        ex = point.exemplars.add()
        ex.trace_id = trace_id
        ex.span_id = span_id
        ex.as_double = value
        ex.time_unix_nano = time_ns


def _kv(key: str, value: str | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _create(
    settings: CreateSettings,
    config: SpanMetricsConfig,
    source: Signal,
    target: Signal,
    next_consumer: Consumer,
) -> SpanMetricsConnector:
    return SpanMetricsConnector(settings, config, next_consumer)


factory = connector_factory(
    "spanmetrics", SpanMetricsConfig, _create, frozenset({(Signal.TRACES, Signal.METRICS)})
)
