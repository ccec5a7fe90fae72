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
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.scrub import Scrubber

Summary = Literal["silent", "info", "debug"]
_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


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
    """Redacts whole requests in place; one per component, reused for every batch."""

    def __init__(self, scrubber: Scrubber, rules: RedactionRules | None = None) -> None:
        self.scrubber = scrubber
        self.rules = rules or RedactionRules()
        self._simple = (
            self.rules.allowed_keys is None
            and not self.rules.ignored_keys
            and not self.rules.allowed_values
            and self.rules.summary == "silent"
        )

    def redact(self, payload: Payload) -> Redacted:
        done = Redacted()
        if isinstance(payload, ExportTraceServiceRequest):
            self._traces(payload, done)
        elif isinstance(payload, ExportLogsServiceRequest):
            self._logs(payload, done)
        elif isinstance(payload, ExportMetricsServiceRequest):
            self._metrics(payload, done)
        return done

    # Signals ---------------------------------------------------------------------------
    def _traces(self, payload: ExportTraceServiceRequest, done: Redacted) -> None:
        attributes, value = self._attributes, self.scrubber.value
        for rs in payload.resource_spans:
            attributes(rs.resource.attributes, done)
            for ss in rs.scope_spans:
                attributes(ss.scope.attributes, done)
                for span in ss.spans:
                    attributes(span.attributes, done)
                    name = span.name
                    cleaned = value(name)
                    if cleaned != name:
                        span.name = cleaned
                        done.masked += 1
                    for event in span.events:
                        attributes(event.attributes, done)
                    for link in span.links:
                        attributes(link.attributes, done)

    def _logs(self, payload: ExportLogsServiceRequest, done: Redacted) -> None:
        for rl in payload.resource_logs:
            self._attributes(rl.resource.attributes, done)
            for sl in rl.scope_logs:
                self._attributes(sl.scope.attributes, done)
                for record in sl.log_records:
                    self._attributes(record.attributes, done)
                    if record.HasField("body"):
                        self._body(record.body, record.attributes, done)

    def _metrics(self, payload: ExportMetricsServiceRequest, done: Redacted) -> None:
        for rm in payload.resource_metrics:
            self._attributes(rm.resource.attributes, done)
            for sm in rm.scope_metrics:
                self._attributes(sm.scope.attributes, done)
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind not in _POINT_FIELDS:
                        continue
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
