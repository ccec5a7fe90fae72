"""The memory limiter: refuses above the soft limit, collects garbage above the hard one."""

from __future__ import annotations

import asyncio
import gc

import pytest
from pydantic import ValidationError

from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.processors.memory_limiter import (
    MIB,
    Limits,
    MemoryLimiter,
    MemoryLimiterConfig,
    available_memory,
    process_rss,
)
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import traces


class Sink:
    def __init__(self) -> None:
        self.received: list[Payload] = []

    async def consume(self, payload: Payload) -> None:
        self.received.append(payload)


class FakeMemory:
    def __init__(self, rss_mib: int) -> None:
        self.rss = rss_mib * MIB

    def read(self) -> int:
        return self.rss


def make(memory: FakeMemory, **config: object) -> tuple[MemoryLimiter, Sink, SelfTelemetry]:
    telemetry = SelfTelemetry()
    settings = CreateSettings(ComponentID("memory_limiter"), Kind.PROCESSOR, telemetry)
    sink = Sink()
    limiter = MemoryLimiter(
        settings,
        MemoryLimiterConfig.model_validate({"check_interval": "1h", **config}),
        Signal.TRACES,
        sink,
        read_rss=memory.read,
        total_memory=lambda: 1000 * MIB,
    )
    return limiter, sink, telemetry


def test_refuses_above_the_soft_limit_and_recovers_below_it() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=50)
        limiter, sink, telemetry = make(memory, limit_mib=100, spike_limit_mib=20)
        await limiter.start(ServiceHost())
        await limiter.consume(traces([[2]]))
        memory.rss = 81 * MIB
        limiter.check()
        with pytest.raises(RetryableError):
            await limiter.consume(traces([[3]]))
        assert telemetry.total("otelcol_processor_refused_spans_total") == 3
        memory.rss = 79 * MIB
        limiter.check()
        await limiter.consume(traces([[4]]))
        assert [len(p.resource_spans[0].scope_spans[0].spans) for p in sink.received] == [2, 4]
        await limiter.shutdown()

    asyncio.run(main())


def test_background_check_runs_every_interval() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=500)
        limiter, _, _ = make(memory, limit_mib=100, check_interval="10ms")
        await limiter.start(ServiceHost())
        assert limiter.refusing
        memory.rss = 1 * MIB
        async with asyncio.timeout(5):
            while limiter.refusing:
                await asyncio.sleep(0.01)
        await limiter.shutdown()

    asyncio.run(main())


def test_hard_limit_triggers_garbage_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)

    async def main() -> None:
        memory = FakeMemory(rss_mib=90)
        limiter, _, _ = make(memory, limit_mib=100)
        await limiter.start(ServiceHost())
        assert limiter.refusing and not collections  # above soft (80), below hard
        memory.rss = 101 * MIB
        limiter.check()
        assert collections == [1]
        await limiter.shutdown()

    asyncio.run(main())


def test_spike_defaults_to_a_fifth_of_the_limit() -> None:
    limits = Limits.of(MemoryLimiterConfig(limit_mib=100), lambda: 0)
    assert (limits.hard, limits.soft) == (100 * MIB, 80 * MIB)


def test_percentages_are_of_available_memory() -> None:
    config = MemoryLimiterConfig(limit_percentage=50, spike_limit_percentage=10)
    limits = Limits.of(config, lambda: 1000 * MIB)
    assert (limits.hard, limits.soft) == (500 * MIB, 400 * MIB)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "neither is set"),
        ({"limit_mib": 100, "spike_limit_mib": 100}, "must be below limit_mib"),
        ({"limit_percentage": 50, "spike_limit_percentage": 60}, "must be below limit_perc"),
        ({"limit_percentage": 150}, "less than or equal to 100"),
    ],
)
def test_config_errors(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MemoryLimiterConfig.model_validate(config)


def test_reads_this_process_memory() -> None:
    rss, total = process_rss(), available_memory()
    assert 1 * MIB < rss < total
