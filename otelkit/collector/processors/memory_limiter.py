"""``memory_limiter``: refuses data while the process uses too much memory, as upstream.

Every ``check_interval`` a background task reads the process's resident memory
(``/proc/self/statm``). Above the soft limit (``limit - spike``) ``consume`` refuses
data with a retryable error, so receivers answer ``UNAVAILABLE`` / 503 and senders
retry later: data is delayed, not lost. Above the hard limit it also runs a full
garbage collection. Place it first in a pipeline, so refused data costs nothing.

``limit_percentage`` and ``spike_limit_percentage`` are taken of the memory available
to the process: the cgroup limit when there is one, else the machine's total memory.
``limit_mib`` wins when both kinds of limit are set (as upstream); the spike defaults
to 20% of the limit. Memory is read from ``/proc``, so the processor needs Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
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
    processor_factory,
)
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.processor.memory_limiter")

MIB = 1024 * 1024
_DEFAULT_SPIKE_FRACTION = 0.2
# A cgroup v1 "no limit" is a huge page-aligned number rather than "max".
_CGROUP_V1_UNLIMITED = 1 << 60


class MemoryLimiterConfig(ComponentConfig):
    check_interval: Duration = Field(1.0, gt=0, description="How often memory is measured.")
    limit_mib: int = Field(0, ge=0, description="Hard limit in MiB of resident memory.")
    spike_limit_mib: int = Field(0, ge=0, description="Headroom below the hard limit.")
    limit_percentage: int = Field(0, ge=0, le=100, description="Hard limit, % of memory.")
    spike_limit_percentage: int = Field(0, ge=0, le=100, description="Headroom, % of memory.")

    @model_validator(mode="after")
    def _limits_make_sense(self) -> Self:
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


class MemoryLimiter(Processor):
    """Passes data on unless the last check found memory above the soft limit."""

    def __init__(
        self,
        settings: CreateSettings,
        config: MemoryLimiterConfig,
        signal: Signal,
        next_: Consumer,
        *,
        read_rss: Callable[[], int] = process_rss,
        total_memory: Callable[[], int] = available_memory,
    ) -> None:
        self._config = config
        self._signal = signal
        self._next = next_
        self._name = str(settings.id)
        self._telemetry = settings.telemetry
        self._read_rss = read_rss
        self._total_memory = total_memory
        self._limits: Limits | None = None
        self._refusing = False
        self._task: asyncio.Task[None] | None = None
        self._rss_gauge = settings.telemetry.gauge(
            "otelkit_processor_memory_limiter_rss_bytes",
            "Resident memory at the memory limiter's last check",
            ("processor",),
        ).labels(self._name)

    @property
    def refusing(self) -> bool:
        return self._refusing

    async def start(self, host: Host) -> None:
        self._limits = Limits.of(self._config, self._total_memory)
        log.info(
            "processor %s: soft limit %d MiB, hard limit %d MiB",
            self._name, self._limits.soft // MIB, self._limits.hard // MIB,
        )  # fmt: skip
        self.check()
        self._task = asyncio.create_task(self._check_forever(), name=f"memlimit-{self._name}")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def consume(self, payload: Payload) -> None:
        if self._refusing:
            self._telemetry.processor_refused(self._name, self._signal, count_items(payload))
            raise RetryableError(
                f"processor {self._name}: memory usage is above the soft limit; retry later",
                retry_after=self._config.check_interval,
            )
        await self._next.consume(payload)

    def check(self) -> None:
        """Measure once and decide whether to refuse data until the next check."""
        assert self._limits is not None, "check() before start()"
        rss = self._read_rss()
        if rss > self._limits.hard:
            gc.collect()
            rss = self._read_rss()
        self._rss_gauge.set(rss)
        refusing = rss > self._limits.soft
        if refusing != self._refusing:
            state = "refusing data" if refusing else "accepting data again"
            log.warning(
                "processor %s: resident memory %d MiB (soft limit %d MiB): %s",
                self._name, rss // MIB, self._limits.soft // MIB, state,
            )  # fmt: skip
        self._refusing = refusing

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.check_interval)
            try:
                self.check()
            except Exception:
                log.exception("processor %s: memory check failed", self._name)


def _create(
    settings: CreateSettings, config: MemoryLimiterConfig, signal: Signal, next_consumer: Consumer
) -> MemoryLimiter:
    return MemoryLimiter(settings, config, signal, next_consumer)


factory = processor_factory("memory_limiter", MemoryLimiterConfig, _create, frozenset(Signal))
