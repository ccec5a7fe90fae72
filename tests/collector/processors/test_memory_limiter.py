"""The memory limiter: refuses above the soft limit, collects garbage above the hard one."""

from __future__ import annotations

import asyncio
import logging

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
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, Status
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.origin import sender_waiting
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
        self.released = 0

    def read(self) -> int:
        return self.rss

    def release(self) -> None:
        self.released += 1


class HoldingHost(ServiceHost):
    """A host whose components hold ``held`` bytes of data."""

    def __init__(self, held_mib: int = 0) -> None:
        super().__init__()
        self.held = held_mib * MIB

    def held_bytes(self) -> int:
        return self.held


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
        release=memory.release,
    )
    return limiter, sink, telemetry


def test_refuses_while_held_data_pushes_memory_over_the_soft_limit_and_recovers() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=50)
        host = HoldingHost()
        limiter, sink, telemetry = make(memory, limit_mib=100, spike_limit_mib=20)
        await limiter.start(host)
        await limiter.consume(traces([[2]]))
        memory.rss, host.held = 81 * MIB, 31 * MIB  # a queue filled up
        limiter.check()
        with pytest.raises(RetryableError, match="held data 31 MiB"), sender_waiting():
            await limiter.consume(traces([[3]]))
        assert telemetry.total("otelcol_processor_refused_spans_total") == 3
        assert "processor/memory_limiter" in host.refusals()
        assert host.statuses["processor/memory_limiter"][0] == Status.RECOVERABLE_ERROR
        memory.rss, host.held = 60 * MIB, 10 * MIB
        limiter.check()
        await limiter.consume(traces([[4]]))
        assert [len(p.resource_spans[0].scope_spans[0].spans) for p in sink.received] == [2, 4]
        assert host.refusals() == {}
        assert host.statuses["processor/memory_limiter"][0] == Status.OK
        await limiter.shutdown()

    asyncio.run(main())


def test_data_acknowledged_already_passes_while_refusing_and_is_counted() -> None:
    """A whole-trace processor releasing batches on its timer, or a connector flushing,
    hands on data its sender was answered for long ago: refusing it would lose it."""

    async def main() -> None:
        memory = FakeMemory(rss_mib=81)
        host = HoldingHost(held_mib=31)
        limiter, sink, telemetry = make(memory, limit_mib=100, spike_limit_mib=20)
        await limiter.start(host)
        assert limiter.refusing
        with pytest.raises(RetryableError), sender_waiting():
            await limiter.consume(traces([[3]]))
        await limiter.consume(traces([[5]]))  # no sender waits: a timer's release
        assert [len(p.resource_spans[0].scope_spans[0].spans) for p in sink.received] == [5]
        assert telemetry.total("otelcol_processor_refused_spans_total") == 3
        passed = "otelkit_processor_memory_limiter_passed_acknowledged_total"
        assert telemetry.total(passed) == 5
        await limiter.shutdown()

    asyncio.run(main())


def test_accounted_held_data_refuses_before_resident_memory_shows_it() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=40)  # the collector at rest
        host = HoldingHost()
        limiter, _, _ = make(memory, limit_mib=100, spike_limit_mib=20)
        await limiter.start(host)
        host.held = 45 * MIB  # 40 + 45 > 80, though RSS has not caught up yet
        limiter.check()
        assert limiter.refusing

    asyncio.run(main())


def test_memory_the_allocator_keeps_after_a_drain_cannot_wedge_the_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reported failure: the queue drained, RSS stayed above the soft limit, and the
    collector refused everything forever while readiness said pass."""

    async def main() -> None:
        memory = FakeMemory(rss_mib=50)
        host = HoldingHost()
        limiter, _, _ = make(memory, limit_mib=100, spike_limit_mib=20)
        await limiter.start(host)
        memory.rss, host.held = 95 * MIB, 40 * MIB
        limiter.check()
        assert limiter.refusing
        host.held = 0  # drained; the freed memory stays with the process
        limiter.check()
        assert not limiter.refusing
        assert memory.released >= 1  # collected and trimmed before deciding
        await limiter.shutdown()

    with caplog.at_level(logging.WARNING, "otelkit.processor.memory_limiter"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("refusing data" in m for m in messages)
    assert any("accepting data again" in m for m in messages)
    assert any("would not bring it down" in m for m in messages)


def test_background_check_runs_every_interval() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=500)
        host = HoldingHost(held_mib=30)
        limiter, _, _ = make(memory, limit_mib=100, check_interval="10ms")
        await limiter.start(host)
        assert limiter.refusing
        host.held = 0
        async with asyncio.timeout(5):
            while limiter.refusing:
                await asyncio.sleep(0.01)
        await limiter.shutdown()

    asyncio.run(main())


def test_above_the_soft_limit_memory_is_released_before_it_is_read_again() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=70)
        limiter, _, _ = make(memory, limit_mib=100)
        await limiter.start(HoldingHost())
        assert memory.released == 0  # below soft (80)
        memory.rss = 101 * MIB
        limiter.check()
        limiter.check()  # above hard: every check
        assert memory.released == 2
        await limiter.shutdown()

    asyncio.run(main())


def test_forced_collections_are_spaced_by_the_configured_intervals() -> None:
    async def main() -> None:
        memory = FakeMemory(rss_mib=90)  # above soft (80), below hard (100)
        limiter, _, _ = make(
            memory,
            limit_mib=100,
            min_gc_interval_when_soft_limited="1h",
            min_gc_interval_when_hard_limited="1h",
        )
        await limiter.start(HoldingHost())
        for _ in range(3):
            limiter.check()
        memory.rss = 101 * MIB
        limiter.check()
        assert memory.released == 1  # the first check only: both intervals are an hour
        await limiter.shutdown()

    asyncio.run(main())


def test_above_the_soft_limit_collections_default_to_every_five_seconds() -> None:
    config = MemoryLimiterConfig(limit_mib=100)
    assert config.min_gc_interval_when_soft_limited == 5.0
    assert config.min_gc_interval_when_hard_limited == 0.0


def test_pipelines_sharing_one_limiter_id_share_one_check() -> None:
    async def main() -> None:
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("memory_limiter"), Kind.PROCESSOR, telemetry)
        config = MemoryLimiterConfig.model_validate({"limit_mib": 100, "check_interval": "1h"})
        memory = FakeMemory(rss_mib=10)
        limiters = [
            MemoryLimiter(settings, config, signal, Sink(), read_rss=memory.read,
                          release=memory.release)
            for signal in (Signal.TRACES, Signal.LOGS)
        ]  # fmt: skip
        host = HoldingHost()
        for limiter in limiters:
            await limiter.start(host)
        memory.rss, host.held = 90 * MIB, 20 * MIB
        limiters[0].check()
        assert all(limiter.refusing for limiter in limiters)
        for limiter in limiters:
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
        (
            {"limit_mib": 100, "min_gc_interval_when_hard_limited": "20s"},
            "'min_gc_interval_when_soft_limited' should be larger",
        ),
    ],
)
def test_config_errors(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MemoryLimiterConfig.model_validate(config)


def test_reads_this_process_memory() -> None:
    rss, total = process_rss(), available_memory()
    assert 1 * MIB < rss < total
