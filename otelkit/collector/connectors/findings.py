"""``findings`` connector (traces -> logs): one log record per ``otelkit.finding`` span event.

Budget breaches and performance issues are found by traces processors, which record
them as span events (see :mod:`otelkit.budgets.findings`). Put this connector at the
end of a traces pipeline and among the receivers of a logs pipeline to send them to
the log store and Sentry::

    traces: {processors: [budget, perf_issues, tail_sampling], exporters: [sentry, findings]}
    logs:   {receivers: [otlp, findings], exporters: [logstore, sentry]}

A batch without findings costs one look at each span's event count.
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
