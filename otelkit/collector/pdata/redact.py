"""Redacting OTLP requests in place with a :class:`~otelkit.collector.runtime.scrub.Scrubber`.

Every attribute map a request carries is visited: resource, scope, span, span event,
span link, log record, metric data point and exemplar attributes; so are log bodies
(strings, and maps and lists at any depth) and span names. What happens to one
attribute follows the upstream ``redaction`` processor:

1. a key in ``ignored_keys`` is left alone;
2. a key outside ``allowed_keys`` (when that list is given) is removed;
3. a string matching one of ``allowed_values`` is left alone;
4. otherwise the scrubber masks it by key, then masks secret-looking parts of it.

Only what changes is written back, so untouched attributes stay as they were parsed.
With ``summary`` ``info`` or ``debug``, the map that was changed gets
``redaction.redacted.count`` / ``redaction.masked.count`` / ``redaction.ignored.count``
(and, for ``debug``, ``redaction.redacted.keys`` / ``redaction.masked.keys``); a log
body's changes are reported as ``redaction.body.*`` on the record.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.pdata.prefilter import Prefilter
from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.scrub import Scrubber

Summary = Literal["silent", "info", "debug"]
_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
# Where each request keeps its resources, scopes and items, and what redacts one item.
_SHAPES: dict[type[Payload], tuple[str, str, str]] = {
    ExportTraceServiceRequest: ("resource_spans", "scope_spans", "spans"),
    ExportLogsServiceRequest: ("resource_logs", "scope_logs", "log_records"),
    ExportMetricsServiceRequest: ("resource_metrics", "scope_metrics", "metrics"),
}
_ITEM_REDACTORS: dict[type[Payload], str] = {
    ExportTraceServiceRequest: "_span",
    ExportLogsServiceRequest: "_log_record",
    ExportMetricsServiceRequest: "_metric",
}
# Unbound, so that map() serializes a scope's items without a Python loop.
_SERIALIZERS: dict[type[Payload], Callable[[Any], bytes]] = {
    ExportTraceServiceRequest: Span.SerializeToString,
    ExportLogsServiceRequest: LogRecord.SerializeToString,
    ExportMetricsServiceRequest: Metric.SerializeToString,
}
_SERIALIZE_RESOURCE: Callable[[Resource], bytes] = Resource.SerializeToString
_SERIALIZE_SCOPE: Callable[[InstrumentationScope], bytes] = InstrumentationScope.SerializeToString


@dataclass(frozen=True)
class _Segment:
    """Items whose serializations start at chunk ``start``, and what redacts one."""

    start: int
    items: Sequence[Any]
    redact: Callable[[Any, Redacted], None]


@dataclass(frozen=True)
class Serialized:
    """A request's resources, scopes and items serialised for the prefilter."""

    chunks: list[bytes]
    segments: list[_Segment]
    size: int  # bytes in all chunks


@dataclass(frozen=True)
class RedactionRules:
    """The upstream processor's key and value lists (the scrubber holds the rest)."""

    allowed_keys: frozenset[str] | None = None  # None: every key is allowed
    ignored_keys: frozenset[str] = frozenset()
    allowed_values: tuple[re.Pattern[str], ...] = ()
    summary: Summary = "silent"


@dataclass
class Redacted:
    """What one request lost: values masked and attributes removed."""

    masked: int = 0
    removed: int = 0


@dataclass
class _MapReport:
    masked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    ignored: int = 0


class Redactor:
    """Redacts whole requests in place; one per component, reused for every batch.

    When the rules allow it, a :class:`~otelkit.collector.pdata.prefilter.Prefilter` over
    the serialized resources, scopes and items of a request picks those to walk; the
    others are proven clean by their bytes. It is off when configured patterns decide (they may match any
    text), when keys outside ``allowed_keys`` are removed (every item changes), and when
    the summary counts ignored keys (every map with one changes).
    """

    def __init__(self, scrubber: Scrubber, rules: RedactionRules | None = None) -> None:
        self.scrubber = scrubber
        self.rules = rules or RedactionRules()
        self._simple = (
            self.rules.allowed_keys is None
            and not self.rules.ignored_keys
            and not self.rules.allowed_values
            and self.rules.summary == "silent"
        )
        triggers = scrubber.triggers()
        self.prefilter = (
            Prefilter(triggers)
            if triggers is not None
            and self.rules.allowed_keys is None
            and not (self.rules.ignored_keys and self.rules.summary != "silent")
            else None
        )

    def redact(self, payload: Payload) -> Redacted:
        if self.prefilter is not None:
            return self.redact_serialized(self.serialize(payload))
        done = Redacted()
        resources, scopes, items_of = _SHAPES[type(payload)]
        redact_item = getattr(self, _ITEM_REDACTORS[type(payload)])
        for resource_items in getattr(payload, resources):
            self._attributes(resource_items.resource.attributes, done)
            for scope_items in getattr(resource_items, scopes):
                self._attributes(scope_items.scope.attributes, done)
                for item in getattr(scope_items, items_of):
                    redact_item(item, done)
        return done

    def serialize(self, payload: Payload) -> Serialized:
        """The first half of a prefiltered redaction: every resource, scope and item with
        attributes serialised (in C), to be searched by :meth:`redact_serialized`. Its
        size bounds the rest of the work, so a caller can decide where to run it."""
        resources, scopes, items_of = _SHAPES[type(payload)]
        redact_item = getattr(self, _ITEM_REDACTORS[type(payload)])
        chunks: list[bytes] = []
        segments: list[_Segment] = []  # in chunk order

        def add(items: Sequence[Any], serialize: Callable[[Any], bytes], redact: Any) -> None:
            if items:
                segments.append(_Segment(len(chunks), items, redact))
                chunks.extend(map(serialize, items))

        serialize_item = _SERIALIZERS[type(payload)]
        for resource_items in getattr(payload, resources):
            resource = resource_items.resource
            if resource.attributes:
                add((resource,), _SERIALIZE_RESOURCE, self._attributes_of)
            for scope_items in getattr(resource_items, scopes):
                scope = scope_items.scope
                if scope.attributes:
                    add((scope,), _SERIALIZE_SCOPE, self._attributes_of)
                add(getattr(scope_items, items_of), serialize_item, redact_item)
        return Serialized(chunks, segments, sum(map(len, chunks)))

    def redact_serialized(self, serialized: Serialized) -> Redacted:
        """Search the chunks of :meth:`serialize` at once, and walk only those the
        prefilter names (the request must not have changed in between)."""
        assert self.prefilter is not None
        done = Redacted()
        segments = serialized.segments
        starts = [segment.start for segment in segments]
        for index in self.prefilter.items(serialized.chunks):
            segment = segments[bisect_right(starts, index) - 1]
            segment.redact(segment.items[index - segment.start], done)
        return done

    def _attributes_of(self, holder: Resource | InstrumentationScope, done: Redacted) -> None:
        self._attributes(holder.attributes, done)

    def _span(self, span: Span, done: Redacted) -> None:
        self._attributes(span.attributes, done)
        name = span.name
        cleaned = self.scrubber.value(name)
        if cleaned != name:
            span.name = cleaned
            done.masked += 1
        for event in span.events:
            self._attributes(event.attributes, done)
        for link in span.links:
            self._attributes(link.attributes, done)

    def _log_record(self, record: LogRecord, done: Redacted) -> None:
        self._attributes(record.attributes, done)
        if record.HasField("body"):
            self._body(record.body, record.attributes, done)

    def _metric(self, metric: Metric, done: Redacted) -> None:
        kind = metric.WhichOneof("data")
        if kind not in _POINT_FIELDS:
            return
        for point in getattr(metric, kind).data_points:
            self._attributes(point.attributes, done)
            for exemplar in getattr(point, "exemplars", ()):
                self._attributes(exemplar.filtered_attributes, done)

    # Attributes --------------------------------------------------------------------------
    def _attributes(self, kvs: MutableSequence[KeyValue], done: Redacted) -> None:
        if not kvs:
            return
        if self._simple:  # the hot path: every attribute of every item, nothing to report
            skips, string, masked = self.scrubber.skips, self.scrubber.string, self._value
            for kv in kvs:
                key = kv.key
                if skips(key):
                    continue
                value = kv.value
                text = value.string_value
                if text:
                    cleaned = string(key, text)
                    if cleaned != text:
                        value.string_value = cleaned
                        done.masked += 1
                elif masked(key, value):
                    done.masked += 1
            return
        report = _MapReport()
        rules = self.rules
        removed: list[int] = []
        for index, kv in enumerate(kvs):
            key = kv.key
            if key in rules.ignored_keys:
                report.ignored += 1
            elif rules.allowed_keys is not None and key not in rules.allowed_keys:
                removed.append(index)
                report.removed.append(key)
            elif self._value(key, kv.value):
                report.masked.append(key)
        for index in reversed(removed):
            del kvs[index]
        done.masked += len(report.masked)
        done.removed += len(removed)
        self._summarize(kvs, report, "redaction")

    def _value(self, key: str, value: AnyValue) -> bool:
        """Mask ``value`` (under ``key``) in place; True when it changed."""
        text = value.string_value
        if text:
            if self.rules.allowed_values and _matches(self.rules.allowed_values, text):
                return False
            cleaned = self.scrubber.string(key, text)
            if cleaned == text:
                return False
            value.string_value = cleaned
            return True
        kind = value.WhichOneof("value")
        if kind == "array_value":
            changed = False
            for item in value.array_value.values:
                changed = self._value(key, item) or changed
            return changed
        if kind == "kvlist_value":
            changed = False
            for kv in value.kvlist_value.values:
                changed = self._value(kv.key, kv.value) or changed
            return changed
        if kind not in (None, "string_value") and self.scrubber.masks_any_type(key):
            value.string_value = self.scrubber.string(key, str(getattr(value, kind)))
            return True
        return False

    def _body(self, body: AnyValue, attributes: MutableSequence[KeyValue], done: Redacted) -> None:
        if self._value("body", body):
            done.masked += 1
            if self.rules.summary != "silent":
                self._summarize(attributes, _MapReport(masked=["body"]), "redaction.body")

    def _summarize(self, kvs: MutableSequence[KeyValue], report: _MapReport, prefix: str) -> None:
        summary = self.rules.summary
        if summary == "silent":
            return
        for what, keys in (("redacted", report.removed), ("masked", report.masked)):
            if not keys:
                continue
            if summary == "debug":
                _put(kvs, f"{prefix}.{what}.keys", AnyValue(string_value=",".join(sorted(keys))))
            _put(kvs, f"{prefix}.{what}.count", AnyValue(int_value=len(keys)))
        if report.ignored:
            _put(kvs, f"{prefix}.ignored.count", AnyValue(int_value=report.ignored))


def _matches(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(pattern.search(text) for pattern in patterns)


def _put(kvs: Any, key: str, value: AnyValue) -> None:
    kvs.add(key=key, value=value)
