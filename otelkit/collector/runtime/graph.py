"""Builds running components from a validated config and wires the pipelines.

Shapes follow the upstream collector: one receiver instance per ID shared by every
pipeline that lists it; one processor instance per pipeline; one exporter instance per
ID; one connector instance per (ID, source signal, target signal). Pipelines joined by
connectors are built from the last to the first, so each connector's downstream
consumers exist before it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    Component,
    ComponentID,
    Connector,
    Consumer,
    CreateSettings,
    Exporter,
    Extension,
    Kind,
    PeerLink,
    Processor,
    Receiver,
    WorkerRole,
)
from otelkit.collector.runtime.config import CollectorConfig, ComponentSpec, PipelineSpec
from otelkit.collector.runtime.telemetry import SelfTelemetry

T = TypeVar("T", bound=Component)


class Fanout:
    """Hands one batch to several consumers, each getting its own copy when needed.

    Consumers that do not change the batch (``mutates_data = False``) share it. One other
    consumer takes the batch itself: the only one that may change it, offered the batch
    after the readers (which keep nothing of it once they return, so they saw it as it
    came), else the last. Only the rest get copies: a logs pipeline feeding the log store
    and a reader (Sentry without a DSN) copies nothing.

    Every consumer is tried; the first error in the consumers' order is raised after all
    have been offered the batch, so one refusing exporter does not starve the others.
    """

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._consumers = list(consumers)

    def _taker(self) -> int:
        """The index of the consumer that gets the batch itself (see the class)."""
        changing = [
            index
            for index, consumer in enumerate(self._consumers)
            if getattr(consumer, "mutates_data", True)
        ]
        return changing[0] if len(changing) == 1 else len(self._consumers) - 1

    @property
    def hands_on_unchanged(self) -> Consumer:
        """The consumer that gets the batch itself, unchanged by those before it (the
        others share it only if they do not change it): see
        :mod:`otelkit.budgets.tracebuffer`."""
        return self._consumers[self._taker()]

    async def consume(self, payload: Payload) -> None:
        consumers = self._consumers
        taker = self._taker()
        errors: dict[int, Exception] = {}
        for index in (*range(taker), *range(taker + 1, len(consumers)), taker):
            consumer = consumers[index]
            shared = index == taker or not getattr(consumer, "mutates_data", True)
            try:
                await consumer.consume(payload if shared else _copy(payload))
            except Exception as exc:  # the others still get the batch
                errors[index] = exc
        if errors:
            raise errors[min(errors)]


def _copy(payload: Payload) -> Payload:
    clone = type(payload)()
    clone.CopyFrom(payload)
    return clone


def _expect(component: object, kind: type[T], cid: ComponentID) -> T:
    """A plugin factory that builds the wrong thing is a clear start error, not a crash later."""
    if not isinstance(component, kind):
        raise TypeError(f"factory for {cid} built {component!r}, not a {kind.__name__}")
    return component


def fan_out(consumers: Sequence[Consumer]) -> Consumer:
    return consumers[0] if len(consumers) == 1 else Fanout(consumers)


class Placement(Protocol):
    """Where data goes when this collector is one of several worker processes."""

    role: WorkerRole

    def route(self, receiver: ComponentID, signal: Signal, consumer: Consumer) -> Consumer:
        """What ``receiver`` hands its data to, in front of its pipelines (``consumer``)."""
        ...

    def exporter_elsewhere(self, spec: ComponentSpec) -> Exporter | None:
        """A stand-in when this exporter runs in another worker; None to run it here."""
        ...

    def link(self, label: str) -> PeerLink:
        """How the component shown as ``label`` asks its counterparts in other workers."""
        ...


@dataclass
class Graph:
    """Every running component, in creation order: everything a component feeds is
    created (and so started) before it, and stopped after it."""

    ordered: list[tuple[str, Component]] = field(default_factory=list)
    extensions: dict[ComponentID, Component] = field(default_factory=dict)
    exporters: dict[ComponentID, Exporter] = field(default_factory=dict)
    receivers: dict[ComponentID, Receiver] = field(default_factory=dict)
    receiver_pipelines: dict[tuple[str, Signal], Consumer] = field(default_factory=dict)
    """The pipelines each receiver feeds, per signal, before any routing between workers."""

    def add(self, label: str, component: Component) -> None:
        self.ordered.append((label, component))


def build_graph(
    config: CollectorConfig, telemetry: SelfTelemetry, placement: Placement | None = None
) -> Graph:
    return _Builder(config, telemetry, placement).build()


class _Builder:
    def __init__(
        self, config: CollectorConfig, telemetry: SelfTelemetry, placement: Placement | None
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.placement = placement
        self.graph = Graph()
        self.entries: dict[str, Consumer] = {}
        self.connector_sides: dict[tuple[ComponentID, Signal], list[Consumer]] = {}

    def settings(
        self, spec: ComponentSpec, durable: tuple[str, ...] = (), label: str | None = None
    ) -> CreateSettings:
        """``label``: as in :attr:`Graph.ordered` (a processor's names its pipeline)."""
        placement = self.placement
        if placement is None:
            return CreateSettings(spec.id, spec.kind, self.telemetry, durable_downstream=durable)
        peers = placement.link(label or f"{spec.kind.value}/{spec.id}")
        return CreateSettings(
            spec.id, spec.kind, self.telemetry, durable_downstream=durable,
            worker=placement.role, peers=peers,
        )  # fmt: skip

    def spec(self, kind: Kind, cid: ComponentID) -> ComponentSpec:
        return self.config.components[(kind, cid)]

    def build(self) -> Graph:
        for cid in self.config.extensions:
            spec = self.spec(Kind.EXTENSION, cid)
            extension = _expect(
                spec.factory.create(self.settings(spec), spec.config), Extension, cid
            )
            self.graph.extensions[cid] = extension
            self.graph.add(f"extension/{cid}", extension)
        self._build_exporters()
        for pipeline in self._pipelines_last_first():
            self.entries[pipeline.name] = self._build_pipeline(pipeline)
        self._build_receivers()
        return self.graph

    def _build_exporters(self) -> None:
        wanted: dict[ComponentID, set[Signal]] = {}
        for p in self.config.pipelines.values():
            for cid in p.exporters:
                if (Kind.EXPORTER, cid) in self.config.components:
                    wanted.setdefault(cid, set()).add(p.signal)
        for cid, signals in wanted.items():
            spec = self.spec(Kind.EXPORTER, cid)
            elsewhere = self.placement.exporter_elsewhere(spec) if self.placement else None
            if elsewhere is not None:
                self.graph.exporters[cid] = elsewhere
                continue
            exporter = _expect(
                spec.factory.create(self.settings(spec), spec.config, frozenset(signals)),
                Exporter,
                cid,
            )
            self.graph.exporters[cid] = exporter
            self.graph.add(f"exporter/{cid}", exporter)
            self.telemetry.exporter_created(str(cid), sorted(signals))

    def _pipelines_last_first(self) -> list[PipelineSpec]:
        """Pipelines ordered so that every connector's target pipelines come first."""
        pipelines = self.config.pipelines
        order: list[PipelineSpec] = []
        seen: set[str] = set()

        def visit(p: PipelineSpec) -> None:
            if p.name in seen:
                return
            seen.add(p.name)
            for q in self._targets_of(p):
                visit(q)
            order.append(p)

        for p in pipelines.values():
            visit(p)
        return order

    def _targets_of(self, pipeline: PipelineSpec) -> list[PipelineSpec]:
        connectors = [
            c for c in pipeline.exporters if (Kind.CONNECTOR, c) in self.config.components
        ]
        return [
            q for q in self.config.pipelines.values() if any(c in q.receivers for c in connectors)
        ]

    def _build_pipeline(self, pipeline: PipelineSpec) -> Consumer:
        consumers: list[Consumer] = []
        for cid in pipeline.exporters:
            if cid in self.graph.exporters:
                consumers.append(self.graph.exporters[cid])
            else:
                consumers.extend(self._build_connectors(cid, pipeline))
        head = fan_out(consumers)
        durable = tuple(
            str(cid)
            for cid in pipeline.exporters
            if cid in self.graph.exporters and self.graph.exporters[cid].acknowledges_durably
        )
        for cid in reversed(pipeline.processors):
            spec = self.spec(Kind.PROCESSOR, cid)
            label = f"processor/{cid} ({pipeline.name})"
            settings = self.settings(spec, durable, label)
            created = spec.factory.create(settings, spec.config, pipeline.signal, head)
            processor = _expect(created, Processor, cid)
            self.graph.add(label, processor)
            self.telemetry.processor_created(str(cid), pipeline.signal)
            head = processor
        return head

    def _build_connectors(self, cid: ComponentID, source: PipelineSpec) -> list[Consumer]:
        key = (cid, source.signal)
        if key not in self.connector_sides:
            self.connector_sides[key] = self._new_connectors(cid, source.signal)
        return self.connector_sides[key]

    def _new_connectors(self, cid: ComponentID, source_signal: Signal) -> list[Consumer]:
        spec = self.spec(Kind.CONNECTOR, cid)
        targets = [q for q in self.config.pipelines.values() if cid in q.receivers]
        by_signal: dict[Signal, list[Consumer]] = {}
        for q in targets:
            by_signal.setdefault(q.signal, []).append(self.entries[q.name])
        built: list[Consumer] = []
        for target_signal, consumers in by_signal.items():
            label = f"connector/{cid} ({source_signal}->{target_signal})"
            settings = self.settings(spec, label=label)
            created = spec.factory.create(
                settings, spec.config, source_signal, target_signal, fan_out(consumers)
            )
            connector = _expect(created, Connector, cid)
            self.graph.add(label, connector)
            built.append(connector)
        return built

    def _build_receivers(self) -> None:
        wanted: dict[ComponentID, dict[Signal, list[Consumer]]] = {}
        for p in self.config.pipelines.values():
            for cid in p.receivers:
                if (Kind.RECEIVER, cid) in self.config.components:
                    wanted.setdefault(cid, {}).setdefault(p.signal, []).append(self.entries[p.name])
        for cid, by_signal in wanted.items():
            spec = self.spec(Kind.RECEIVER, cid)
            consumers = {signal: fan_out(cs) for signal, cs in by_signal.items()}
            for signal, consumer in consumers.items():
                self.graph.receiver_pipelines[(str(cid), signal)] = consumer
                if self.placement is not None:
                    consumers[signal] = self.placement.route(cid, signal, consumer)
            receiver = _expect(
                spec.factory.create(self.settings(spec), spec.config, consumers), Receiver, cid
            )
            self.graph.receivers[cid] = receiver
            self.graph.add(f"receiver/{cid}", receiver)
