"""``loadbalancing``: routes data over OTLP/gRPC to a set of backends by a key, so that
everything with one key (every span of a trace, by default) lands on one backend.

Each backend is an ``otlp`` exporter built from ``protocol.otlp`` with the backend's
endpoint, so its queue, retries, TLS and auth are the ``otlp`` exporter's own. Each
incoming batch is split by key over the consistent hash ring (:mod:`.ring`); the batch is
acknowledged once every part is accepted by its backend (queued, or delivered without a
queue). When one part is refused the sender hears the refusal and retries the whole batch:
parts already accepted may arrive twice, nothing is lost.

When the resolver's answer changes, new backends are started and the ring is rebuilt;
removed backends are shut down: each drains its queue within ``drain_timeout`` while it
still delivers, and what it could not deliver is routed again over the remaining backends
rather than dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from otelkit.collector.exporters.loadbalancing.config import LoadBalancingConfig
from otelkit.collector.exporters.loadbalancing.resolver import Resolver, make_resolver
from otelkit.collector.exporters.loadbalancing.ring import HashRing
from otelkit.collector.exporters.loadbalancing.routing import split
from otelkit.collector.exporters.otlp import OTLPExporter
from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.component import (
    Component,
    ComponentID,
    CreateSettings,
    Exporter,
    Host,
    Status,
    exporter_factory,
)
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.listeners import Destination

log = logging.getLogger("otelkit.exporter.loadbalancing")

# Upstream's buckets for otelcol_loadbalancer_backend_latency, in milliseconds.
LATENCY_BUCKETS_MS = (5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
# Times a part is routed again when its backend was removed while it was being handed over.
_REROUTES = 3
# Pause between tries to place the requests of a removed backend elsewhere.
_HANDOVER_PAUSE = 1.0


class LoadBalancingExporter(Exporter):
    def __init__(self, settings: CreateSettings, config: LoadBalancingConfig) -> None:
        self.settings = settings
        self.config = config
        self.name = str(settings.id)
        self.telemetry = settings.telemetry
        self.resolver: Resolver = make_resolver(config.resolver, settings.telemetry)
        self.backends: dict[str, OTLPExporter] = {}
        self.ring: HashRing | None = None
        self._host: BackendsHost | None = None
        self._updating = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing = False
        self._give_up_at = float("inf")  # when shutting down: stop placing handed-over data
        self._init_metrics()

    def _init_metrics(self) -> None:
        t, resolver = self.telemetry, self.resolver.kind
        t.gauge("otelcol_loadbalancer_num_backends", "Current number of backends in use",
                ("resolver",)).labels(resolver).set(0)  # fmt: skip
        self._updates = t.counter(
            "otelcol_loadbalancer_num_backend_updates",
            "Number of times the list of backends was updated",
            ("resolver",),
        )
        self._updates.labels(resolver)
        self._latency = t.histogram(
            "otelcol_loadbalancer_backend_latency",
            "Response latency in ms for the backends (time for a backend to accept a part)",
            ("endpoint",),
            LATENCY_BUCKETS_MS,
        )
        self._outcome = t.counter(
            "otelcol_loadbalancer_backend_outcome",
            "Number of parts handed to each backend, by whether it accepted them",
            ("endpoint", "success"),
        )

    # Component ---------------------------------------------------------------------------
    @property
    def acknowledges_durably(self) -> bool:
        queue = self.config.protocol.otlp.sending_queue
        return not queue.enabled or queue.storage is not None

    def destinations(self) -> list[Destination]:
        what = f"OTLP/gRPC by {self.config.routing_key}"
        return [Destination(what, self.resolver.describe())]

    def held_bytes(self) -> int:
        return sum(backend.held_bytes() for backend in self.backends.values())

    async def start(self, host: Host) -> None:
        self._host = BackendsHost(host, self.settings.label)
        await self.resolver.start(self.update)
        if self.ring is None:
            self._host.no_backends(f"no backends yet from {self.resolver.describe()}")

    async def shutdown(self) -> None:
        self._closing = True
        self._give_up_at = time.monotonic() + self.config.protocol.otlp.sending_queue.drain_timeout
        await self.resolver.stop()
        while self._retiring:
            await asyncio.wait(set(self._retiring))
        backends, self.backends, self.ring = self.backends, {}, None
        await asyncio.gather(*(self._stop_backend(e, b) for e, b in backends.items()))

    async def consume(self, payload: Payload) -> None:
        await self._route(payload, _REROUTES)

    # Routing -----------------------------------------------------------------------------
    async def _route(self, payload: Payload, reroutes: int) -> None:
        ring, backends = self.ring, self.backends
        if ring is None:
            raise RetryableError(f"exporter {self.name}: no backends resolved yet", 1.0)
        parts = split(payload, self.config.routing_key, ring.index_for)
        sends = [self._send(ring.endpoints[i], backends, part, reroutes) for i, part in parts.items()]  # fmt: skip
        if len(sends) == 1:
            await sends[0]
            return
        errors = [e for e in await asyncio.gather(*sends, return_exceptions=True) if e]
        if errors:
            raise errors[0]

    async def _send(
        self, endpoint: str, backends: dict[str, OTLPExporter], part: Payload, reroutes: int
    ) -> None:
        started = time.perf_counter()
        try:
            await backends[endpoint].consume(part)
        except RetryableError:
            self._count(endpoint, started, success=False)
            if reroutes and endpoint not in self.backends:  # removed meanwhile: route again
                await self._route(part, reroutes - 1)
                return
            raise
        except Exception:
            self._count(endpoint, started, success=False)
            raise
        self._count(endpoint, started, success=True)

    def _count(self, endpoint: str, started: float, *, success: bool) -> None:
        self._latency.labels(endpoint).observe((time.perf_counter() - started) * 1000)
        self._outcome.labels(endpoint, str(success).lower()).inc()

    # Backends that come and go -----------------------------------------------------------
    async def update(self, endpoints: list[str]) -> None:
        """Take the resolver's answer: start new backends, rebuild the ring, retire the
        removed ones. Nothing happens when the endpoints are the ones in use."""
        async with self._updating:
            wanted = sorted(set(endpoints))
            if self._closing or wanted == sorted(self.backends):
                return
            backends = {e: b for e, b in self.backends.items() if e in wanted}
            for endpoint in wanted:
                if endpoint not in backends:
                    backends[endpoint] = await self._start_backend(endpoint)
            removed = {e: b for e, b in self.backends.items() if e not in backends}
            self.ring = HashRing(wanted) if wanted else None
            self.backends = backends
            kind = self.resolver.kind
            self.telemetry.gauge("otelcol_loadbalancer_num_backends", "").labels(kind).set(len(wanted))  # fmt: skip
            self._updates.labels(kind).inc()
            log.info("exporter %s: backends now %s", self.name, ", ".join(wanted) or "none")
            if self._host is not None:
                self._host.no_backends(None if wanted else f"no backends from {self.resolver.describe()}")  # fmt: skip
            for endpoint, backend in removed.items():
                task = asyncio.create_task(self._retire(endpoint, backend), name=f"retire {endpoint}")  # fmt: skip
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _start_backend(self, endpoint: str) -> OTLPExporter:
        config = self.config.protocol.otlp.model_copy(update={"endpoint": endpoint})
        settings = CreateSettings(
            ComponentID(self.settings.id.type, _join(self.settings.id.name, endpoint)),
            self.settings.kind,
            self.telemetry,
            self.settings.logger,
        )
        backend = OTLPExporter(settings, config)
        self.telemetry.exporter_created(backend.name, sorted(Signal))
        for success in ("true", "false"):
            self._outcome.labels(endpoint, success)
        assert self._host is not None
        await backend.start(self._host)
        return backend

    async def _retire(self, endpoint: str, backend: OTLPExporter) -> None:
        """Drain a removed backend; route what it could not deliver over the others."""
        unsent = await backend.shutdown_handing_over()
        self._forget(backend)
        if unsent:
            log.info("exporter %s: routing %d requests of removed backend %s to the others",
                     self.name, len(unsent), endpoint)  # fmt: skip
        for payload in unsent:
            await self._place(payload)

    async def _place(self, payload: Payload) -> None:
        """Route a request accepted earlier until a backend takes it; only the collector
        shutting down with no backend taking it within ``drain_timeout`` drops it
        (counted)."""
        while True:
            try:
                await self._route(payload, _REROUTES)
                return
            except RetryableError as exc:
                if self._closing and (not self.backends or time.monotonic() > self._give_up_at):
                    signal = signal_of(payload)
                    items = count_items(payload)
                    self.telemetry.exporter_send_failed(self.name, signal, items, "shutdown")
                    log.error("exporter %s: dropped %d %s at shutdown: no backend left (%s)",
                              self.name, items, signal.item_name, exc)  # fmt: skip
                    return
                await asyncio.sleep(_HANDOVER_PAUSE)
            except Exception:  # refused for good: the backend's exporter counted the drop
                log.exception("exporter %s: a handed-over request was refused", self.name)
                return

    async def _stop_backend(self, endpoint: str, backend: OTLPExporter) -> None:
        try:
            await backend.shutdown()
        except Exception:
            log.exception("exporter %s: backend %s did not shut down cleanly", self.name, endpoint)
        self._forget(backend)

    def _forget(self, backend: OTLPExporter) -> None:
        if self._host is not None:
            self._host.forget(backend.settings.label)


class BackendsHost:
    """The host as the backends see it: their reachability becomes the status of the
    ``loadbalancing`` exporter itself (``recoverable_error`` while any backend cannot be
    reached, or while there is none), so a removed backend leaves no status behind."""

    def __init__(self, host: Host, label: str) -> None:
        self.host, self.label = host, label
        self._unreachable: dict[str, str] = {}  # backend label -> why

    def report_status(self, component: str, status: Status, message: str = "") -> None:
        if status is Status.RECOVERABLE_ERROR:
            self._unreachable[component] = f"{component}: {message}"
        else:
            self._unreachable.pop(component, None)
        self._report()

    def no_backends(self, why: str | None) -> None:
        """The resolver gave no backend (``why``), or it gave some again (None)."""
        if why is None:
            self.forget("")
        else:
            self._unreachable[""] = why
            self._report()

    def forget(self, component: str) -> None:
        if self._unreachable.pop(component, None) is not None:
            self._report()

    def _report(self) -> None:
        current = self.host.component_statuses().get(self.label, (Status.OK, ""))[0]
        if current not in (Status.STARTING, Status.OK, Status.RECOVERABLE_ERROR):
            return
        if self._unreachable:
            self.host.report_status(self.label, Status.RECOVERABLE_ERROR,
                                    "; ".join(sorted(self._unreachable.values())))  # fmt: skip
        else:
            self.host.report_status(self.label, Status.OK)

    def component_statuses(self) -> Mapping[str, tuple[Status, str]]:
        backends = {label: (Status.RECOVERABLE_ERROR, why) for label, why in self._unreachable.items() if label}  # fmt: skip
        return {**self.host.component_statuses(), **backends}

    def is_ready(self) -> bool:
        return self.host.is_ready()

    def get_extension(self, component_id: ComponentID) -> Component | None:
        return self.host.get_extension(component_id)

    def held_bytes(self) -> int:
        return self.host.held_bytes()

    def set_refusing(self, component: str, reason: str | None) -> None:
        self.host.set_refusing(component, reason)

    def refusals(self) -> Mapping[str, str]:
        return self.host.refusals()


def _join(name: str, endpoint: str) -> str:
    return f"{name}/{endpoint}" if name else endpoint


def _create(
    settings: CreateSettings, config: LoadBalancingConfig, signals: frozenset[Signal]
) -> LoadBalancingExporter:
    for signal in signals:
        problem = config.signal_problem(signal)
        if problem:
            raise ValueError(f"exporter {settings.id}: {problem}")
    return LoadBalancingExporter(settings, config)


factory = exporter_factory("loadbalancing", LoadBalancingConfig, _create, frozenset(Signal))
