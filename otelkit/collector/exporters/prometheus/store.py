"""The scrape exporter's state: the latest cumulative point of every series.

Rules (the upstream exporter's accumulator):

* a cumulative point replaces the stored one unless it is older; a counter reset is
  passed through as the lower value with its new start time, and Prometheus' ``rate``
  handles it;
* a delta point is added to the stored one when its start equals the stored point's
  end (contiguous); otherwise it starts a new cumulative series (a reset);
* a point flagged "no recorded value" removes its series;
* a series not updated for ``expiration`` seconds is dropped (0 keeps it forever);
* a family owns its name and the names of its samples in both formats (a counter
  ``x_total`` is ``x`` in OpenMetrics; a histogram ``h`` writes ``h_bucket``, ``h_sum``
  and ``h_count``) until it is gone: a later metric of another type that would write
  any of them is refused, counted, as the upstream exporter's registry refuses the
  second of two colliding metrics. Two families writing one name make the scrape
  unparseable, and replacing the first would drop every series of another app.
  ``target_info`` is always the resources' gauge.

Points are immutable and replaced, never mutated, so a scrape renders from a snapshot
(lists of references taken on the event loop) in a worker thread while ingestion goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from otelkit.collector.exporters.prometheus.translation import (
    TARGET_INFO,
    Exemplar,
    Family,
    HistogramPoint,
    Labels,
    NumberPoint,
    Point,
    Rejected,
    Translated,
)


class _Series:
    __slots__ = ("label_text", "point", "seen")

    def __init__(self, label_text: str, point: Point, seen: float) -> None:
        self.label_text = label_text
        self.point = point
        self.seen = seen


class _FamilyState:
    __slots__ = ("family", "series")

    def __init__(self, family: Family) -> None:
        self.family = family
        self.series: dict[Labels, _Series] = {}


@dataclass(frozen=True, slots=True)
class FamilySnapshot:
    family: Family
    series: list[tuple[str, Point]]
    """(rendered label text, point) per series."""


def sample_names(family: Family) -> tuple[str, ...]:
    """Every family and sample name ``family`` writes in text 0.0.4 or OpenMetrics."""
    name = family.name
    if family.kind == "counter":
        base = name.removesuffix("_total")
        return (name, base, base + "_total", base + "_created")
    if family.kind == "histogram":
        return (name, name + "_bucket", name + "_sum", name + "_count", name + "_created")
    if family.kind == "summary":
        return (name, name + "_sum", name + "_count", name + "_created")
    return (name,)


class NameClaims:
    """Which family owns each name a scrape would write; the first to come keeps it."""

    _RESERVED = {TARGET_INFO: TARGET_INFO}

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def claim(self, family: Family) -> bool:
        """True when ``family`` may be shown: none of its names belongs to another."""
        names = sample_names(family)
        for name in names:
            owner = self._owners.get(name) or self._RESERVED.get(name, family.name)
            if owner != family.name or (name == TARGET_INFO and family.kind != "gauge"):
                return False
        for name in names:
            self._owners[name] = family.name
        return True

    def release(self, family: Family) -> None:
        for name in sample_names(family):
            if self._owners.get(name) == family.name:
                del self._owners[name]


class CumulativeStore:
    """Series by family name then labels. Used from the event loop only."""

    def __init__(self, expiration: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.expiration = expiration
        self._clock = clock
        self._families: dict[str, _FamilyState] = {}
        self._claims = NameClaims()
        self.generation = 0
        """Changes whenever what a scrape would show changes (render cache key)."""

    def __len__(self) -> int:
        return sum(len(state.series) for state in self._families.values())

    def ingest(self, records: Iterable[Translated], rejected: Rejected | None = None) -> None:
        """Fold ``records`` in; those whose name another type owns are noted in ``rejected``."""
        now = self._clock()
        for record in records:
            if not self._ingest_one(record, now) and rejected is not None:
                rejected.add(f"a metric of another type owns the name of {record.family.kind} "
                             f"{record.family.name[:80]}")  # fmt: skip
        self.generation += 1

    def _ingest_one(self, record: Translated, now: float) -> bool:
        family = record.family
        state = self._families.get(family.name)
        if state is None:
            if not self._claims.claim(family):
                return False
            state = self._families[family.name] = _FamilyState(family)
        elif state.family.kind != family.kind:
            return False
        elif state.family != family:
            state.family = family  # help or unit changed
        existing = state.series.get(record.labels)
        if record.stale:
            state.series.pop(record.labels, None)
            if not state.series:
                self._drop_family(family.name)
            return True
        if existing is None:
            state.series[record.labels] = _Series(label_text(record.labels), record.point, now)
            return True
        merged = _merge(existing.point, record.point, record.delta)
        if merged is not None:
            existing.point = merged
            existing.seen = now
        return True

    def _drop_family(self, name: str) -> None:
        """Forget a family with no series left, freeing its names for any type."""
        state = self._families.pop(name)
        self._claims.release(state.family)

    def expire(self) -> int:
        """Drop series quiet for longer than the expiration; returns how many went."""
        if not self.expiration:
            return 0
        cutoff = self._clock() - self.expiration
        dropped = 0
        for name, state in list(self._families.items()):
            quiet = [labels for labels, s in state.series.items() if s.seen < cutoff]
            for labels in quiet:
                del state.series[labels]
            dropped += len(quiet)
            if not state.series:
                self._drop_family(name)
        if dropped:
            self.generation += 1
        return dropped

    def snapshot(self) -> list[FamilySnapshot]:
        return [
            FamilySnapshot(state.family, [(s.label_text, s.point) for s in state.series.values()])
            for state in self._families.values()
            if state.series
        ]

    def point(self, name: str, labels: Labels) -> Point | None:
        """The stored point of one series (tests and debugging)."""
        state = self._families.get(name)
        series = state.series.get(labels) if state else None
        return series.point if series else None


def _merge(old: Point, new: Point, delta: bool) -> Point | None:
    """The point to keep, or None to keep the old one."""
    if type(old) is not type(new):
        return new
    if not delta:
        if new.time_ns < old.time_ns:
            return None
        return _keep_exemplars(old, new)
    if new.start_ns != old.time_ns:
        return new if new.time_ns > old.time_ns else None  # a gap: a reset
    if isinstance(new, NumberPoint) and isinstance(old, NumberPoint):
        return NumberPoint(old.value + new.value, old.start_ns, new.time_ns,
                           new.exemplar or old.exemplar)  # fmt: skip
    if isinstance(new, HistogramPoint) and isinstance(old, HistogramPoint):
        if new.bounds != old.bounds:
            return new
        counts = tuple(a + b for a, b in zip(old.counts, new.counts, strict=True))
        exemplars = _newer_exemplars(old, new)
        return replace(new, counts=counts, sum=old.sum + new.sum, count=old.count + new.count,
                       start_ns=old.start_ns, exemplars=exemplars)  # fmt: skip
    return new


def _keep_exemplars(old: Point, new: Point) -> Point:
    """A newer point without exemplars keeps the old ones, so every scrape between two
    points of a series still links to an example trace."""
    if isinstance(new, NumberPoint) and isinstance(old, NumberPoint):
        return new if new.exemplar or not old.exemplar else replace(new, exemplar=old.exemplar)
    if (
        isinstance(new, HistogramPoint)
        and isinstance(old, HistogramPoint)
        and new.bounds == old.bounds
        and old.exemplars
    ):
        return replace(new, exemplars=_newer_exemplars(old, new))
    return new


def _newer_exemplars(old: HistogramPoint, new: HistogramPoint) -> tuple[Exemplar | None, ...]:
    if not old.exemplars:
        return new.exemplars
    if not new.exemplars:
        return old.exemplars
    return tuple(n or o for o, n in zip(old.exemplars, new.exemplars, strict=True))


def label_text(labels: Labels) -> str:
    """``a="x",b="y"`` with values escaped for both exposition formats."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value
