"""OTLP metrics -> Prometheus series: the one translation both Prometheus exporters share.

Follows the OpenTelemetry "Prometheus and OpenMetrics compatibility" specification and
the upstream collector's translator:

* names: characters outside ``[a-zA-Z0-9:]`` split the name into words joined by ``_``;
  the unit becomes a suffix (``s`` -> ``_seconds``, ``By`` -> ``_bytes``, ``m/s`` ->
  ``_meters_per_second``; units in braces are dropped); monotonic sums end in
  ``_total``; gauges with unit ``1`` end in ``_ratio``; a leading digit gets ``_``.
* labels: invalid characters become ``_``; a leading digit gets a ``key_`` prefix and a
  leading ``_`` a ``key`` prefix, unless the key itself starts with ``__`` (Prometheus
  reserves those names); attributes that collide after sanitising are joined with ``;``.
* resources: ``job`` = ``service.namespace/service.name``, ``instance`` =
  ``service.instance.id`` on every series, and one ``target_info`` gauge per resource
  carrying the other resource attributes.

The output is a stream of :class:`Translated` records holding immutable points; the
scrape exporter folds them into its cumulative store, remote write encodes them as-is.

A point Prometheus cannot take (an exponential histogram whose scale is outside -10..20
or whose buckets overflow a double, histogram bounds that are not finite and
increasing, a histogram count that is not the sum of its buckets, a counter that is NaN
or negative, a quantile outside 0..1, an attribute key that is no label name: empty or
reserved (``__name__``), or ``le`` on a histogram and ``quantile`` on a summary, which
the exposition writes itself; a metric whose name has no letter or digit) is left out
alone and noted in :class:`Rejected`, so the exporters can count it, as the upstream
exporter's registry drops such a metric and serves the rest; every other point of the
request goes through, and no scrape is ever made unparseable.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client.utils import floatToGoString

from otelkit.collector.pdata.values import any_value_text

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name: hashable, so it is the series key."""

MetricKind = Literal["counter", "gauge", "histogram", "summary"]

TARGET_INFO = "target_info"
_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds",
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
    "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
_PER_UNITS = {
    "s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month",
    "y": "year",
}  # fmt: skip
_NAME_SEPARATORS = re.compile(r"[^a-zA-Z0-9:]+")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


# Points ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Exemplar:
    labels: Labels
    value: float
    time_ns: int


@dataclass(frozen=True, slots=True)
class NumberPoint:
    value: float
    start_ns: int
    time_ns: int
    exemplar: Exemplar | None = None


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """Explicit-bucket histogram; ``counts`` per bucket (not cumulative), len(bounds)+1."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int
    start_ns: int
    time_ns: int
    exemplars: tuple[Exemplar | None, ...] = ()


@dataclass(frozen=True, slots=True)
class SummaryPoint:
    quantiles: tuple[tuple[float, float], ...]
    sum: float
    count: int
    start_ns: int
    time_ns: int


Point = NumberPoint | HistogramPoint | SummaryPoint


@dataclass(frozen=True, slots=True)
class Family:
    """One Prometheus metric family. Counter names carry ``_total`` when suffixes are on."""

    name: str
    kind: MetricKind
    help: str = ""
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Translated:
    family: Family
    labels: Labels
    point: Point
    delta: bool = False
    stale: bool = False


@dataclass(frozen=True)
class TranslationOptions:
    namespace: str = ""
    add_metric_suffixes: bool = True
    resource_to_telemetry_conversion: bool = False
    scope_labels: bool = True
    target_info: bool = True
    extra_labels: Mapping[str, str] | None = None
    """``const_labels`` / ``external_labels``: added to every series, never overriding."""


class Rejected:
    """Points left out of a translation, by reason."""

    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}

    def add(self, reason: str, points: int = 1) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + points

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def summary(self) -> str:
        return "; ".join(f"{n} x {reason}" for reason, n in self.by_reason.items())


# Names ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def metric_name(
    name: str,
    unit: str,
    kind: str,
    monotonic: bool = False,
    namespace: str = "",
    add_suffixes: bool = True,
) -> str:
    """The Prometheus name of an OTLP metric. ``kind`` is the OTLP data kind
    (``sum``, ``gauge``, ``histogram``, ``exponential_histogram``, ``summary``)."""
    if not add_suffixes:
        text = f"{namespace}_{name}" if namespace else name
        text = _INVALID_NAME_CHARS.sub("_", text)
        return "_" + text if text[:1].isdigit() else text
    words = [w for w in _NAME_SEPARATORS.split(name) if w]
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    if main and "{" not in main and "}" not in main:
        word = _clean(_UNITS.get(main, main))
        if word and word not in words:
            words.append(word)
    if per and "{" not in per and "}" not in per:
        word = _clean(_PER_UNITS.get(per, per))
        if word and word not in words:
            words += ["per", word]
    if kind == "sum" and monotonic:
        words = [w for w in words if w != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        words = [w for w in words if w != "ratio"] + ["ratio"]
    if namespace:
        words.insert(0, namespace)
    text = "_".join(words)
    return "_" + text if text[:1].isdigit() else text


def unit_word(unit: str) -> str:
    """The unit as a Prometheus name suffix word (``seconds``), or ``""``."""
    main, _, per = unit.partition("/")
    if "{" in unit or not main.strip():
        return ""
    word = _clean(_UNITS.get(main.strip(), main.strip()))
    if per.strip():
        per_word = _clean(_PER_UNITS.get(per.strip(), per.strip()))
        return f"{word}_per_{per_word}" if word and per_word else word
    return word


def _clean(text: str) -> str:
    return _NON_ALNUM.sub("_", text).strip("_")


@functools.lru_cache(maxsize=8192)
def label_name(key: str) -> str:
    """A valid Prometheus label name for an attribute key; an empty key, and one that
    starts with ``__`` (reserved: ``__name__`` is the metric name), stay as they are, and
    :func:`usable_label` says no to them. A ``__`` that sanitising made (``日本``) is no
    reserved name: it gets the ``key`` prefix of any leading ``_``."""
    if not key:
        return key
    text = _INVALID_LABEL_CHARS.sub("_", key)
    if text[0].isdigit():
        return "key_" + text
    if text.startswith("_") and not key.startswith("__"):
        return "key" + text
    return text


def usable_label(name: str) -> bool:
    """False for a label name no exposition may carry: empty, or reserved (``__``)."""
    return bool(name) and not name.startswith("__")


# Attribute values ----------------------------------------------------------------------
def go_float(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it (``le`` and
    ``quantile`` labels: ``1e+06``), so our series match those of Go exporters."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def attribute_labels(attributes: Iterable[Any], skip_unusable: bool = False) -> dict[str, str]:
    """Sanitised labels from OTLP attributes; colliding keys' values are joined with ``;``
    in key order, as upstream does. Empty values are left out (Prometheus drops them).
    A key that makes no usable label raises ValueError (the point is left out), or is
    left out itself with ``skip_unusable`` (exemplars and ``target_info``, which are
    extras of other series)."""
    labels: dict[str, str] = {}
    collided = False
    for kv in attributes:
        name = _usable_name(kv.key, skip_unusable)
        if name in labels:
            collided = True
            break
        value = kv.value
        text = value.string_value  # the common case, without a call
        if not text and value.WhichOneof("value") != "string_value":
            text = any_value_text(value)
        if text and name:
            labels[name] = text
    if not collided:
        return labels
    labels = {}
    for kv in sorted(attributes, key=lambda kv: str(kv.key)):
        name, text = _usable_name(kv.key, skip_unusable), any_value_text(kv.value)
        if text and name:
            labels[name] = f"{labels[name]};{text}" if name in labels else text
    return labels


def _usable_name(key: str, skip_unusable: bool) -> str:
    """The label name of ``key``; ``""`` for one to skip, ValueError for one to refuse."""
    name = _usable_label_name(key)
    if name or skip_unusable:
        return name
    raise ValueError(f"attribute key {key[:80]!r} is no Prometheus label name")


@functools.lru_cache(maxsize=8192)
def _usable_label_name(key: str) -> str:
    name = label_name(key)
    return name if usable_label(name) else ""


# Resources -------------------------------------------------------------------------------
_IDENTIFYING = ("service.name", "service.namespace", "service.instance.id")


@dataclass(frozen=True)
class ResourceLabels:
    """What a resource contributes: labels for every series and its ``target_info``."""

    series: dict[str, str]
    target_info: Labels | None


def resource_labels(resource: Any, options: TranslationOptions) -> ResourceLabels:
    attrs = {kv.key: any_value_text(kv.value) for kv in resource.attributes}
    base: dict[str, str] = {}
    if options.resource_to_telemetry_conversion:
        base.update(attribute_labels(resource.attributes, skip_unusable=True))
    job_instance = _job_instance(attrs)
    base.update(job_instance)
    info: Labels | None = None
    others = [kv for kv in resource.attributes if kv.key not in _IDENTIFYING]
    if options.target_info and others:
        info_labels = {**attribute_labels(others, skip_unusable=True), **job_instance}
        for key, value in (options.extra_labels or {}).items():
            info_labels.setdefault(key, value)
        info = tuple(sorted(info_labels.items()))
    return ResourceLabels(base, info)


def _job_instance(attrs: Mapping[str, str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    name, namespace = attrs.get("service.name", ""), attrs.get("service.namespace", "")
    if name:
        labels["job"] = f"{namespace}/{name}" if namespace else name
    if attrs.get("service.instance.id"):
        labels["instance"] = attrs["service.instance.id"]
    return labels


# Requests -> records ---------------------------------------------------------------------
def translate(
    request: ExportMetricsServiceRequest,
    options: TranslationOptions,
    rejected: Rejected | None = None,
) -> Iterator[Translated]:
    """Every valid data point of a request as a Prometheus series, plus ``target_info`` per
    resource (stamped with the newest point time of that resource); the points left out
    are noted in ``rejected``."""
    rejected = rejected if rejected is not None else Rejected()
    info_family = Family(TARGET_INFO, "gauge", "Target metadata")
    for rm in request.resource_metrics:
        resource = resource_labels(rm.resource, options)
        newest = 0
        for sm in rm.scope_metrics:
            base = dict(resource.series)
            if options.scope_labels and sm.scope.name:
                base["otel_scope_name"] = sm.scope.name
                if sm.scope.version:
                    base["otel_scope_version"] = sm.scope.version
            for metric in sm.metrics:
                for record in _translate_metric(metric, base, options, rejected):
                    newest = max(newest, record.point.time_ns)
                    yield record
        if resource.target_info is not None and newest:
            yield Translated(info_family, resource.target_info, NumberPoint(1.0, 0, newest))


def _translate_metric(
    metric: Any, base: dict[str, str], options: TranslationOptions, rejected: Rejected
) -> Iterator[Translated]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return
    data = getattr(metric, kind)
    monotonic = kind == "sum" and data.is_monotonic
    name = metric_name(
        metric.name, metric.unit, kind, monotonic, options.namespace, options.add_metric_suffixes
    )
    if not name.strip("_"):
        rejected.add("metric name without a letter or digit", len(data.data_points))
        return
    help_text = metric.description or metric.name  # a HELP line always, as promtool wants
    family = Family(name, _KINDS[kind] if kind != "sum" or monotonic else "gauge",
                    help_text, unit_word(metric.unit))  # fmt: skip
    delta = kind in ("sum", "histogram", "exponential_histogram") and (
        data.aggregation_temporality == _DELTA
    )
    convert: Callable[[Any], Point] = _CONVERTERS[kind]
    if family.kind == "counter":
        convert = _counter
    own_label = _OWN_LABELS.get(family.kind)
    for dp in data.data_points:
        try:
            point = convert(dp)
            labels = attribute_labels(dp.attributes)
        except (ValueError, ArithmeticError) as exc:
            rejected.add(str(exc))
            continue
        if own_label is not None and own_label in labels:
            rejected.add(
                f"{family.kind} with an attribute {own_label!r}: its exposition's own label"
            )
            continue
        labels.update(base)  # job, instance, scope and resource labels win over attributes
        for key, value in (options.extra_labels or {}).items():
            labels.setdefault(key, value)
        stale = bool(dp.flags & _NO_RECORDED_VALUE)
        yield Translated(family, tuple(sorted(labels.items())), point, delta, stale)


_KINDS: dict[str, MetricKind] = {
    "gauge": "gauge",
    "sum": "counter",
    "histogram": "histogram",
    "exponential_histogram": "histogram",
    "summary": "summary",
}


_OWN_LABELS = {"histogram": "le", "summary": "quantile"}


def _number(dp: Any) -> NumberPoint:
    value = float(dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int)
    exemplar = _exemplar(dp.exemplars[-1]) if dp.exemplars else None
    return NumberPoint(value, dp.start_time_unix_nano, dp.time_unix_nano, exemplar)


def _counter(dp: Any) -> NumberPoint:
    """A monotonic sum's point: a Prometheus counter is never NaN or negative (OpenMetrics
    refuses the whole exposition that has one)."""
    point = _number(dp)
    if not point.value >= 0:  # also true for NaN
        raise ValueError("counter value that is NaN or negative")
    return point


def _histogram(dp: Any) -> HistogramPoint:
    bounds = tuple(dp.explicit_bounds)
    counts = tuple(dp.bucket_counts)
    if len(counts) != len(bounds) + 1:  # no buckets, or malformed: keep the total, lose the shape
        counts, bounds = (int(dp.count),), ()
    _check_bounds(bounds, "histogram")
    _check_count(counts, dp.count, "histogram")
    exemplars = _bucket_exemplars(bounds, dp.exemplars)
    return HistogramPoint(bounds, counts, dp.sum, int(dp.count), dp.start_time_unix_nano,
                          dp.time_unix_nano, exemplars)  # fmt: skip


def _exponential(dp: Any) -> HistogramPoint:
    """Explicit buckets from an exponential histogram: each bucket's upper boundary is
    ``base ** (index + 1)`` with ``base = 2 ** 2 ** -scale``; the zero bucket ends at
    the zero threshold."""
    scale = dp.scale
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"exponential histogram scale {scale} is outside "
                         f"{MIN_SCALE}..{MAX_SCALE}")  # fmt: skip
    bounds: list[float] = []
    counts: list[int] = []
    negative = dp.negative
    try:
        for i in reversed(range(len(negative.bucket_counts))):  # most negative first
            bounds.append(-_base_power(negative.offset + i, scale))
            counts.append(int(negative.bucket_counts[i]))
        bounds.append(dp.zero_threshold)
        counts.append(int(dp.zero_count))
        positive = dp.positive
        for i, n in enumerate(positive.bucket_counts):
            bounds.append(_base_power(positive.offset + i + 1, scale))
            counts.append(int(n))
    except OverflowError:
        raise ValueError(
            f"exponential histogram buckets overflow a double (scale {dp.scale}, offsets "
            f"{dp.negative.offset} / {dp.positive.offset})"
        ) from None
    counts.append(0)  # +Inf
    _check_bounds(bounds, "exponential histogram")
    _check_count(counts, dp.count, "exponential histogram")
    exemplars = _bucket_exemplars(tuple(bounds), dp.exemplars)
    return HistogramPoint(tuple(bounds), tuple(counts), dp.sum, int(dp.count),
                          dp.start_time_unix_nano, dp.time_unix_nano, exemplars)  # fmt: skip


def _summary(dp: Any) -> SummaryPoint:
    quantiles = tuple((q.quantile, q.value) for q in dp.quantile_values)
    if not all(0.0 <= q <= 1.0 for q, _ in quantiles):  # also false for NaN
        raise ValueError("summary quantile outside 0..1")
    return SummaryPoint(quantiles, dp.sum, int(dp.count), dp.start_time_unix_nano,
                        dp.time_unix_nano)  # fmt: skip


MIN_SCALE, MAX_SCALE = -10, 20  # the OpenTelemetry metrics data model's range


def _base_power(index: int, scale: int) -> float:
    """``base ** index`` for ``base = 2 ** 2 ** -scale``; OverflowError when it does not
    fit a double. At scale 0 and below the base is a power of two, so the bound is one
    too, made exactly without forming the base (``2 ** 1024`` at scale -10 overflows,
    while its bucket at index -1 ends at 1)."""
    if scale <= 0:
        return math.ldexp(1.0, index << -scale)
    return float((2.0 ** (2.0**-scale)) ** index)


def _check_count(counts: Iterable[int], count: int, kind: str) -> None:
    """The count must be the sum of the buckets: the ``+Inf`` bucket and ``_count`` of a
    scrape are both that total, and OpenMetrics refuses an exposition where they differ."""
    if sum(counts) != count:
        raise ValueError(f"{kind} count is not the sum of its bucket counts")


def _check_bounds(bounds: Iterable[float], kind: str) -> None:
    """Bucket bounds must be finite and strictly increasing, or no scrape parses."""
    previous = -math.inf
    for bound in bounds:
        if not previous < bound < math.inf:  # also false for NaN
            raise ValueError(f"{kind} bucket bounds are not finite and increasing")
        previous = bound


_CONVERTERS: dict[str, Callable[[Any], Point]] = {
    "gauge": _number,
    "sum": _number,
    "histogram": _histogram,
    "exponential_histogram": _exponential,
    "summary": _summary,
}


def _exemplar(ex: Any) -> Exemplar:
    labels: dict[str, str] = {}
    if ex.trace_id:
        labels["trace_id"] = ex.trace_id.hex()
    if ex.span_id:
        labels["span_id"] = ex.span_id.hex()
    for key, value in attribute_labels(ex.filtered_attributes, skip_unusable=True).items():
        labels.setdefault(key, value)
    number = float(ex.as_double if ex.WhichOneof("value") == "as_double" else ex.as_int)
    return Exemplar(_fit_exemplar_labels(labels), number, ex.time_unix_nano)


def _fit_exemplar_labels(labels: dict[str, str]) -> Labels:
    """OpenMetrics caps an exemplar's label set at 128 characters: keep the IDs first."""
    kept: list[tuple[str, str]] = []
    size = 0
    for key, value in labels.items():
        size += len(key) + len(value)
        if size > 128:
            break
        kept.append((key, value))
    return tuple(kept)


def _bucket_exemplars(bounds: tuple[float, ...], exemplars: Any) -> tuple[Exemplar | None, ...]:
    """The newest exemplar falling into each bucket (``le`` is inclusive)."""
    if not exemplars:
        return ()
    slots: list[Exemplar | None] = [None] * (len(bounds) + 1)
    for ex in exemplars:
        converted = _exemplar(ex)
        index = bisect.bisect_left(bounds, converted.value)
        current = slots[index]
        if current is None or current.time_ns <= converted.time_ns:
            slots[index] = converted
    return tuple(slots)
