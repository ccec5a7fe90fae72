"""One worker process: the whole collector graph, sharing ports with its siblings.

A worker runs the same pipelines as a single-process collector, with three differences:
its receivers route data by trace (``routing``), single-writer exporters run in worker 0
only, and it answers the internal channel (shares from other workers, their components'
questions to the same component here, and the supervisor's questions for the health,
self-metrics and scrape views).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import pickle
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import DecodeError

from otelkit.collector.pdata.signals import Signal, signal_of
from otelkit.collector.runtime.component import (
    AnswersPeers,
    ComponentID,
    Consumer,
    Exporter,
    PeerLink,
    WorkerRole,
)
from otelkit.collector.runtime.config import CollectorConfig, ComponentSpec
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.collector.runtime.service import Service
from otelkit.collector.runtime.workers.channel import ChannelServer, Op, Peer, socket_path
from otelkit.collector.runtime.workers.routing import (
    ForwardingExporter,
    RoutingConsumer,
    SingleWriter,
    decode_payload,
)

SINGLE_WRITER_WORKER = 0
STOP_SIGNAL = signal.SIGUSR1
"""How the supervisor tells a worker to drain and stop. SIGTERM and SIGINT do not stop a
worker whose supervisor runs: a terminal's Ctrl-C, and a service manager that signals
every process of the service, reach all workers at once, and the supervisor, which got
the same signal, stops them in order (the single writer last, so it takes what the
others flush as they stop)."""
_NOT_READY_RETRY_AFTER = 1.0
_START_WAIT_SECONDS = 30.0
_COMPONENT_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("otelkit.collector")


@runtime_checkable
class ScrapeSource(Protocol):
    """An exporter whose scrape endpoint the supervisor serves for all workers at once:
    it gives its current series (picklable) for the supervisor to add up."""

    def scrape_series(self) -> Any: ...


class WorkerPlacement:
    """Where this worker's data goes: see :class:`otelkit.collector.runtime.graph.Placement`."""

    def __init__(self, role: WorkerRole, runtime_dir: Path) -> None:
        self.role = role
        self.peers = {
            index: Peer(socket_path(runtime_dir, index), f"worker {index}")
            for index in range(role.count)
            if index != role.index
        }

    def route(self, receiver: ComponentID, signal: Signal, consumer: Consumer) -> Consumer:
        role = self.role
        return RoutingConsumer(str(receiver), signal, consumer, role.index, role.count, self.peers)

    def exporter_elsewhere(self, spec: ComponentSpec) -> Exporter | None:
        config = spec.config
        if self.role.index == SINGLE_WRITER_WORKER:
            return None
        if isinstance(config, SingleWriter) and config.single_writer():
            return ForwardingExporter(str(spec.id), self.peers[SINGLE_WRITER_WORKER])
        return None

    def link(self, label: str) -> PeerLink:
        return _Link(label, self.peers, self.role.index)

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.close()


class _Link:
    """One component's questions to its counterparts, over the workers' channel."""

    def __init__(self, label: str, peers: dict[int, Peer], index: int) -> None:
        self._label = label
        self._peers = peers
        self._index = index

    async def ask(self, worker: int, body: bytes) -> bytes:
        if worker == self._index:
            raise PermanentError(f"{self._label}: worker {worker} is this worker")
        return await self._peers[worker].call(
            Op.COMPONENT, self._label, body, timeout=_COMPONENT_TIMEOUT_SECONDS
        )


class WorkerEndpoint:
    """Answers the internal channel for one worker's running service."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._exporters = {str(cid): e for cid, e in service.graph.exporters.items()}

    async def handle(self, op: Op, name: str, body: bytes) -> bytes:
        if op == Op.CONSUME:
            await self._consume(name, body)
            return b""
        if op in (Op.EXPORT, Op.EXPORT_ACKNOWLEDGED):
            await self._export(name, body, sender_waits=op == Op.EXPORT)
            return b""
        if op == Op.COMPONENT:
            return await self._component(name, body)
        if op == Op.STATE:
            return self._state()
        if op == Op.SELF_METRICS:
            return self._service.telemetry.exposition()
        if op == Op.SCRAPE:
            exporter = self._exporters.get(name)
            if not isinstance(exporter, ScrapeSource):
                raise PermanentError(f"no scrape exporter {name!r} in this worker")
            return pickle.dumps(exporter.scrape_series())
        raise PermanentError(f"unknown operation {op}")

    async def _consume(self, receiver: str, body: bytes) -> None:
        await self._accepting()
        try:
            payload = decode_payload(body)
        except DecodeError as exc:
            raise PermanentError(f"malformed share of a request: {exc}") from exc
        consumer = self._service.graph.receiver_pipelines.get((receiver, signal_of(payload)))
        if consumer is None:
            raise PermanentError(f"receiver {receiver!r} has no {signal_of(payload)} pipeline")
        with sender_waiting():  # the receiving worker's sender waits for this share
            await consumer.consume(payload)

    async def _component(self, label: str, body: bytes) -> bytes:
        """Answered only while every component runs, and refused at once otherwise: the
        asking worker is in the middle of a request, which should not wait for this
        worker's start."""
        if not self._service.host.ready or self._service.stopping:
            raise RetryableError("starting or stopping", _NOT_READY_RETRY_AFTER)
        for known, component in self._service.graph.ordered:
            if known == label and isinstance(component, AnswersPeers):
                return await component.answer_peer(body)
        raise PermanentError(f"no {label} answering other workers in this worker")

    async def _export(self, name: str, body: bytes, *, sender_waits: bool) -> None:
        await self._accepting()
        exporter = self._exporters.get(name)
        if exporter is None or isinstance(exporter, ForwardingExporter):
            raise PermanentError(f"exporter {name!r} does not run in this worker")
        payload = decode_payload(body)
        if not sender_waits:
            await exporter.consume(payload)
            return
        with sender_waiting():  # e.g. the log store answers once the records are committed
            await exporter.consume(payload)

    async def _accepting(self) -> None:
        """Shares are taken only while every component runs. A share arriving while this
        worker starts waits for the start (bounded): its sibling already took its own
        share of the request, which a refusal would make the sender send again."""
        service = self._service
        deadline = time.monotonic() + _START_WAIT_SECONDS
        while not service.host.ready:
            if service.stopping or time.monotonic() >= deadline:
                role = service.placement.role if service.placement else None
                who = f"worker {role.index}" if role else "the worker"
                raise RetryableError(f"{who} is starting or stopping", _NOT_READY_RETRY_AFTER)
            await asyncio.sleep(0.05)

    def _state(self) -> bytes:
        host = self._service.host
        statuses = {
            label: [status.value, message]
            for label, (status, message) in host.component_statuses().items()
        }
        return json.dumps(
            {
                "ready": host.is_ready(),
                "statuses": statuses,
                "refusals": dict(host.refusals()),
                "held_bytes": host.held_bytes(),
            }
        ).encode()


async def run_worker(
    config: CollectorConfig, role: WorkerRole, runtime_dir: Path, supervisor: int | None = None
) -> None:
    """Serve the channel and run the service until SIGTERM/SIGINT (or the supervisor dies).

    ``supervisor``: the supervisor's PID. The kernel signals a worker when its parent dies
    only from the moment the worker asks, so a supervisor killed while the worker was
    still starting would leave it running; comparing the parent with the supervisor after
    asking tells."""
    _exit_with_parent()
    if supervisor is None:
        supervisor = os.getppid()
    if os.getppid() != supervisor:
        log.warning("worker %d: the supervisor is gone; not starting", role.index)
        with contextlib.suppress(OSError):
            runtime_dir.rmdir()
        return
    placement = WorkerPlacement(role, runtime_dir)
    service = Service(config, placement=placement)
    server = ChannelServer(socket_path(runtime_dir, role.index), WorkerEndpoint(service).handle)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(STOP_SIGNAL, service.request_stop)
    await server.start()
    try:
        await service.run(on_signal=partial(_signalled, service, role, supervisor))
    finally:
        loop.remove_signal_handler(STOP_SIGNAL)
        await server.stop()
        await placement.close()
        if os.getppid() != supervisor:  # it was killed: the last worker out removes the directory
            with contextlib.suppress(OSError):
                runtime_dir.rmdir()


def _signalled(service: Service, role: WorkerRole, supervisor: int) -> None:
    """SIGTERM or SIGINT: stop if the supervisor is gone (the kernel's signal at its
    death); otherwise it got the signal too, or will, and stops the workers in order."""
    if os.getppid() != supervisor:
        service.request_stop()
        return
    log.info(
        "worker %d: SIGTERM/SIGINT left to the supervisor (pid %d), which stops the "
        "workers in order", role.index, supervisor,
    )  # fmt: skip


_PR_SET_PDEATHSIG = 1


def _exit_with_parent() -> None:
    """A worker whose supervisor was killed gets SIGTERM (Linux), so none is left behind."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
