"""``memory_limiter``: refuses data while the pipeline holds too much memory, as upstream.

Every ``check_interval`` the limiter looks at two figures:

* **held**: the memory the pipeline's own data takes, as the components that keep data
  account for it (:meth:`Host.held_bytes`): sending queues (requests on disk take none),
  batches waiting in batchers, traces gathered by whole-trace processors and the Sentry
  exporter. Each is an estimate from item counts and a sampled encoded size.
* **resident memory** (RSS, ``/proc/self/statm``), read again after a garbage collection
  and ``malloc_trim`` when it is above the soft limit (``limit - spike``): at most every
  ``min_gc_interval_when_soft_limited`` above the soft limit and every
  ``min_gc_interval_when_hard_limited`` (0s: every check) above the hard limit, upstream's
  keys. The soft one defaults to 5s where upstream's is 10s: at full speed the default
  configuration's RSS hovers at the soft limit, and collecting every 10 s left it above
  for longer: the limiter refused more (1,414 and 1,739 requests in two runs, against 466
  and 7 every 5 s), for a saving (the collections took 2.5-4.7% of the CPU) the runs
  could not tell from their noise.

It refuses data when the held data is at least ``5%`` of the limit *and* either the
collector's footprint at rest (its lowest RSS net of held data, measured while little is
held) plus the held data, or the resident memory, is above the soft limit. Refusing makes ``consume`` raise a
retryable error, which the receiver answers with ``UNAVAILABLE`` / 503 and a retry delay
(the upstream processor's answer): data is delayed, not lost. Only data whose sender
still waits for the answer is refused (:mod:`otelkit.collector.runtime.origin`): what a
whole-trace processor or a connector hands on later, on its own timer, was acknowledged
already, so it passes and is counted in
``otelkit_processor_memory_limiter_passed_acknowledged_total`` (upstream drops it).

Why both conditions: refusing data can only bring memory down by letting what the
pipeline holds drain. Memory that is not held data (freed memory the allocator keeps,
caches, series state) does not go away by refusing, and used to make the limiter refuse
forever after a burst. So once the held data is gone the limiter accepts again, whatever
RSS says; it logs a warning when RSS stays above the soft limit with nothing held. Both
transitions are logged, the limiter reports a recoverable error in ``/health`` while it
refuses, and ``/health/ready`` answers "refusing data" so load balancers send elsewhere.

``limit_percentage`` and ``spike_limit_percentage`` are taken of the memory available
to the process: the cgroup limit when there is one, else the machine's total memory.
``limit_mib`` wins when both kinds of limit are set (as upstream); the spike defaults
to 20% of the limit. All pipelines using one ``memory_limiter`` ID share one check, as
upstream. Memory is read from ``/proc``, so the processor needs Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    Host,
    Processor,
    Status,
    processor_factory,
)
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.origin import sender_waits
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.processor.memory_limiter")

MIB = 1024 * 1024
_DEFAULT_SPIKE_FRACTION = 0.2
# Held data below this share of the limit never makes the limiter refuse.
HELD_FLOOR_FRACTION = 0.05
# A cgroup v1 "no limit" is a huge page-aligned number rather than "max".
_CGROUP_V1_UNLIMITED = 1 << 60


class MemoryLimiterConfig(ComponentConfig):
    check_interval: Duration = Field(1.0, gt=0, description="How often memory is measured.")
    limit_mib: int = Field(0, ge=0, description="Hard limit in MiB of resident memory.")
    spike_limit_mib: int = Field(0, ge=0, description="Headroom below the hard limit.")
    limit_percentage: int = Field(0, ge=0, le=100, description="Hard limit, % of memory.")
    spike_limit_percentage: int = Field(0, ge=0, le=100, description="Headroom, % of memory.")
    min_gc_interval_when_soft_limited: Duration = Field(
        5.0, ge=0, description="Least time between forced collections above the soft limit."
    )
    min_gc_interval_when_hard_limited: Duration = Field(
        0.0, ge=0, description="Least time between forced collections above the hard limit."
    )

    @model_validator(mode="after")
    def _limits_make_sense(self) -> Self:
        if self.min_gc_interval_when_soft_limited < self.min_gc_interval_when_hard_limited:
            raise ValueError(
                "'min_gc_interval_when_soft_limited' should be larger than "
                "'min_gc_interval_when_hard_limited'"
            )
        if not self.limit_mib and not self.limit_percentage:
            raise ValueError(
                "set limit_mib (such as 512) or limit_percentage (such as 80); neither is set"
            )
        if self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            raise ValueError(
                f"spike_limit_mib ({self.spike_limit_mib}) must be below limit_mib "
                f"({self.limit_mib}); the soft limit is limit_mib - spike_limit_mib"
            )
        if (
            not self.limit_mib
            and self.spike_limit_percentage >= self.limit_percentage
            and self.spike_limit_percentage
        ):
            raise ValueError(
                f"spike_limit_percentage ({self.spike_limit_percentage}) must be below "
                f"limit_percentage ({self.limit_percentage})"
            )
        return self


@dataclass(frozen=True)
class Limits:
    """Hard and soft limits in bytes."""

    hard: int
    soft: int

    @classmethod
    def of(cls, config: MemoryLimiterConfig, total_memory: Callable[[], int]) -> Limits:
        if config.limit_mib:
            hard = config.limit_mib * MIB
            spike = config.spike_limit_mib * MIB
        else:
            total = total_memory()
            hard = total * config.limit_percentage // 100
            spike = total * config.spike_limit_percentage // 100
        if not spike:
            spike = int(hard * _DEFAULT_SPIKE_FRACTION)
        if spike >= hard:
            raise ValueError(f"spike limit ({spike} bytes) must be below the limit ({hard} bytes)")
        return cls(hard, hard - spike)

    @property
    def held_floor(self) -> int:
        return int(self.hard * HELD_FLOOR_FRACTION)


def process_rss() -> int:
    """Resident memory of this process in bytes (second field of /proc/self/statm)."""
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def available_memory() -> int:
    """The memory this process may use: the cgroup limit if set, else total RAM."""
    candidates = [_meminfo_total()]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_limit(Path(path))
        if limit is not None:
            candidates.append(limit)
    return min(candidates)


def release_memory() -> None:
    """A full garbage collection, then glibc's ``malloc_trim`` (where there is one), so
    that freed memory the allocator kept goes back to the system before RSS is re-read."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit
    value = int(text)
    return value if 0 < value < _CGROUP_V1_UNLIMITED else None


class MemoryCheck:
    """The one check behind every pipeline's instance of one ``memory_limiter`` ID."""

    def __init__(
        self,
        name: str,
        config: MemoryLimiterConfig,
        telemetry: SelfTelemetry,
        read_rss: Callable[[], int],
        total_memory: Callable[[], int],
        release: Callable[[], None],
    ) -> None:
        self.name = name
        self.label = f"processor/{name}"
        self._config = config
        self._read_rss = read_rss
        self._total_memory = total_memory
        self._release = release
        self.limits: Limits | None = None
        self.refusing = False
        self.reason = ""
        self._host: Host | None = None
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._footprint: int | None = None  # lowest RSS net of held data seen at rest
        self._released_at = float("-inf")
        self._idle_warned = False
        gauge = telemetry.gauge
        self._rss_gauge = gauge(
            "otelkit_processor_memory_limiter_rss_bytes",
            "Resident memory at the memory limiter's last check", ("processor",),
        ).labels(name)  # fmt: skip
        self._held_gauge = gauge(
            "otelkit_processor_memory_limiter_held_bytes",
            "Memory the pipeline's held data takes, at the memory limiter's last check",
            ("processor",),
        ).labels(name)
        self._refusing_gauge = gauge(
            "otelkit_processor_memory_limiter_refusing",
            "1 while the memory limiter refuses data", ("processor",),
        ).labels(name)  # fmt: skip

    async def attach(self, host: Host) -> None:
        self._users += 1
        if self._users > 1:
            return
        self._host = host
        self.limits = Limits.of(self._config, self._total_memory)
        log.info(
            "processor %s: soft limit %d MiB, hard limit %d MiB; refuses only while held "
            "data is %d MiB or more",
            self.name, self.limits.soft // MIB, self.limits.hard // MIB,
            self.limits.held_floor // MIB,
        )  # fmt: skip
        self.check()
        self._task = asyncio.create_task(self._check_forever(), name=f"memlimit-{self.name}")

    async def detach(self) -> None:
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def check(self) -> None:
        """Measure once and decide whether to refuse data until the next check."""
        assert self.limits is not None and self._host is not None, "check() before attach()"
        limits = self.limits
        held = self._host.held_bytes()
        rss = self._read_rss()
        now = time.monotonic()
        if rss > limits.soft and now - self._released_at >= self._collect_interval(rss):
            self._release()
            self._released_at = now
            rss = self._read_rss()
        if self._footprint is None or held < limits.held_floor:  # at rest: what is not data
            footprint = max(0, rss - held)
            self._footprint = min(self._footprint or footprint, footprint)
        self._rss_gauge.set(rss)
        self._held_gauge.set(held)
        self._decide(rss, held)

    def _collect_interval(self, rss: int) -> float:
        """The least time between forced collections at this resident memory."""
        assert self.limits is not None
        if rss > self.limits.hard:
            return self._config.min_gc_interval_when_hard_limited
        return self._config.min_gc_interval_when_soft_limited

    def _decide(self, rss: int, held: int) -> None:
        limits = self.limits
        assert limits is not None and self._footprint is not None
        accounted = self._footprint + held
        refusing = held >= limits.held_floor and (accounted > limits.soft or rss > limits.soft)
        figures = (
            f"held data {held // MIB} MiB, footprint at rest {self._footprint // MIB} MiB, "
            f"resident {rss // MIB} MiB; soft limit {limits.soft // MIB} MiB"
        )
        if refusing != self.refusing:
            if refusing:
                log.warning("processor %s: refusing data (%s)", self.name, figures)
            else:
                log.warning("processor %s: accepting data again (%s)", self.name, figures)
            self._report(refusing, figures)
        if not refusing and rss > limits.soft and not self._idle_warned:
            log.warning(
                "processor %s: resident memory stays above the soft limit with little data "
                "held (%s): refusing data would not bring it down, so data is accepted",
                self.name, figures,
            )  # fmt: skip
        self._idle_warned = not refusing and rss > limits.soft
        self.refusing = refusing
        self.reason = figures
        self._refusing_gauge.set(1 if refusing else 0)

    def _report(self, refusing: bool, figures: str) -> None:
        assert self._host is not None
        if refusing:
            message = f"refusing data: {figures}"
            self._host.report_status(self.label, Status.RECOVERABLE_ERROR, message)
            self._host.set_refusing(self.label, message)
        else:
            self._host.report_status(self.label, Status.OK)
            self._host.set_refusing(self.label, None)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.check_interval)
            try:
                self.check()
            except Exception:
                log.exception("processor %s: memory check failed", self.name)


# One check per memory_limiter ID of a running collector (its telemetry identifies it).
_CHECKS: weakref.WeakKeyDictionary[SelfTelemetry, dict[str, MemoryCheck]] = (
    weakref.WeakKeyDictionary()
)


class MemoryLimiter(Processor):
    """Passes data on unless the last check decided to refuse it."""

    def __init__(
        self,
        settings: CreateSettings,
        config: MemoryLimiterConfig,
        signal: Signal,
        next_: Consumer,
        *,
        read_rss: Callable[[], int] = process_rss,
        total_memory: Callable[[], int] = available_memory,
        release: Callable[[], None] = release_memory,
    ) -> None:
        self._config = config
        self._signal = signal
        self._next = next_
        self._name = str(settings.id)
        self._telemetry = settings.telemetry
        checks = _CHECKS.setdefault(settings.telemetry, {})
        if self._name not in checks:
            checks[self._name] = MemoryCheck(
                self._name, config, settings.telemetry, read_rss, total_memory, release
            )
        self._check = checks[self._name]
        self._passed_acknowledged = settings.telemetry.counter(
            "otelkit_processor_memory_limiter_passed_acknowledged",
            "Items passed while refusing, because their sender was answered already "
            "(released by a whole-trace processor or a connector on a timer)",
            ("processor", "signal"),
        ).labels(self._name, signal.value)

    @property
    def mutates_data(self) -> bool:  # type: ignore[override]
        """It passes the batch on as it is: it changes the batch only if what follows
        does, so a pipeline of it and readers shares the receiver's batch, uncopied."""
        return bool(getattr(self._next, "mutates_data", True))

    @property
    def refusing(self) -> bool:
        return self._check.refusing

    async def start(self, host: Host) -> None:
        await self._check.attach(host)

    async def shutdown(self) -> None:
        await self._check.detach()

    async def consume(self, payload: Payload) -> None:
        if self._check.refusing:
            if not sender_waits():  # acknowledged already: refusing it would lose it
                self._passed_acknowledged.inc(count_items(payload))
                await self._next.consume(payload)
                return
            self._telemetry.processor_refused(self._name, self._signal, count_items(payload))
            raise RetryableError(
                f"processor {self._name}: {self._check.reason}; retry later",
                retry_after=self._config.check_interval,
            )
        await self._next.consume(payload)

    def check(self) -> None:
        """Measure now (the background task does this every ``check_interval``)."""
        self._check.check()


def _create(
    settings: CreateSettings, config: MemoryLimiterConfig, signal: Signal, next_consumer: Consumer
) -> MemoryLimiter:
    return MemoryLimiter(settings, config, signal, next_consumer)


factory = processor_factory("memory_limiter", MemoryLimiterConfig, _create, frozenset(Signal))
