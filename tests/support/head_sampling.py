"""A head sampler for tests, on the real OpenTelemetry SDK, that keeps a share of traces
and writes the consistent-probability threshold into the trace state (``ot=th:<hex>``),
as the OpenTelemetry sampling specification describes: randomness R is the low 56 bits
of the trace ID, the threshold T = (1 - ratio) * 2^56, and a root span is kept when
R >= T. Child spans follow their parent's decision and keep its trace state.

Tests and benchmarks take their head sampler from :func:`head_sampler`, so all of them
can be pointed at otelkit's own sampler (``otelkit.presets``) in one place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

_ALL = 1 << 56


def head_sampler(ratio: float) -> Sampler:
    """The head sampler the tests run apps with, keeping ``ratio`` of the traces."""
    return ThresholdSampler(ratio)


class ThresholdSampler(Sampler):
    def __init__(self, ratio: float) -> None:
        self.threshold = _ALL - round(ratio * _ALL)
        digits = f"{self.threshold:014x}".rstrip("0")
        self.th = digits or "0"

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
        parent = get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            decision = Decision.RECORD_AND_SAMPLE if parent.trace_flags.sampled else Decision.DROP
            return SamplingResult(decision, attributes, parent.trace_state)
        if trace_id & (_ALL - 1) < self.threshold:
            return SamplingResult(Decision.DROP)
        state = trace_state or TraceState()
        value = f"th:{self.th}"
        state = state.update("ot", value) if "ot" in state else state.add("ot", value)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)

    def get_description(self) -> str:
        return f"ThresholdSampler{{th:{self.th}}}"


class SeededIds(IdGenerator):
    """Random trace and span IDs from a seed, so a sampled run is the same every time."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1
