"""The supervisor's one view of its workers: health and the collector's own metrics.

Health: the ``health_check`` extension runs in the supervisor against
:class:`WorkersHost`, which answers from the state every worker last reported. The
collector is ready when every worker is; a worker that is not (starting, restarting,
refusing data) is named in ``/health/ready``'s output, and each component's status is
its worst over the workers (``worker 1: ...`` in the output).

Self-metrics: each worker's registry is read over the internal channel and the samples
with the same name and labels are combined: counters and histograms are added up; a
gauge shows its highest value over the workers, because every limit it is read against
applies to each worker (the memory limiter's resident memory against ``limit_mib``, a
queue's fill against its capacity; a budget's running percentile is worker 0's, which
keeps the windows of the whole collector). The series are the
ones a single-process collector exposes, so the dashboards and alert rules read the
same. The supervisor adds ``otelkit_collector_workers`` and
``otelkit_collector_worker_restarts``. What an exited worker last showed of its counters
and histograms stays added to the running workers' (:class:`ExitedSamples`), so a restart
never makes a counter go down, which Prometheus would read as a reset to zero and count
the other workers' whole totals again in ``rate()`` and ``increase()``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from otelkit.collector.runtime.component import Component, ComponentID, Status

_RANK = {
    Status.OK: 0,
    Status.STARTING: 1,
    Status.STOPPING: 1,
    Status.RECOVERABLE_ERROR: 2,
    Status.STOPPED: 3,
    Status.PERMANENT_ERROR: 4,
}


@dataclass
class WorkerState:
    """What the supervisor last heard from one worker (None: nothing, or not running)."""

    report: dict[str, Any] | None = None
    why_not: str = "starting"


@dataclass
class WorkersHost:
    """The :class:`~otelkit.collector.runtime.component.Host` the supervisor's health
    check sees: every worker's state folded into one."""

    workers: list[WorkerState]
    serving: bool = False
    started_at: float = field(default_factory=time.time)

    def report_status(self, component: str, status: Status, message: str = "") -> None:
        return None

    def component_statuses(self) -> Mapping[str, tuple[Status, str]]:
        """Each component's worst status over the workers. A worker that is not running,
        not answering or not ready (started again, its components still starting) counts
        as starting for every component: ``/health`` warns, and names it, while part of
        the collector is down, whenever readiness names it."""
        worst: dict[str, tuple[Status, str]] = {}
        absent: list[int] = []
        for index, state in enumerate(self.workers):
            if state.report is None or not state.report.get("ready"):  # as readiness says
                absent.append(index)
                continue
            for label, (value, message) in state.report.get("statuses", {}).items():
                _keep_worst(worst, label, Status(value), index, message)
        for index in absent:
            why = f"not ready ({self.workers[index].why_not})"
            for label in list(worst):
                _keep_worst(worst, label, Status.STARTING, index, why)
        return worst

    def is_ready(self) -> bool:
        """Serving (every worker started once, not shutting down); a worker that is not
        ready now shows in :meth:`refusals`, which readiness reports by name."""
        return self.serving

    def get_extension(self, component_id: ComponentID) -> Component | None:
        return None

    def held_bytes(self) -> int:
        return sum(int((s.report or {}).get("held_bytes", 0)) for s in self.workers)

    def set_refusing(self, component: str, reason: str | None) -> None:
        return None

    def refusals(self) -> Mapping[str, str]:
        found: dict[str, str] = {}
        for index, state in enumerate(self.workers):
            report = state.report
            if report is None or not report.get("ready"):
                found[f"worker {index}"] = f"not ready ({state.why_not})"
                continue
            for component, reason in report.get("refusals", {}).items():
                found[f"worker {index}: {component}"] = reason
        return found


def _keep_worst(
    worst: dict[str, tuple[Status, str]], label: str, status: Status, index: int, message: str
) -> None:
    known = worst.get(label)
    if known is None or _RANK[status] > _RANK[known[0]]:
        worst[label] = (status, f"worker {index}: {message}" if message else "")


SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and sorted labels."""


class ExitedSamples:
    """The counter and histogram samples that exited workers showed last, added to the
    running workers' same samples (or shown alone where none has it): as one process's
    counters, they never go down nor go away."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._values: dict[str, dict[SampleKey, float]] = {}

    def add(self, text: str) -> None:
        """An exited worker's last exposition (its gauges are left out)."""
        _gather(text, self._families, self._values, only=("counter", "histogram"))

    def add_to(
        self, families: dict[str, Metric], values: dict[str, dict[SampleKey, float]]
    ) -> None:
        for name, samples in self._values.items():
            if families.setdefault(name, self._families[name]).type != self._families[name].type:
                continue
            running = values.setdefault(name, {})
            for key, value in samples.items():
                running[key] = running.get(key, 0.0) + value


def merge_expositions(
    texts: Iterable[str], extra: bytes = b"", exited: ExitedSamples | None = None
) -> bytes:
    """Prometheus text expositions as one: samples with the same name and labels summed,
    or for gauges the highest; ``exited``'s samples added to the running workers'."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for text in texts:
        _gather(text, families, values)
    if exited is not None:
        exited.add_to(families, values)
    _gather(extra.decode(), families, values)
    merged = []
    for name, family in families.items():
        metric = Metric(name, family.documentation, family.type, family.unit)
        metric.samples = [
            Sample(sample_name, dict(labels), value)
            for (sample_name, labels), value in values[name].items()
        ]
        merged.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merged))
    return generate_latest(registry)


def _gather(
    text: str,
    families: dict[str, Metric],
    values: dict[str, dict[SampleKey, float]],
    only: tuple[str, ...] | None = None,
) -> None:
    """``text``'s samples added to ``values`` (gauges: the highest kept); ``only``: the
    metric types taken, the others skipped."""
    for family in text_string_to_metric_families(text):
        if only is not None and family.type not in only:
            continue
        families.setdefault(family.name, family)
        known = values.setdefault(family.name, {})
        combine = max if family.type == "gauge" else _add
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            old = known.get(key)
            known[key] = sample.value if old is None else combine(old, sample.value)


def _add(a: float, b: float) -> float:
    return a + b


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics
