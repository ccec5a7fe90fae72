"""Traces tail sampling decides before ``decision_wait`` because ``num_traces`` was reached
are counted under upstream's name, so the collector's alert can say so."""

from __future__ import annotations

import asyncio

from otelkit.collector.processors.tail_sampling import TailSamplingConfig, TailSamplingProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, request

EARLY = "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total"


def sampler(telemetry: SelfTelemetry, **config: object) -> TailSamplingProcessor:
    settings = CreateSettings(ComponentID("tail_sampling"), Kind.PROCESSOR, telemetry)
    return TailSamplingProcessor(settings, TailSamplingConfig.model_validate(config), Sink())


def test_traces_decided_past_num_traces_are_counted_and_nothing_else() -> None:
    telemetry = SelfTelemetry()
    labels = {"processor": "tail_sampling"}

    async def scenario() -> None:
        processor = sampler(telemetry, decision_wait="60s", num_traces=10)
        assert telemetry.registry.get_sample_value(EARLY, labels) == 0  # there from the start
        for i in range(30):
            await processor.consume(request([S("r", trace=100 + i)]))
        assert telemetry.value(EARLY, labels) == 20
        await processor.shutdown()  # the rest are decided at shutdown: not counted

    asyncio.run(scenario())
    assert telemetry.value(EARLY, labels) == 20


def test_traces_decided_after_their_wait_are_not_counted() -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> None:
        processor = sampler(telemetry, decision_wait="50ms", num_traces=100)
        for i in range(20):
            await processor.consume(request([S("r", trace=200 + i)]))
        await asyncio.sleep(0.1)
        await processor.release()
        assert not processor.buffer.traces

    asyncio.run(scenario())
    assert telemetry.total(EARLY) == 0
