"""One scrape view over several worker processes (``otelkit collector run --workers N``).

Each worker keeps its own cumulative series (spans of one trace are processed in one
worker, so their counts are disjoint); the view adds them up: counters, and histograms
bucket by bucket, are summed, so ``sum``/``rate`` queries and dashboards read exactly as
from one process. Metrics received over OTLP are routed by resource, so a gauge lives in
one worker; where several workers do hold the same gauge (an info series such as
``target_info``), the latest point is shown. Summaries cannot be added: the one with
the highest count is shown.

A worker that exits takes its counts with it, and Prometheus takes any decrease of a
counter for a reset to zero: the other workers' whole totals would be counted again by
``rate()`` and ``increase()``. So what an exited worker last showed of its counters and
histograms is kept (:class:`ExitedSeries`) and added to the running workers' same series,
whose sum then never goes down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig, serve_scrape
from otelkit.collector.exporters.prometheus.exposition import (
    Body,
    render_openmetrics,
    render_text,
)
from otelkit.collector.exporters.prometheus.store import FamilySnapshot, NameClaims
from otelkit.collector.exporters.prometheus.translation import (
    Exemplar,
    Family,
    HistogramPoint,
    NumberPoint,
    Point,
    SummaryPoint,
)
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send


def merge_snapshots(workers: Iterable[list[FamilySnapshot]]) -> list[FamilySnapshot]:
    """The workers' families as one, in first-seen order; same-labelled series combined.
    Each worker's store owns its names alone, so two workers may each hold a family the
    other's clashes with (a gauge ``x`` here, a counter ``x_total`` there): the first
    seen is shown, as within one store, and the scrape stays parseable."""
    families: dict[str, Family] = {}
    series: dict[str, dict[str, Point]] = {}
    claims = NameClaims()
    for snapshot in workers:
        for fam in snapshot:
            name = fam.family.name
            known_family = families.get(name)
            if known_family is None and not claims.claim(fam.family):
                continue
            if known_family is not None and known_family.kind != fam.family.kind:
                continue
            families.setdefault(name, fam.family)
            known = series.setdefault(name, {})
            for labels, point in fam.series:
                old = known.get(labels)
                known[labels] = point if old is None else combine(families[name], old, point)
    return [FamilySnapshot(families[name], list(points.items())) for name, points in series.items()]


def combine(family: Family, old: Point, new: Point) -> Point:
    """Two workers' points of one series as the one point of the whole collector."""
    if isinstance(old, NumberPoint) and isinstance(new, NumberPoint):
        if family.kind == "counter":
            return NumberPoint(
                old.value + new.value,
                min(old.start_ns, new.start_ns),
                max(old.time_ns, new.time_ns),
                new.exemplar or old.exemplar,
            )
        return new if new.time_ns >= old.time_ns else old
    if isinstance(old, HistogramPoint) and isinstance(new, HistogramPoint):
        if old.bounds != new.bounds or len(old.counts) != len(new.counts):
            return new if new.count >= old.count else old
        exemplars = _exemplars(old, new)
        return HistogramPoint(
            old.bounds,
            tuple(a + b for a, b in zip(old.counts, new.counts, strict=True)),
            old.sum + new.sum,
            old.count + new.count,
            min(old.start_ns, new.start_ns),
            max(old.time_ns, new.time_ns),
            exemplars,
        )
    if isinstance(old, SummaryPoint) and isinstance(new, SummaryPoint):
        return new if new.count >= old.count else old
    return new


def _exemplars(old: HistogramPoint, new: HistogramPoint) -> tuple[Exemplar | None, ...]:
    if not old.exemplars:
        return new.exemplars
    if not new.exemplars:
        return old.exemplars
    return tuple(b or a for a, b in zip(old.exemplars, new.exemplars, strict=True))


class ExitedSeries:
    """The counters and histograms that exited workers showed last, per series, shown
    added to the running workers' same series. One no running worker has is shown alone
    until ``expiration`` (the exporter's ``metric_expiration``) has passed since the
    worker exited, as the worker would have dropped it by then if it stayed quiet."""

    def __init__(self, expiration: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._expiration = expiration
        self._clock = clock
        self._families: dict[str, Family] = {}
        self._series: dict[str, dict[str, tuple[Point, float]]] = {}

    def add(self, snapshot: list[FamilySnapshot]) -> None:
        """An exited worker's last answer (its gauges and summaries are left out)."""
        now = self._clock()
        for fam in snapshot:
            family = fam.family
            if family.kind not in ("counter", "histogram"):
                continue
            known = self._families.setdefault(family.name, family)
            if known.kind != family.kind:
                continue
            series = self._series.setdefault(family.name, {})
            for labels, point in fam.series:
                old = series.get(labels)
                series[labels] = (point if old is None else combine(known, old[0], point), now)

    def alongside(self, running: list[list[FamilySnapshot]]) -> list[FamilySnapshot]:
        """The kept series to merge with ``running`` (the running workers' answers);
        those expired and no running worker has are forgotten."""
        live = {(fam.family.name, labels) for snapshot in running for fam in snapshot
                for labels, _ in fam.series}  # fmt: skip
        cutoff = self._clock() - self._expiration if self._expiration else None
        kept: list[FamilySnapshot] = []
        for name, series in list(self._series.items()):
            if cutoff is not None:
                for labels in [k for k, (_, at) in series.items() if at < cutoff]:
                    if (name, labels) not in live:
                        del series[labels]
            if not series:
                del self._series[name], self._families[name]
                continue
            points = [(labels, point) for labels, (point, _) in series.items()]
            kept.append(FamilySnapshot(self._families[name], points))
        return kept


class MergedScrapeView:
    """The scrape endpoint of one ``prometheus`` exporter, served by the supervisor of
    ``--workers N``: each scrape asks every worker for its series and renders their sum."""

    def __init__(
        self, config: PrometheusConfig, fetch: Callable[[], Awaitable[list[list[FamilySnapshot]]]]
    ) -> None:
        self._config = config
        self._fetch = fetch
        self.server = HttpServer(
            config.endpoint, self._app, name="prometheus (all workers)", tls=config.tls
        )

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_scrape(scope, send, self._config.enable_open_metrics, self._exposition)

    async def _exposition(self, openmetrics: bool) -> Body:
        snapshot = merge_snapshots(await self._fetch())
        render = render_openmetrics if openmetrics else render_text
        return await asyncio.to_thread(render, snapshot, self._config.send_timestamps)
