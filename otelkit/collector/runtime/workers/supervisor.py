"""``otelkit collector run --workers N``: the supervisor of N worker processes.

The supervisor validates the configuration, makes a private runtime directory (mode
0700) for the workers' channel sockets, and starts each worker as ``otelkit collector
run`` with internal flags. It serves what must be one view for the whole collector — the
health check, the self-metrics endpoint, each ``prometheus`` exporter's scrape endpoint —
from the workers' answers over the channel. A worker that dies after it was ready is
started again after a backoff (0.5 s doubling to 30 s; back to 0.5 s once it has run
for a minute); one that dies before it was ever ready stops the whole collector with an
error, since a wrong port or a broken plugin would only fail again. On SIGTERM or SIGINT
the supervisor tells every worker to stop (``STOP_SIGNAL``), the single writer last, and
waits for them to drain; the workers themselves leave those signals to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig
from otelkit.collector.exporters.prometheus.merge import ExitedSeries, MergedScrapeView
from otelkit.collector.exporters.prometheus.store import FamilySnapshot
from otelkit.collector.extensions.health_check import HealthCheckConfig
from otelkit.collector.runtime.component import Component, CreateSettings, Kind
from otelkit.collector.runtime.config import CollectorConfig
from otelkit.collector.runtime.errors import ComponentError
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, respond
from otelkit.collector.runtime.listeners import announce
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.collector.runtime.workers.channel import Op, Peer, socket_path
from otelkit.collector.runtime.workers.process import SINGLE_WRITER_WORKER, STOP_SIGNAL
from otelkit.collector.runtime.workers.views import (
    ExitedSamples,
    WorkersHost,
    WorkerState,
    merge_expositions,
)

log = logging.getLogger("otelkit.collector")

TICK_SECONDS = 0.25
STATE_TIMEOUT_SECONDS = 2.0
VIEW_TIMEOUT_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0
DRAIN_SECONDS = 60.0


@dataclass
class WorkerProcess:
    index: int
    peer: Peer
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_once: bool = False
    backoff: float = FIRST_BACKOFF_SECONDS
    restart_at: float | None = None
    state: WorkerState = field(default_factory=WorkerState)
    # What this process last answered for the views: its self-metrics, and each
    # prometheus exporter's series by exporter name.
    last_metrics: str | None = None
    last_series: dict[str, list[FamilySnapshot]] = field(default_factory=dict)


class Supervisor:
    def __init__(self, config: CollectorConfig, config_path: str | None, workers: int) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="otelkit-workers-"))
        self.telemetry = SelfTelemetry()
        self.workers = [
            WorkerProcess(i, Peer(socket_path(self.runtime_dir, i), f"worker {i}"))
            for i in range(workers)
        ]
        self.host = WorkersHost([w.state for w in self.workers])
        self._stop = asyncio.Event()
        self._views: list[Component | HttpServer] = []
        self._failed = False
        # What exited workers counted, kept so that the views' counters never go down.
        self._exited_samples = ExitedSamples()
        self._exited_series: dict[str, ExitedSeries] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start_views()
            for worker in self.workers:
                self._spawn(worker)
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), TICK_SECONDS)
                await self._tick()
            log.info("stopping: draining every worker")
        finally:
            self.host.serving = False
            await self._stop_workers()
            await self._stop_views()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 1 if self._failed else 0

    # Workers ---------------------------------------------------------------------------
    def _spawn(self, worker: WorkerProcess) -> None:
        command = [sys.executable, "-m", "otelkit.cli", "collector", "run"]
        if self.config_path is not None:
            command += ["--config", self.config_path]
        command += [
            "--workers", str(len(self.workers)),
            "--worker-index", str(worker.index),
            "--runtime-dir", str(self.runtime_dir),
            "--supervisor-pid", str(os.getpid()),
        ]  # fmt: skip
        worker.process = subprocess.Popen(command)
        worker.started_at = time.monotonic()
        worker.restart_at = None
        worker.state.report = None
        worker.state.why_not = "starting"
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _tick(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker)
                continue
            code = worker.process.poll()
            if code is not None:
                self._exited(worker, code, now)
        await asyncio.gather(*(self._refresh(w) for w in self.workers if w.process is not None))
        if not self.host.serving and all(w.ready_once for w in self.workers):
            self.host.serving = True
            self._announce()

    def _exited(self, worker: WorkerProcess, code: int, now: float) -> None:
        worker.process = None
        worker.state.report = None
        self._keep_counts(worker)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if not worker.ready_once:
            log.error("worker %d exited with %s before it was ready: stopping", worker.index, how)
            self._failed = True
            self._stop.set()
            return
        if now - worker.started_at >= STABLE_SECONDS:
            worker.backoff = FIRST_BACKOFF_SECONDS
        worker.restart_at = now + worker.backoff
        worker.state.why_not = f"exited with {how}, restarting"
        log.error(
            "worker %d exited with %s; starting it again in %.1fs",
            worker.index, how, worker.backoff,
        )  # fmt: skip
        self.telemetry.counter(
            "otelkit_collector_worker_restarts",
            "Worker processes started again after they exited (otelkit collector run --workers)",
        ).inc()
        worker.backoff = min(worker.backoff * 2, MAX_BACKOFF_SECONDS)

    def _keep_counts(self, worker: WorkerProcess) -> None:
        """What the exited worker last showed of its counters stays in the views."""
        if worker.last_metrics is not None:
            self._exited_samples.add(worker.last_metrics)
        for name, series in worker.last_series.items():
            self._exited_series[name].add(series)
        worker.last_metrics = None
        worker.last_series = {}

    async def _refresh(self, worker: WorkerProcess) -> None:
        try:
            reply = await worker.peer.call(Op.STATE, timeout=STATE_TIMEOUT_SECONDS)
        except ComponentError:
            worker.state.report = None
            return
        report = json.loads(reply)
        worker.state.report = report
        worker.state.why_not = "starting or stopping"
        if report.get("ready"):
            worker.ready_once = True

    async def _stop_workers(self) -> None:
        """The single writer stops last: what the others flush as they stop (the records
        made from the traces their whole-trace processors still hold) goes to it."""
        deadline = time.monotonic() + DRAIN_SECONDS
        others = [w for w in self.workers if w.index != SINGLE_WRITER_WORKER]
        writer = [w for w in self.workers if w.index == SINGLE_WRITER_WORKER]
        for group in (others, writer):
            await _stop([w.process for w in group if w.process is not None], deadline)
        for worker in self.workers:
            await worker.peer.close()

    # Views -----------------------------------------------------------------------------
    async def _start_views(self) -> None:
        for cid in self.config.extensions:
            spec = self.config.components[(Kind.EXTENSION, cid)]
            if isinstance(spec.config, HealthCheckConfig):
                settings = CreateSettings(cid, Kind.EXTENSION, self.telemetry)
                extension = spec.factory.create(settings, spec.config)
                await extension.start(self.host)
                self._views.append(extension)
        if self.config.telemetry.metrics_address:
            server = HttpServer(
                self.config.telemetry.metrics_address, self._self_metrics, name="self-telemetry"
            )
            await server.start()
            self._views.append(server)
        for name, prometheus in self._prometheus_exporters():
            self._exited_series[name] = ExitedSeries(prometheus.metric_expiration)
            view = MergedScrapeView(prometheus, self._scraper(name))
            await view.server.start()
            self._views.append(view.server)

    def _prometheus_exporters(self) -> list[tuple[str, PrometheusConfig]]:
        used = {cid for p in self.config.pipelines.values() for cid in p.exporters}
        return [
            (str(cid), spec.config)
            for (kind, cid), spec in self.config.components.items()
            if kind == Kind.EXPORTER and cid in used and isinstance(spec.config, PrometheusConfig)
        ]

    def _scraper(self, name: str) -> Callable[[], Awaitable[list[list[FamilySnapshot]]]]:
        async def fetch() -> list[list[FamilySnapshot]]:
            running: list[list[FamilySnapshot]] = []
            for worker, reply in await self._ask_all(Op.SCRAPE, name):
                if reply is not None:
                    worker.last_series[name] = pickle.loads(reply)
                if name in worker.last_series:
                    running.append(worker.last_series[name])
            return [*running, self._exited_series[name].alongside(running)]

        return fetch

    async def _ask_all(self, op: Op, name: str = "") -> list[tuple[WorkerProcess, bytes | None]]:
        """Every running worker's answer; None from one that cannot answer now (its last
        answer stands in for it, so that a busy worker's counts do not vanish) or that
        exited meanwhile (its answer went to the exited workers' counts already)."""
        running = [(w, w.process) for w in self.workers if w.process is not None]
        calls = [w.peer.call(op, name, timeout=VIEW_TIMEOUT_SECONDS) for w, _ in running]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        return [
            (w, r if isinstance(r, bytes) and w.process is process else None)
            for (w, process), r in zip(running, replies, strict=True)
        ]

    async def _self_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await respond(send, 404, b"not found; metrics are at /metrics\n", "text/plain")
            return
        self.telemetry.gauge(
            "otelkit_collector_workers",
            "Worker processes running (otelkit collector run --workers)",
        ).set(sum(1 for w in self.workers if w.process is not None))
        texts: list[str] = []
        for worker, reply in await self._ask_all(Op.SELF_METRICS):
            if reply is not None:
                worker.last_metrics = reply.decode()
            if worker.last_metrics is not None:
                texts.append(worker.last_metrics)
        body = merge_expositions(texts, self.telemetry.exposition(), self._exited_samples)
        await respond(send, 200, body, "text/plain; version=0.0.4; charset=utf-8")

    async def _stop_views(self) -> None:
        for view in reversed(self._views):
            if isinstance(view, HttpServer):
                await view.stop()
            else:
                await view.shutdown()
        self._views.clear()

    def _announce(self) -> None:
        announce(self.config, (), log)
        log.info(
            "ready: %d worker processes, %d pipelines each (%s)",
            len(self.workers), len(self.config.pipelines), ", ".join(self.config.pipelines),
        )  # fmt: skip


async def _stop(processes: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """The workers' stop signal, wait until ``deadline`` for them to drain, then SIGKILL."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(STOP_SIGNAL)
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            log.error("worker pid %d did not stop in %.0fs: killing it", process.pid, DRAIN_SECONDS)  # fmt: skip
            process.kill()
            process.wait(5)
