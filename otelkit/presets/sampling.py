"""Head samplers that say how likely a kept span was to be kept.

They follow the OpenTelemetry consistent probability sampling specification
(``trace/tracestate-probability-sampling.md``): a trace's randomness R is the low 56 bits
of its trace ID, or the explicit ``rv`` value of the ``ot`` trace-state entry when there is
one; a sampler with probability p has the rejection threshold T = (1 - p) * 2^56 and keeps
the span when R >= T. A kept span carries ``ot=th:<T>`` (14 hex digits, trailing zeros
dropped; ``th:0`` for p = 1), so a span-metrics connector downstream can count it 1/p
times. Other trace-state entries, and other ``ot`` sub-keys, pass through unchanged.

Why not the SDK's ``_sampling_experimental`` composite samplers: they are private, the
SDK's tracer does not hand them the parent's trace state (so a child neither sees its
parent's threshold nor keeps upstream entries), and their parent-based sampler drops the
child of a sampled parent whose threshold is inconsistent, where the specification erases
the threshold and follows the parent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

_logger = logging.getLogger("otelkit.presets")

RANDOMNESS_BITS = 56
MAX_THRESHOLD = 1 << RANDOMNESS_BITS  # rejects everything: probability 0
RANDOMNESS_MASK = MAX_THRESHOLD - 1
OT_KEY = "ot"
_HEX_DIGITS = RANDOMNESS_BITS // 4
_LOWER_HEX = frozenset("0123456789abcdef")


def threshold_for(probability: float) -> int:
    """T = (1 - p) * 2^56, computed as 2^56 - p * 2^56 so small p keep their precision."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"a sampling probability is between 0 and 1, not {probability!r}")
    return MAX_THRESHOLD - round(probability * MAX_THRESHOLD)


def encode_threshold(threshold: int) -> str:
    """The ``th`` value: 14 hex digits with trailing zeros dropped, ``0`` for p = 1."""
    return "0" if threshold == 0 else f"{threshold:014x}".rstrip("0")


def _hex(text: str) -> int | None:
    return int(text, 16) if text and set(text) <= _LOWER_HEX else None


def decode_threshold(text: str) -> int | None:
    """1-14 lowercase hex digits, extended with trailing zeros to 14; None if invalid."""
    if len(text) > _HEX_DIGITS:
        return None
    value = _hex(text)
    return None if value is None else value << (4 * (_HEX_DIGITS - len(text)))


def decode_randomness(text: str) -> int | None:
    """Exactly 14 lowercase hex digits; None if invalid."""
    return _hex(text) if len(text) == _HEX_DIGITS else None


@dataclass(frozen=True)
class OtEntry:
    """The ``ot`` trace-state value: ``th`` and ``rv`` parsed, other sub-keys kept as written."""

    threshold: int | None = None
    randomness: int | None = None
    others: tuple[str, ...] = ()

    def encode(self) -> str:
        members = list(self.others)
        if self.randomness is not None:
            members.insert(0, f"rv:{self.randomness:014x}")
        if self.threshold is not None:
            members.insert(0, f"th:{encode_threshold(self.threshold)}")
        return ";".join(members)

    def randomness_of(self, trace_id: int) -> int:
        return self.randomness if self.randomness is not None else trace_id & RANDOMNESS_MASK


@functools.lru_cache(maxsize=256)
def parse_ot(value: str) -> OtEntry:
    """Parsed once per distinct value: a trace's spans share their parent's entry."""
    threshold = randomness = None
    others = []
    for member in value.split(";"):
        key, _, text = member.partition(":")
        if key == "th":
            threshold = decode_threshold(text)
        elif key == "rv":
            randomness = decode_randomness(text)
        elif member:
            others.append(member)
    return OtEntry(threshold, randomness, tuple(others))


_NO_OT_ENTRY = OtEntry()


def _ot_entry(state: TraceState | None) -> OtEntry:
    value = state.get(OT_KEY) if state else None
    return parse_ot(value) if value else _NO_OT_ENTRY


def with_ot(state: TraceState | None, entry: OtEntry) -> TraceState | None:
    """``state`` with its ``ot`` entry replaced by ``entry`` (removed when empty)."""
    encoded = entry.encode()
    if state is None:
        return TraceState([(OT_KEY, encoded)]) if encoded else None
    if not encoded:
        return state.delete(OT_KEY) if OT_KEY in state else state
    return state.update(OT_KEY, encoded) if OT_KEY in state else state.add(OT_KEY, encoded)


def _without_threshold(state: TraceState | None) -> TraceState | None:
    entry = _ot_entry(state)
    return state if entry.threshold is None else with_ot(state, replace(entry, threshold=None))


def _parent(parent_context: Context | None) -> SpanContext | None:
    span_context = get_current_span(parent_context).get_span_context()
    return span_context if span_context.is_valid else None


class _Once:
    warned = False


def _warn_presumed_randomness(parent: SpanContext, entry: OtEntry) -> None:
    if _Once.warned or entry.randomness is not None or parent.trace_flags.random_trace_id:
        return
    _Once.warned = True
    _logger.warning(
        "the ProbabilitySampler is presuming trace IDs are random, but an upstream caller "
        "did not set the W3C Trace Context Level 2 random flag; sampling decisions across "
        "services may disagree until every caller sets it"
    )


class ProbabilitySampler(Sampler):
    """Keeps a span with the given probability, independently of its parent's decision
    (``traceidratio``, ``always_on``), and records the threshold it applied."""

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.threshold = threshold_for(probability)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = _parent(parent_context)
        state = parent.trace_state if parent is not None else None
        entry = _ot_entry(state)
        if parent is not None:
            _warn_presumed_randomness(parent, entry)
        if self.threshold < MAX_THRESHOLD and entry.randomness_of(trace_id) >= self.threshold:
            kept = replace(entry, threshold=self.threshold)
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, with_ot(state, kept))
        return SamplingResult(Decision.DROP, None, with_ot(state, replace(entry, threshold=None)))

    def get_description(self) -> str:
        return f"ProbabilitySampler{{{self.probability}}}"


class ParentThresholdSampler(Sampler):
    """``ParentBased``: a root span is decided by ``root``; a child follows its parent's
    sampled flag and keeps the parent's threshold, which is erased when the parent's
    randomness does not pass it (the parent was not sampled consistently)."""

    def __init__(self, root: Sampler) -> None:
        self.root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = _parent(parent_context)
        if parent is None:
            return self.root.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        state: TraceState | None = parent.trace_state
        if not parent.trace_flags.sampled:
            return SamplingResult(Decision.DROP, None, _without_threshold(state))
        entry = _ot_entry(state)
        if entry.threshold is not None and entry.randomness_of(trace_id) < entry.threshold:
            state = with_ot(state, replace(entry, threshold=None))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)

    def get_description(self) -> str:
        return f"ParentThreshold{{root={self.root.get_description()}}}"
