"""``forward`` connector: hands a pipeline's data unchanged to other pipelines of the
same signal, as upstream's ``forward`` connector does.

It splits one flow into stages, so that something can happen between two groups of
processors: the shipped configurations send budget and performance findings to the logs
pipeline before tail sampling decides which traces to keep::

    traces/findings: {receivers: [otlp], processors: [budget, perf_issues],
                      exporters: [findings, forward]}
    traces:          {receivers: [forward], processors: [tail_sampling, batch],
                      exporters: [sentry]}
"""

from __future__ import annotations

from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Connector,
    Consumer,
    CreateSettings,
    connector_factory,
)


class ForwardConfig(ComponentConfig):
    pass


class ForwardConnector(Connector):
    def __init__(self, next_consumer: Consumer) -> None:
        self._next = next_consumer

    @property
    def hands_on_unchanged(self) -> Consumer:
        """What gets each batch as it came (see :mod:`otelkit.budgets.tracebuffer`)."""
        return self._next

    async def consume(self, payload: Payload) -> None:
        await self._next.consume(payload)


def _create(
    settings: CreateSettings,
    config: ForwardConfig,
    source: Signal,
    target: Signal,
    next_consumer: Consumer,
) -> ForwardConnector:
    return ForwardConnector(next_consumer)


factory = connector_factory(
    "forward", ForwardConfig, _create, frozenset((signal, signal) for signal in Signal)
)
