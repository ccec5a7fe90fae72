"""Runs a built graph: start in dependency order, serve until told to stop, drain.

Once everything has started it logs the start-up banner: one line per listener and per
data destination, then one ``ready`` line.

Start order: extensions, exporters, connectors, processors (last first), receivers.
Shutdown is the reverse for receivers (stop taking data first), then processors front to
back (each flushes into the next), connectors, exporters (drain their queues within
their bound) and extensions last, so the health check reports "not ready" throughout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from otelkit.collector.runtime.component import Component, ComponentID, Status
from otelkit.collector.runtime.config import CollectorConfig
from otelkit.collector.runtime.graph import Graph, Placement, build_graph
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, respond
from otelkit.collector.runtime.listeners import announce, announce_destinations
from otelkit.collector.runtime.memory import HoldsData
from otelkit.collector.runtime.telemetry import SelfTelemetry

log = logging.getLogger("otelkit.collector")


@dataclass
class ServiceHost:
    """What components see of the service: status reporting and extensions."""

    graph: Graph | None = None
    statuses: dict[str, tuple[Status, str]] = field(default_factory=dict)
    ready: bool = False
    started_at: float = field(default_factory=time.time)
    refusing: dict[str, str] = field(default_factory=dict)

    def report_status(self, component: str, status: Status, message: str = "") -> None:
        self.statuses[component] = (status, message)

    def component_statuses(self) -> Mapping[str, tuple[Status, str]]:
        return dict(self.statuses)

    def is_ready(self) -> bool:
        return self.ready

    def get_extension(self, component_id: ComponentID) -> Component | None:
        return self.graph.extensions.get(component_id) if self.graph else None

    def held_bytes(self) -> int:
        if self.graph is None:
            return 0
        return sum(c.held_bytes() for _, c in self.graph.ordered if isinstance(c, HoldsData))

    def set_refusing(self, component: str, reason: str | None) -> None:
        if reason is None:
            self.refusing.pop(component, None)
        else:
            self.refusing[component] = reason

    def refusals(self) -> Mapping[str, str]:
        return dict(self.refusing)


class Service:
    """One running collector, or one worker process of it (with a ``placement``)."""

    def __init__(
        self,
        config: CollectorConfig,
        telemetry: SelfTelemetry | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry or SelfTelemetry()
        self.host = ServiceHost()
        self.placement = placement
        self.graph = build_graph(config, self.telemetry, placement)
        self.host.graph = self.graph
        self._metrics_server: HttpServer | None = None
        self._started: list[tuple[str, Component]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        # A worker's metrics are served by the supervisor, added up with the others'.
        if self.config.telemetry.metrics_address and self.placement is None:
            self._metrics_server = HttpServer(
                self.config.telemetry.metrics_address, self._metrics_app, name="self-telemetry"
            )
            await self._metrics_server.start()
        for label, component in self.graph.ordered:
            self.host.report_status(label, Status.STARTING)
            try:
                await component.start(self.host)
            except Exception as exc:
                self.host.report_status(label, Status.PERMANENT_ERROR, str(exc))
                log.error("%s failed to start: %s", label, exc)
                await self.shutdown()
                raise RuntimeError(f"{label} failed to start: {exc}") from exc
            self._started.append((label, component))
            if self.host.statuses[label][0] == Status.STARTING:
                self.host.report_status(label, Status.OK)
        self.host.ready = True
        if self.placement is not None:  # the supervisor announces the listeners
            role = self.placement.role
            if role.index == 0:  # every worker sends to the same places; say them once
                announce_destinations(self.graph.ordered, log)
            log.info("worker %d of %d ready", role.index, role.count)
            return
        announce(self.config, self.graph.ordered, log)
        log.info(
            "ready: %d pipelines running (%s)",
            len(self.config.pipelines),
            ", ".join(self.config.pipelines),
        )

    async def shutdown(self) -> None:
        """Stop in reverse start order; a component's failure does not stop the others."""
        self.host.ready = False
        for label, component in reversed(self._started):
            self.host.report_status(label, Status.STOPPING)
            try:
                await component.shutdown()
            except Exception:
                log.exception("%s failed to shut down cleanly", label)
            self.host.report_status(label, Status.STOPPED)
        self._started.clear()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Told to stop (it may still be draining)."""
        return self._stop.is_set()

    async def run(self, on_signal: Callable[[], None] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT (or :meth:`request_stop`), shut down.
        ``on_signal``: what SIGTERM and SIGINT do instead of stopping (a worker of
        ``--workers N`` leaves that to its supervisor)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal or self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
            log.info("stopping: draining pipelines")
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    @property
    def metrics_port(self) -> int:
        return self._metrics_server.port if self._metrics_server else 0

    async def _metrics_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await respond(send, 404, b"not found; metrics are at /metrics\n", "text/plain")
            return
        body = self.telemetry.exposition()
        await respond(send, 200, body, "text/plain; version=0.0.4; charset=utf-8")
