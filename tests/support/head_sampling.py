"""Head sampling as an app sets it up, for tests and benchmarks of span counts.

:func:`head_sampler` is otelkit's ``parentbased_traceidratio``: the root span is kept
with the given probability and its ``ot=th`` threshold written into the trace state (the
OpenTelemetry consistent-probability sampling specification); children follow their
parent and keep its threshold. Every test and benchmark that needs a head-sampled app
takes its sampler from here.
"""

from __future__ import annotations

import random

from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler

from otelkit.presets.sampling import ParentThresholdSampler, ProbabilitySampler


def head_sampler(ratio: float) -> Sampler:
    """The head sampler an app configured with ``ratio`` runs."""
    return ParentThresholdSampler(ProbabilitySampler(ratio))


class SeededIds(IdGenerator):
    """Random trace and span IDs from a seed, so a sampled run is the same every time."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1
