"""``findings`` connector (traces -> logs): one log record per ``otelkit.finding`` span event.

Budget breaches and performance issues are found by traces processors, which record
them as span events (see :mod:`otelkit.budgets.findings`). Put this connector on the
traces pipeline that runs those processors, **before any sampling**, and among the
receivers of a logs pipeline, so every finding reaches the log store and Sentry whatever
the sampler keeps; a ``forward`` connector hands the traces on to the sampling
pipeline::

    traces/findings: {processors: [budget, perf_issues], exporters: [findings, forward]}
    traces:          {receivers: [forward], processors: [tail_sampling], exporters: [sentry]}
    logs:            {receivers: [otlp, findings], exporters: [logstore, sentry]}

A batch without findings costs one look at each span's event count; the batch is only
read, so a fan-out shares it instead of copying it.
"""

from __future__ import annotations

from otelkit.budgets.findings import findings_to_logs
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Connector,
    Consumer,
    CreateSettings,
    connector_factory,
)


class FindingsConfig(ComponentConfig):
    pass


class FindingsConnector(Connector):
    mutates_data = False  # reads the spans, sends new log records

    def __init__(self, next_consumer: Consumer) -> None:
        self._next = next_consumer

    async def consume(self, payload: Payload) -> None:
        logs = findings_to_logs(payload)
        if logs.resource_logs:
            await self._next.consume(logs)


def _create(
    settings: CreateSettings,
    config: FindingsConfig,
    source: Signal,
    target: Signal,
    next_consumer: Consumer,
) -> FindingsConnector:
    return FindingsConnector(next_consumer)


factory = connector_factory(
    "findings", FindingsConfig, _create, frozenset({(Signal.TRACES, Signal.LOGS)})
)
