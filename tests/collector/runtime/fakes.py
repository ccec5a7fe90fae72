"""Small components for wiring tests, registered directly instead of through entry points."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Connector,
    Consumer,
    CreateSettings,
    Exporter,
    Host,
    Processor,
    Receiver,
    connector_factory,
    exporter_factory,
    processor_factory,
    receiver_factory,
)
from otelkit.collector.runtime.registry import Registry


@dataclass
class Journal:
    """What the fake components saw, in order."""

    events: list[str] = field(default_factory=list)
    received: dict[str, list[Payload]] = field(default_factory=dict)


JOURNAL = Journal()


class Empty(ComponentConfig):
    pass


class TagConfig(ComponentConfig):
    value: str = "tagged"


class FakeReceiver(Receiver):
    instances: list[FakeReceiver] = []

    def __init__(self, settings: CreateSettings, consumers: Mapping[Signal, Consumer]) -> None:
        self.id = str(settings.id)
        self.consumers = consumers
        FakeReceiver.instances.append(self)

    async def start(self, host: Host) -> None:
        JOURNAL.events.append(f"start receiver/{self.id}")

    async def shutdown(self) -> None:
        JOURNAL.events.append(f"stop receiver/{self.id}")


class TagProcessor(Processor):
    """Renames every span, to show each pipeline gets its own copy."""

    def __init__(self, settings: CreateSettings, config: TagConfig, next_: Consumer) -> None:
        self.id, self.value, self.next = str(settings.id), config.value, next_

    async def consume(self, payload: Payload) -> None:
        assert isinstance(payload, ExportTraceServiceRequest)
        for rs in payload.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.name = self.value
        await self.next.consume(payload)

    async def start(self, host: Host) -> None:
        JOURNAL.events.append(f"start processor/{self.id}")

    async def shutdown(self) -> None:
        JOURNAL.events.append(f"stop processor/{self.id}")


class RecordingExporter(Exporter):
    def __init__(self, settings: CreateSettings) -> None:
        self.id = str(settings.id)

    async def consume(self, payload: Payload) -> None:
        JOURNAL.received.setdefault(self.id, []).append(payload)

    async def start(self, host: Host) -> None:
        JOURNAL.events.append(f"start exporter/{self.id}")

    async def shutdown(self) -> None:
        JOURNAL.events.append(f"stop exporter/{self.id}")


class CountConnector(Connector):
    """traces -> metrics: one gauge point per batch whose value is the span count."""

    def __init__(self, settings: CreateSettings, next_: Consumer) -> None:
        self.id, self.next = str(settings.id), next_

    async def consume(self, payload: Payload) -> None:
        request = ExportMetricsServiceRequest()
        metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
        metric.name = "spans.seen"
        metric.gauge.data_points.append(NumberDataPoint(as_int=count_items(payload)))
        await self.next.consume(request)

    async def start(self, host: Host) -> None:
        JOURNAL.events.append(f"start connector/{self.id}")

    async def shutdown(self) -> None:
        JOURNAL.events.append(f"stop connector/{self.id}")


def registry() -> Registry:
    reg = Registry.discover()
    reg.register(
        receiver_factory("fake", Empty, lambda s, c, cons: FakeReceiver(s, cons), frozenset(Signal))
    )
    reg.register(
        processor_factory(
            "tag",
            TagConfig,
            lambda s, c, sig, nxt: TagProcessor(s, c, nxt),
            frozenset({Signal.TRACES}),
        )
    )
    reg.register(
        exporter_factory(
            "recording", Empty, lambda s, c, sig: RecordingExporter(s), frozenset(Signal)
        )
    )
    reg.register(
        connector_factory(
            "count",
            Empty,
            lambda s, c, src, dst, nxt: CountConnector(s, nxt),
            frozenset({(Signal.TRACES, Signal.METRICS)}),
        )
    )
    return reg
