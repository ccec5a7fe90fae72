"""A small DDSketch: quantiles with a stated relative error in bounded memory.

Values fall into logarithmic buckets ``(gamma^(i-1), gamma^i]`` with
``gamma = (1 + a) / (1 - a)``; the quantile estimate is within ``a`` (relative) of the
exact value of the same rank (Masson, Rim and Lee, VLDB 2019). With ``a = 0.01`` a
latency range from 1 us to 1 hour needs about 1,100 buckets; past ``max_buckets`` the
lowest buckets are merged, which keeps the guarantee for the upper quantiles that
budgets care about.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from typing import NamedTuple


class Batch(NamedTuple):
    """Values summarised once for the sketches they go into (see DDSketch.batch_of)."""

    made_for: tuple[float, float]  # relative accuracy, minimum value
    size: int
    zeros: int
    total: float
    top: float
    buckets: Counter[int]


class DDSketch:
    """Positive values only (durations); zero and tiny values count in a zero bucket."""

    __slots__ = (
        "_inv_log_gamma",
        "_log_gamma",
        "_sorted",
        "_watched",
        "buckets",
        "count",
        "max",
        "max_buckets",
        "min_value",
        "relative_accuracy",
        "sum",
        "zero_count",
    )

    def __init__(
        self, relative_accuracy: float = 0.01, max_buckets: int = 2048, min_value: float = 1e-6
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be between 0 and 1")
        self.relative_accuracy = relative_accuracy
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(gamma)
        self._inv_log_gamma = 1.0 / self._log_gamma
        self.max_buckets = max_buckets
        self.min_value = min_value
        self.buckets: dict[int, int] = {}
        self._sorted: list[int] | None = None  # sorted bucket indexes, while unchanged
        # Per watched limit: [highest bucket index whose value is within it, values in
        # buckets up to that index] (see watch and is_over).
        self._watched: dict[float, list[int]] = {}
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.max = max(self.max, value)
        if value <= self.min_value:
            self.zero_count += 1
            return
        index = math.ceil(math.log(value) * self._inv_log_gamma)
        buckets = self.buckets
        if index not in buckets:
            self._sorted = None
        buckets[index] = buckets.get(index, 0) + 1
        for watched in self._watched.values():
            if index <= watched[0]:
                watched[1] += 1
        if len(buckets) > self.max_buckets:
            self._collapse_lowest()

    def add_many(self, values: list[float]) -> None:
        """Add a batch of values: one pass in comprehensions, for the hot path."""
        if values:
            self.add_batch(self.batch_of(values))

    def batch_of(self, values: list[float]) -> Batch:
        """``values`` (not empty) summarised for :meth:`add_batch` of this sketch or any
        with the same relative accuracy and minimum value."""
        scale, log, ceil, floor_value = self._inv_log_gamma, math.log, math.ceil, self.min_value
        if min(values) > floor_value:  # the usual batch: no zeros, one C-level pass
            indexes = list(map(ceil, map(scale.__mul__, map(log, values))))
        else:
            indexes = [ceil(log(v) * scale) for v in values if v > floor_value]
        return Batch(
            (self.relative_accuracy, self.min_value),
            len(values),
            len(values) - len(indexes),
            sum(values),
            max(values),
            Counter(indexes),
        )

    def add_batch(self, batch: Batch) -> None:
        if batch.made_for != (self.relative_accuracy, self.min_value):
            raise ValueError("batch summarised for a sketch with other buckets")
        self.zero_count += batch.zeros
        self.count += batch.size
        self.sum += batch.total
        self.max = max(self.max, batch.top)
        buckets = self.buckets
        size = len(buckets)
        counts = batch.buckets  # summed in C: a batch spans a few hundred buckets
        sums = list(map(add, map(buckets.get, counts, repeat(0)), counts.values()))
        buckets.update(zip(counts, sums, strict=True))
        if len(buckets) != size:
            self._sorted = None
        if self._watched and batch.buckets:
            lowest, highest = min(batch.buckets), max(batch.buckets)
            for watched in self._watched.values():
                limit_index = watched[0]
                if highest <= limit_index:  # the usual case: all within the limit
                    watched[1] += batch.size - batch.zeros
                elif lowest <= limit_index:
                    watched[1] += sum(n for i, n in batch.buckets.items() if i <= limit_index)
        while len(buckets) > self.max_buckets:
            self._collapse_lowest()

    def watch(self, limit: float) -> None:
        """Keep, as values are added, what :meth:`is_over` needs for this limit."""
        if limit in self._watched:
            return
        if limit <= 0:
            limit_index = -(2**62)  # below every bucket
        else:
            limit_index = math.ceil(math.log(limit) * self._inv_log_gamma)
            while self._value_of(limit_index) > limit:
                limit_index -= 1
            while self._value_of(limit_index + 1) <= limit:
                limit_index += 1
        self._watched[limit] = [limit_index, 0]
        self._recount(self._watched[limit])

    def is_over(self, q: float, limit: float) -> bool:
        """``quantile(q) > limit`` for a watched limit, without a pass over the buckets
        (count must be positive)."""
        within = self._watched[limit][1]
        if limit >= 0.0:  # the zero bucket's value, 0.0, is within the limit
            within += self.zero_count
        return within <= math.floor(q * (self.count - 1))

    def _recount(self, watched: list[int]) -> None:
        watched[1] = sum(n for i, n in self.buckets.items() if i <= watched[0])

    def quantile(self, q: float) -> float | None:
        """The value at rank ``floor(q * (count - 1))``, within the relative accuracy."""
        if self.count == 0:
            return None
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """:meth:`quantile` of each of ``qs``, from one pass over the buckets."""
        if self.count == 0:
            return [None] * len(qs)
        keys = self._sorted
        if keys is None:
            keys = self._sorted = sorted(self.buckets)
        # cumulative[j]: values in the zero bucket and buckets keys[0..j].
        cumulative = list(accumulate(map(self.buckets.__getitem__, keys), initial=self.zero_count))
        del cumulative[0]
        out: list[float | None] = []
        for q in qs:
            rank = math.floor(q * (self.count - 1))
            if self.zero_count > rank:
                out.append(0.0)
                continue
            at = bisect_right(cumulative, rank)  # the first bucket whose running count passes
            out.append(self._value_of(keys[at]) if at < len(keys) else self.max)
        return out

    def merge(self, other: DDSketch) -> None:
        self._sorted = None
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)
        while len(self.buckets) > self.max_buckets:
            self._collapse_lowest()
        for watched in self._watched.values():
            self._recount(watched)

    def _value_of(self, index: int) -> float:
        # The point of (gamma^(i-1), gamma^i] with equal relative error to both ends.
        return 2.0 * math.exp(index * self._log_gamma) / (1.0 + math.exp(self._log_gamma))

    def _collapse_lowest(self) -> None:
        self._sorted = None
        low, second = sorted(self.buckets)[:2]
        self.buckets[second] += self.buckets.pop(low)
        for watched in self._watched.values():
            self._recount(watched)


@dataclass
class WindowSummary:
    start: float
    end: float
    count: int
    quantiles: dict[float, float | None]


@dataclass
class WindowedSketch:
    """Tumbling windows of ``window`` seconds: one live sketch, the last window's summary."""

    window: float
    quantiles: tuple[float, ...]
    relative_accuracy: float = 0.01
    start: float = 0.0
    sketch: DDSketch = field(init=False)
    last: WindowSummary | None = None
    watched: tuple[float, ...] = ()  # limits every window's sketch watches

    def __post_init__(self) -> None:
        self.sketch = self._new_sketch()

    def _new_sketch(self) -> DDSketch:
        sketch = DDSketch(self.relative_accuracy)
        for limit in self.watched:
            sketch.watch(limit)
        return sketch

    def roll(self, now: float) -> WindowSummary | None:
        """Close the live window if ``now`` is past its end; returns the closed summary."""
        if now < self.start + self.window:
            return None
        closed = None
        if self.sketch.count:
            end = self.start + self.window
            closed = WindowSummary(self.start, end, self.sketch.count, self.current())
            self.last = closed
        elapsed = (now - self.start) // self.window
        self.start = self.start + elapsed * self.window if self.start else now
        self.sketch = self._new_sketch()
        return closed

    def current(self) -> dict[float, float | None]:
        return {q: self.sketch.quantile(q) for q in self.quantiles}
