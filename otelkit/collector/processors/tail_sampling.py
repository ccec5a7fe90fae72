"""``tail_sampling`` processor: decides per whole trace which traces to keep.

Always kept (each can be turned off under ``keep``): traces with an error span, a
budget breach (``otelkit.budget.exceeded = true``) or a performance issue
(``otelkit.perf_issue.type``). Then the configured ``policies``, upstream-shaped
(``latency``, ``status_code``, ``string_attribute``, ``probabilistic``,
``rate_limiting``, ``always_sample``): a trace is kept when any policy samples it.

``decision_wait`` is how long spans are gathered before deciding; ``num_traces``
bounds the traces held (the oldest are decided early past it); decisions are cached
(``decision_cache``) so late spans follow their trace's decision. Dropped spans count
in ``otelcol_processor_dropped_spans``.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import BaseModel, ConfigDict, Field

from otelkit.budgets.findings import BUDGET_EXCEEDED, PERF_ISSUE_TYPE
from otelkit.budgets.matcher import any_value_text
from otelkit.budgets.tracebuffer import BufferedTraceProcessor, HeldTrace
from otelkit.budgets.wire import key_pattern
from otelkit.collector.pdata.signals import Signal
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
_PolicyFn = Callable[[list[Span]], bool]
# ``otelkit.budget.exceeded = true`` as a whole KeyValue, and the perf-issue key.
_EXCEEDED_TRUE = key_pattern(BUDGET_EXCEEDED) + b"\x02\x10\x01"
_PERF_ISSUE = key_pattern(PERF_ISSUE_TYPE)


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
    """A bounded LRU of decided trace IDs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def add(self, trace_id: bytes) -> None:
        if self.size <= 0:
            return
        self._ids[trace_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, trace_id: bytes) -> bool:
        return trace_id in self._ids


class TailSamplingProcessor(BufferedTraceProcessor):
    def __init__(
        self, settings: CreateSettings, config: TailSamplingConfig, next_consumer: Consumer
    ):
        super().__init__(settings, next_consumer, config.decision_wait, config.num_traces)
        self._config = config
        self._sampled = _Cache(config.decision_cache.sampled_cache_size)
        self._not_sampled = _Cache(config.decision_cache.non_sampled_cache_size)
        # Decisions of the last decision_wait: batches still held may need them.
        self._decided: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._policies = [self._compile(p) for p in config.policies]
        self._decisions = settings.telemetry.counter(
            "otelkit_tail_sampling_decisions", "Traces decided", ("decision", "reason")
        )
        self._decision_children: dict[tuple[bool, str], Any] = {}

    def is_decided(self, trace_id: bytes) -> bool:
        return trace_id in self._sampled or trace_id in self._not_sampled

    def judge(self, traces: list[HeldTrace]) -> None:
        now = time.monotonic()
        horizon = now - self.buffer.wait - 1.0
        while self._decided and next(iter(self._decided.values()))[1] < horizon:
            self._decided.popitem(last=False)
        for trace in traces:
            reason = self._reason_to_keep(trace.spans)
            keep = reason is not None
            self._decided[trace.trace_id] = (keep, now)
            (self._sampled if keep else self._not_sampled).add(trace.trace_id)
            self._count_decision(keep, reason or "")

    def _count_decision(self, keep: bool, reason: str) -> None:
        key = (keep, reason)
        child = self._decision_children.get(key)
        if child is None:
            decision = "sampled" if keep else "not_sampled"
            child = self._decision_children[key] = self._decisions.labels(decision, reason)
        child.inc()

    def prepare(self, payload: ExportTraceServiceRequest) -> ExportTraceServiceRequest | None:
        dropped = 0
        for rs_index in range(len(payload.resource_spans) - 1, -1, -1):
            rs = payload.resource_spans[rs_index]
            for ss_index in range(len(rs.scope_spans) - 1, -1, -1):
                spans = rs.scope_spans[ss_index].spans
                for i in range(len(spans) - 1, -1, -1):
                    if not self._keeps(spans[i].trace_id):
                        del spans[i]
                        dropped += 1
                if not spans:
                    del rs.scope_spans[ss_index]
            if not rs.scope_spans:
                del payload.resource_spans[rs_index]
        if dropped:
            label = str(self._settings.id)
            self._settings.telemetry.processor_dropped(label, Signal.TRACES, dropped)
        return payload

    def _keeps(self, trace_id: bytes) -> bool:
        decision = self._decided.get(trace_id)
        if decision is not None:
            return decision[0]
        return trace_id in self._sampled

    def _reason_to_keep(self, spans: list[Span]) -> str | None:
        keep = self._config.keep
        if keep.errors and any(s.status.code == Status.STATUS_CODE_ERROR for s in spans):
            return "error"
        if keep.budget_breaches or keep.perf_issues:
            marker = _marker(spans)
            if marker == BUDGET_EXCEEDED and keep.budget_breaches:
                return "budget_breach"
            if marker == PERF_ISSUE_TYPE and keep.perf_issues:
                return "perf_issue"
        for name, policy in self._policies:
            if policy(spans):
                return name
        return None

    def _compile(self, policy: Policy) -> tuple[str, _PolicyFn]:
        if isinstance(policy, AlwaysSample):
            return policy.name, lambda spans: True
        if isinstance(policy, Latency):
            limit_ns = policy.latency.threshold_ms * 1e6
            return policy.name, lambda spans: _trace_duration_ns(spans) >= limit_ns
        if isinstance(policy, StatusCode):
            codes = frozenset(_STATUS[c] for c in policy.status_code.status_codes)
            return policy.name, lambda spans: any(s.status.code in codes for s in spans)
        if isinstance(policy, StringAttribute):
            return policy.name, _string_attribute(policy.string_attribute)
        if isinstance(policy, Probabilistic):
            bound = int(policy.probabilistic.sampling_percentage / 100 * 2**64)
            return policy.name, lambda spans: int.from_bytes(spans[0].trace_id[-8:]) < bound
        assert isinstance(policy, RateLimiting)
        rate = policy.rate_limiting.spans_per_second
        return policy.name, lambda spans: self._take_tokens(len(spans), rate)

    def _take_tokens(self, n: int, rate: int) -> bool:
        now = time.monotonic()
        self._tokens = min(float(rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


def _marker(spans: list[Span]) -> str | None:
    """``otelkit.budget.exceeded`` (when true) or ``otelkit.perf_issue.type`` if any span
    has one, found in the spans' wire bytes (cheaper than walking their attributes)."""
    found: str | None = None
    for span in spans:
        data = span.SerializeToString()
        if _EXCEEDED_TRUE in data:
            return BUDGET_EXCEEDED
        if found is None and _PERF_ISSUE in data:
            found = PERF_ISSUE_TYPE
    return found


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
