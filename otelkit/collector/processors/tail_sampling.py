"""``tail_sampling`` processor: decides per whole trace which traces to keep.

Always kept (each can be turned off under ``keep``): traces with an error span, a
budget breach (``otelkit.budget.exceeded = true``, or a budget finding event such as a
window percentile's) or a performance issue (``otelkit.perf_issue.type``). Then the configured ``policies``, upstream-shaped
(``latency``, ``status_code``, ``string_attribute``, ``probabilistic``,
``rate_limiting``, ``always_sample``): a trace is kept when any policy samples it.

``decision_wait`` is how long spans are gathered before deciding; ``num_traces``
bounds the traces held (the oldest are decided early past it, counted in
``otelcol_processor_tail_sampling_sampling_trace_dropped_too_early``); decisions are
cached (``decision_cache``) so late spans follow their trace's decision. Dropped spans
count in ``otelcol_processor_dropped_spans``.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from itertools import chain, compress
from typing import Annotated, Any, Literal

from google.protobuf import descriptor_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status
from pydantic import BaseModel, ConfigDict, Field

from otelkit.budgets.findings import (
    BUDGET_EXCEEDED,
    FINDING_KIND,
    KIND_BUDGET_BREACH,
    PERF_ISSUE_TYPE,
)
from otelkit.budgets.tracebuffer import (
    BufferedTraceProcessor,
    HeldBatch,
    HeldTrace,
    PackedScope,
    ReleasedScope,
    ScopeEntries,
    ScopeScan,
    ScopeWire,
    read_trace_ids,
)
from otelkit.collector.pdata._otlpjson_checked import varint
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.pdata.wire import (
    key_pattern,
    led_scope_spans_layout,
    shadow_classes,
)
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    processor_factory,
)
from otelkit.collector.runtime.types import Duration

_STATUS = {
    "UNSET": Status.STATUS_CODE_UNSET,
    "OK": Status.STATUS_CODE_OK,
    "ERROR": Status.STATUS_CODE_ERROR,
}
_PolicyFn = Callable[[HeldTrace], bool]
# ``otelkit.budget.exceeded = true`` as a whole KeyValue, the perf-issue key, and a
# budget-breach finding event's kind (a window percentile's finding sits on a span that
# may be within its own limit: its trace is kept as a breach too).
_EXCEEDED_TRUE = key_pattern(BUDGET_EXCEEDED) + b"\x02\x10\x01"
_PERF_ISSUE = key_pattern(PERF_ISSUE_TYPE)
_BREACH_FINDING = KeyValue(
    key=FINDING_KIND, value=AnyValue(string_value=KIND_BUDGET_BREACH)
).SerializeToString()
# Status.code = ERROR as it appears in a span's bytes; other bytes can look the same,
# so each occurrence is checked on the span itself.
_ERROR_CODE = b"\x18\x02"
_RESOURCE_SPANS_TAG = b"\x0a"  # ExportTraceServiceRequest.resource_spans: field 1, bytes
_SCOPE_SPANS_TAG = b"\x12"  # ResourceSpans.scope_spans: field 2, bytes
_SPAN_TAG = b"\x12"  # ScopeSpans.spans: field 2, bytes
# HeldTrace.flags bits: what some span of the trace has.
_ERROR, _EXCEEDED, _PERF = 1, 2, 4


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyPolicy(_Model):
    threshold_ms: float = Field(gt=0)


class StatusCodePolicy(_Model):
    status_codes: tuple[Literal["UNSET", "OK", "ERROR"], ...]


class StringAttributePolicy(_Model):
    key: str
    values: tuple[str, ...]
    enabled_regex_matching: bool = False
    invert_match: bool = False


class ProbabilisticPolicy(_Model):
    sampling_percentage: float = Field(ge=0, le=100)


class RateLimitingPolicy(_Model):
    spans_per_second: int = Field(gt=0)


class _Policy(_Model):
    name: str


class AlwaysSample(_Policy):
    type: Literal["always_sample"]


class Latency(_Policy):
    type: Literal["latency"]
    latency: LatencyPolicy


class StatusCode(_Policy):
    type: Literal["status_code"]
    status_code: StatusCodePolicy


class StringAttribute(_Policy):
    type: Literal["string_attribute"]
    string_attribute: StringAttributePolicy


class Probabilistic(_Policy):
    type: Literal["probabilistic"]
    probabilistic: ProbabilisticPolicy


class RateLimiting(_Policy):
    type: Literal["rate_limiting"]
    rate_limiting: RateLimitingPolicy


Policy = Annotated[
    AlwaysSample | Latency | StatusCode | StringAttribute | Probabilistic | RateLimiting,
    Field(discriminator="type"),
]


class KeepConfig(_Model):
    errors: bool = True
    budget_breaches: bool = True
    perf_issues: bool = True


class DecisionCacheConfig(_Model):
    sampled_cache_size: int = Field(100_000, ge=0)
    non_sampled_cache_size: int = Field(100_000, ge=0)


class TailSamplingConfig(ComponentConfig):
    decision_wait: Duration = Field(10.0, ge=0)
    num_traces: int = Field(50_000, ge=1)
    keep: KeepConfig = KeepConfig()
    policies: tuple[Policy, ...] = ()
    decision_cache: DecisionCacheConfig = DecisionCacheConfig()


class _Cache:
    """A bounded set of decided trace IDs; past its size the oldest go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids: set[bytes] = set()  # read directly: ``in`` on it is a C call
        self._order: deque[bytes] = deque()

    def add(self, trace_id: bytes) -> None:
        if self.size <= 0 or trace_id in self.ids:
            return
        self.ids.add(trace_id)
        self._order.append(trace_id)
        if len(self._order) > self.size:
            self.ids.remove(self._order.popleft())


class TailSamplingProcessor(BufferedTraceProcessor):
    """Spans are not walked one by one to find what makes a trace worth keeping: each
    ScopeSpans is serialised once and searched for the breach and perf-issue marks and
    error statuses, and the few spans found are told apart by their byte offsets.
    Spans are held per trace only when a policy reads them."""

    def __init__(
        self, settings: CreateSettings, config: TailSamplingConfig, next_consumer: Consumer
    ):
        self._config = config
        self._policies = [self._compile(p) for p in config.policies]
        self._needs_spans = any(
            isinstance(p, Latency | StatusCode | StringAttribute) for p in config.policies
        )
        keep = config.keep
        self._marks = [
            (pattern, bit)
            for pattern, bit, wanted in (
                (_EXCEEDED_TRUE, _EXCEEDED, keep.budget_breaches or keep.perf_issues),
                (_BREACH_FINDING, _EXCEEDED, keep.budget_breaches or keep.perf_issues),
                (_PERF_ISSUE, _PERF, keep.budget_breaches or keep.perf_issues),
            )
            if wanted
        ]
        super().__init__(settings, next_consumer, config.decision_wait, config.num_traces)
        self._sampled = _Cache(config.decision_cache.sampled_cache_size)
        self._not_sampled = _Cache(config.decision_cache.non_sampled_cache_size)
        # Decisions of the last decision_wait: batches still held may need them.
        self._decided: dict[bytes, tuple[bool, float]] = {}
        self._decided_in_order: deque[tuple[float, list[bytes]]] = deque()  # (when, traces)
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._decisions = settings.telemetry.counter(
            "otelkit_tail_sampling_decisions", "Traces decided", ("decision", "reason")
        )
        self._decision_children: dict[tuple[bool, str], Any] = {}
        # Upstream's name, so its alerts and dashboards carry over. Upstream loses such a
        # trace's spans; here the trace is decided on the spans held so far. The cause
        # and the fix are the same: num_traces is too small for the traffic.
        self._decided_early = settings.telemetry.counter(
            "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early",
            "Traces decided before decision_wait ended because num_traces was reached",
            ("processor",),
        ).labels(str(settings.id))
        self._decided_early_counted = 0

    def keeps_spans(self) -> bool:
        return self._needs_spans

    def filters_by_trace(self) -> bool:
        return True

    def scan(self, scope_spans: ScopeSpans) -> ScopeScan:
        if not self._marks and not self._config.keep.errors:
            return read_trace_ids(scope_spans)
        data = scope_spans.SerializeToString()
        try:
            layout = led_scope_spans_layout(data)
        except ValueError:
            layout = None
        # Bytes it cannot walk, or a span not led by its trace ID: read span by span.
        if layout is None or len(layout[0]) != len(scope_spans.spans):
            return self._scan_spans(scope_spans)
        starts, ends, ids = layout
        return self._scan_wire(scope_spans, ScopeWire(data, starts, ends), ids)

    def reads_released_scopes(self) -> bool:
        return True

    def scan_released(self, scope_spans: ScopeSpans, released: ReleasedScope) -> ScopeScan:
        """:meth:`scan` without serialising and walking the scope again: ``perf_issues``
        released these very bytes and knows where their spans are."""
        if not self._marks and not self._config.keep.errors:
            return ScopeScan(released.trace_ids, {})
        if not released.led or len(released.trace_ids) != len(scope_spans.spans):
            return self._scan_spans(scope_spans)
        return self._scan_wire(scope_spans, released.wire, released.trace_ids)

    def _scan_wire(self, scope_spans: ScopeSpans, wire: ScopeWire, ids: list[bytes]) -> ScopeScan:
        """Flags from the scope's bytes: the marks searched for, the error statuses."""
        data, starts, ends = wire.data, wire.starts, wire.ends
        spans = scope_spans.spans
        flags: dict[int, int] = {}
        for pattern, bit in self._marks:
            _flag_occurrences(data, pattern, bit, starts, ends, flags, None)
        if self._config.keep.errors:
            errors = _error_spans(data, len(spans))
            if errors is None:
                _flag_occurrences(data, _ERROR_CODE, _ERROR, starts, ends, flags, spans)
            for k in errors or ():
                flags[k] = flags.get(k, 0) | _ERROR
        return ScopeScan(ids, flags, wire)

    def _scan_spans(self, scope_spans: ScopeSpans) -> ScopeScan:
        ids: list[bytes] = []
        flags: dict[int, int] = {}
        for k, span in enumerate(scope_spans.spans):
            ids.append(span.trace_id)
            data = span.SerializeToString()
            bits = 0
            for pattern, bit in self._marks:
                if pattern in data:
                    bits |= bit
            if self._config.keep.errors and span.status.code == Status.STATUS_CODE_ERROR:
                bits |= _ERROR
            if bits:
                flags[k] = bits
        return ScopeScan(ids, flags)

    def is_decided(self, trace_id: bytes) -> bool:
        return trace_id in self._sampled.ids or trace_id in self._not_sampled.ids

    def judge(self, traces: list[HeldTrace]) -> None:
        now = time.monotonic()
        self._forget_decisions(now - self.buffer.wait - 1.0)
        self._decided_in_order.append((now, [trace.trace_id for trace in traces]))
        counts: dict[tuple[bool, str], int] = {}
        decisions = {True: (True, now), False: (False, now)}  # shared by this call's traces
        for trace in traces:
            reason = self._reason_to_keep(trace)
            keep = reason is not None
            self._decided[trace.trace_id] = decisions[keep]
            (self._sampled if keep else self._not_sampled).add(trace.trace_id)
            key = (keep, reason or "")
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():  # one counter update per outcome, not per trace
            self._count_decisions(key, n)
        early = self.buffer.decided_early - self._decided_early_counted
        if early:
            self._decided_early.inc(early)
            self._decided_early_counted += early

    def _forget_decisions(self, horizon: float) -> None:
        """Drops the decisions made before ``horizon`` (a trace decided again since keeps
        its newer decision)."""
        while self._decided_in_order and self._decided_in_order[0][0] < horizon:
            for trace_id in self._decided_in_order.popleft()[1]:
                decision = self._decided.get(trace_id)
                if decision is not None and decision[1] < horizon:
                    del self._decided[trace_id]

    def _count_decisions(self, key: tuple[bool, str], n: int) -> None:
        child = self._decision_children.get(key)
        if child is None:
            keep, reason = key
            decision = "sampled" if keep else "not_sampled"
            child = self._decision_children[key] = self._decisions.labels(decision, reason)
        child.inc(n)

    def prepare(self, batch: HeldBatch) -> ExportTraceServiceRequest | None:
        if batch.wire is not None:
            return self._rebuild(batch.wire)
        payload = batch.payload
        assert payload is not None
        scopes = [ss for rs in payload.resource_spans for ss in rs.scope_spans]
        if len(scopes) != len(batch.trace_ids):  # changed since held: read the IDs again
            batch.trace_ids = [read_trace_ids(ss).trace_ids for ss in scopes]
        dropped = 0
        at = len(scopes)
        for rs_index in range(len(payload.resource_spans) - 1, -1, -1):
            rs = payload.resource_spans[rs_index]
            for ss_index in range(len(rs.scope_spans) - 1, -1, -1):
                at -= 1
                spans = rs.scope_spans[ss_index].spans
                dropped += self._filter(spans, batch.trace_ids[at])
                if not spans:
                    del rs.scope_spans[ss_index]
            if not rs.scope_spans:
                del payload.resource_spans[rs_index]
        if dropped:
            label = str(self._settings.id)
            self._settings.telemetry.processor_dropped(label, Signal.TRACES, dropped)
        return payload

    def _rebuild(self, wire: list[tuple[bytes, list[PackedScope]]]) -> ExportTraceServiceRequest:
        """The batch from its held bytes, with only the spans of kept traces: the bytes of
        dropped spans are cut out, and only what is kept is parsed."""
        out = bytearray()
        dropped = 0
        for header, scopes in wire:
            body = bytearray(header)
            for packed in scopes:
                kept, n = self._filter_bytes(packed.entries())
                dropped += n
                if kept is not None:
                    body += _SCOPE_SPANS_TAG + varint(len(kept)) + kept
            if len(body) > len(header):  # a resource left without scopes goes
                out += _RESOURCE_SPANS_TAG + varint(len(body)) + body
        if dropped:
            label = str(self._settings.id)
            self._settings.telemetry.processor_dropped(label, Signal.TRACES, dropped)
        rebuilt = ExportTraceServiceRequest()
        rebuilt.ParseFromString(bytes(out))
        return rebuilt

    def _filter_bytes(self, scope: ScopeEntries) -> tuple[bytes | None, int]:
        """A ScopeSpans' bytes without the spans of traces not kept (None when no span is
        left), and how many spans were cut: the scope's own fields and the kept spans'
        fields, joined by iterators rather than span by span in Python."""
        data, bounds, trace_ids, traces = scope
        if not traces:
            return None, 0
        keeps = [self._keeps(trace_id) for trace_id in trace_ids]
        if all(keeps):
            return data, 0
        if not any(keeps):
            return None, len(traces)
        keep = list(map(keeps.__getitem__, traces))
        heads, ends = compress(bounds, keep), compress(bounds[1:], keep)
        kept = map(data.__getitem__, map(slice, heads, ends))
        body = b"".join(chain((data[: bounds[0]],), kept, (data[bounds[-1] :],)))
        return body, len(keep) - sum(keep)

    def _filter(self, spans: Any, ids: list[bytes]) -> int:
        """Deletes the spans of traces not kept, a run at a time; returns how many."""
        if len(ids) != len(spans):
            ids = [span.trace_id for span in spans]
        keeps = {trace_id: self._keeps(trace_id) for trace_id in dict.fromkeys(ids)}
        if all(keeps.values()):
            return 0
        if not any(keeps.values()):
            n = len(spans)
            del spans[:]
            return n
        dropped = 0
        end = len(ids)
        while end > 0:
            if keeps[ids[end - 1]]:
                end -= 1
                continue
            begin = end - 1
            while begin > 0 and not keeps[ids[begin - 1]]:
                begin -= 1
            del spans[begin:end]
            dropped += end - begin
            end = begin
        return dropped

    def _keeps(self, trace_id: bytes) -> bool:
        decision = self._decided.get(trace_id)
        if decision is not None:
            return decision[0]
        return trace_id in self._sampled.ids

    def _reason_to_keep(self, trace: HeldTrace) -> str | None:
        keep = self._config.keep
        flags = trace.flags
        if keep.errors and flags & _ERROR:
            return "error"
        # A breach mark outranks a perf-issue mark even where breaches are not kept.
        if flags & _EXCEEDED:
            if keep.budget_breaches:
                return "budget_breach"
        elif flags & _PERF and keep.perf_issues:
            return "perf_issue"
        for name, policy in self._policies:
            if policy(trace):
                return name
        return None

    def _compile(self, policy: Policy) -> tuple[str, _PolicyFn]:
        if isinstance(policy, AlwaysSample):
            return policy.name, lambda trace: True
        if isinstance(policy, Latency):
            limit_ns = policy.latency.threshold_ms * 1e6
            return policy.name, lambda trace: _trace_duration_ns(trace.spans) >= limit_ns
        if isinstance(policy, StatusCode):
            codes = frozenset(_STATUS[c] for c in policy.status_code.status_codes)
            return policy.name, lambda trace: any(s.status.code in codes for s in trace.spans)
        if isinstance(policy, StringAttribute):
            test = _string_attribute(policy.string_attribute)
            return policy.name, lambda trace: test(trace.spans)
        if isinstance(policy, Probabilistic):
            bound = int(policy.probabilistic.sampling_percentage / 100 * 2**64)
            return policy.name, lambda trace: int.from_bytes(trace.trace_id[-8:]) < bound
        assert isinstance(policy, RateLimiting)
        rate = policy.rate_limiting.spans_per_second
        return policy.name, lambda trace: self._take_tokens(trace.span_count, rate)

    def _take_tokens(self, n: int, rate: int) -> bool:
        now = time.monotonic()
        self._tokens = min(float(rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


def _status_codes_type() -> Any:
    """A ScopeSpans that knows nothing of its spans but their status codes."""
    f = descriptor_pb2.FieldDescriptorProto
    return shadow_classes(
        "otelkit.statuses",
        {
            "Status": [("f", 3, f.TYPE_INT32, f.LABEL_OPTIONAL, "")],  # Status.code
            "Span": [("f", 15, f.TYPE_MESSAGE, f.LABEL_OPTIONAL, "Status")],  # Span.status
            "ScopeSpans": [("f", 2, f.TYPE_MESSAGE, f.LABEL_REPEATED, "Span")],  # .spans
        },
    )["ScopeSpans"]


_SpanStatuses = _status_codes_type()


def _error_spans(data: bytes, count: int) -> list[int] | None:
    """The indexes of a serialised ScopeSpans' spans whose status is ERROR. The bytes are
    parsed (in C) as :func:`_status_codes_type`, everything else dropped, and what is left,
    a few bytes per span (``12 LL [7a LL [18 code]]``), searched: searching the whole
    bytes for the status field's two bytes costs more. None where a status code is
    outside the enum's values (a code byte could then be taken for a span's tag)."""
    statuses = _SpanStatuses.FromString(data)
    statuses.DiscardUnknownFields()
    left = statuses.SerializeToString()
    at = left.find(_ERROR_CODE)
    if at < 0:
        return []
    if left.count(_SPAN_TAG) != count:
        return None
    found: list[int] = []
    while at >= 0:  # the span whose field holds it: as many tags before it, less one
        found.append(left.count(_SPAN_TAG, 0, at) - 1)
        at = left.find(_ERROR_CODE, at + 2)
    return found


def _flag_occurrences(
    data: bytes,
    pattern: bytes,
    bit: int,
    starts: Sequence[int],
    ends: Sequence[int],
    flags: dict[int, int],
    confirm_error_on: Any,
) -> None:
    """Sets ``bit`` for each span whose bytes contain ``pattern`` (with
    ``confirm_error_on``, the spans: only where that span's status is ERROR)."""
    at = data.find(pattern)
    while at >= 0:
        k = bisect_right(starts, at) - 1
        if k < 0 or at + len(pattern) > ends[k]:  # not inside one span
            at = data.find(pattern, at + 1)
            continue
        if confirm_error_on is None or confirm_error_on[k].status.code == Status.STATUS_CODE_ERROR:
            flags[k] = flags.get(k, 0) | bit
        at = data.find(pattern, ends[k])  # this span is settled: on to the next


def _trace_duration_ns(spans: list[Span]) -> int:
    return max(s.end_time_unix_nano for s in spans) - min(s.start_time_unix_nano for s in spans)


def _string_attribute(cfg: StringAttributePolicy) -> Callable[[list[Span]], bool]:
    test: Callable[[str], bool]
    if cfg.enabled_regex_matching:
        regex = re.compile("|".join(f"(?:{v})" for v in cfg.values))
        test = lambda text: regex.fullmatch(text) is not None  # noqa: E731
    else:
        test = frozenset(cfg.values).__contains__

    def policy(spans: list[Span]) -> bool:
        for span in spans:
            for kv in span.attributes:
                if kv.key == cfg.key and test(any_value_text(kv.value)):
                    return not cfg.invert_match
        return cfg.invert_match

    return policy


def _create(
    settings: CreateSettings, config: TailSamplingConfig, signal: Signal, next_consumer: Consumer
) -> TailSamplingProcessor:
    return TailSamplingProcessor(settings, config, next_consumer)


factory = processor_factory(
    "tail_sampling", TailSamplingConfig, _create, frozenset({Signal.TRACES})
)
