"""Pre-fork safety when the parent has exported: the parent configures otelkit, exports
spans, log records and metrics (its gRPC channels are open) and leaves more queued, then
forks workers (``gunicorn --preload``, and a plain ``os.fork``). Each child exports its own
data over its own connections, nothing hangs, nothing arrives twice, and the parent's
queued data is sent by the parent alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.presets import procs
from tests.presets.prefork import CHILDREN, PER_PHASE, SENDER_HEADER
from tests.presets.sink import OtlpSink, attributes

PARENT_PHASES = ("exported", "queued")
LONG_DELAYS = {  # the parent's "queued" phase stays queued until its shutdown
    "OTEL_BSP_SCHEDULE_DELAY": "60000",
    "OTEL_BLRP_SCHEDULE_DELAY": "60000",
    "OTEL_METRIC_EXPORT_INTERVAL": "60000",
}


@dataclass
class ByProcess:
    """What the sink received, by the ``process.pid`` of the resource that sent it."""

    spans: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    logs: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    work: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    instances: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    peers: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    senders: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    span_ids: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, sink: OtlpSink) -> ByProcess:
        received = cls()
        for span in sink.spans():
            pid = span.resource["process.pid"]
            received.spans[pid][span.name] += 1
            received.span_ids.append(span.span_id)
        for log in sink.logs():
            received.logs[log.resource["process.pid"]][str(log.body)] += 1
        for pid, metric in _metrics(sink.metric_requests, "prefork.work"):
            for point in metric.sum.data_points:  # cumulative: the last value is the total
                received.work[pid][attributes(point.attributes)["phase"]] = point.as_int
        for request in [*sink.trace_requests, *sink.log_requests, *sink.metric_requests]:
            for block in _resource_blocks(request):
                resource = attributes(block.resource.attributes)
                pid = resource["process.pid"]
                received.instances[pid].add(resource["service.instance.id"])
                received.peers[pid].add(sink.peers[id(request)])
                received.senders[pid].add(sink.metadata[id(request)].get(SENDER_HEADER, ""))
        return received


def _resource_blocks(request: Any) -> Iterable[Any]:
    for name in ("resource_spans", "resource_logs", "resource_metrics"):
        yield from getattr(request, name, ())


def _metrics(requests: list[Any], name: str) -> Iterable[tuple[int, Any]]:
    for request in requests:
        for block in request.resource_metrics:
            pid = attributes(block.resource.attributes)["process.pid"]
            for scope in block.scope_metrics:
                yield from ((pid, metric) for metric in scope.metrics if metric.name == name)


def _phase(phase: str) -> tuple[set[str], set[str]]:
    """The span names and log bodies of one phase."""
    return (
        {f"{phase} {index}" for index in range(PER_PHASE)},
        {f"{phase} log {index}" for index in range(PER_PHASE)},
    )


def _assert_each_process_sent_its_own(
    received: ByProcess, parent: int, children: set[int], child_phase: str | None
) -> None:
    assert set(received.instances) == {parent, *children}, dict(received.instances)
    # Nothing twice: every span once, every phase log record once.
    assert len(received.span_ids) == len(set(received.span_ids))
    for phase in PARENT_PHASES:
        names, bodies = _phase(phase)
        for pid in (parent, *children):
            expected = 1 if pid == parent else 0
            assert all(received.spans[pid][name] == expected for name in names), (pid, phase)
            assert all(received.logs[pid][body] == expected for body in bodies), (pid, phase)
    # The parent's counter: its own measurements, once; a child never repeats them.
    assert received.work[parent] == {phase: PER_PHASE for phase in PARENT_PHASES}
    for child in children:
        assert received.work[child] == ({child_phase: PER_PHASE} if child_phase else {})
        if child_phase:
            names, bodies = _phase(child_phase)
            assert all(received.spans[child][name] == 1 for name in names)
            assert all(received.logs[child][body] == 1 for body in bodies)
    # Each process is its own instance and sent through exporters and connections of its own.
    assert {pid: {str(pid)} for pid in received.senders} == dict(received.senders)
    assert all(len(ids) == 1 for ids in received.instances.values())
    assert len(set().union(*received.instances.values())) == 1 + len(children)
    for child in children:
        assert received.peers[child].isdisjoint(received.peers[parent]), dict(received.peers)
        for other in children - {child}:
            assert received.peers[child].isdisjoint(received.peers[other])


def test_os_fork_children_export_their_own_and_the_parent_its_queue(sink: OtlpSink) -> None:
    sink.clear()
    env = {
        **os.environ,
        "PYTHONPATH": str(procs.ROOT),
        **procs.telemetry_env(sink.endpoint, "prefork-fork", OTELKIT_LOG_FORMAT="none"),
        **LONG_DELAYS,
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.presets.prefork"],
        cwd=procs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["flushed"], result.stderr
    children = {int(pid) for pid in summary["children"]}
    assert len(children) == CHILDREN
    assert set(summary["children"].values()) == {0}, f"a child failed or hung: {result.stderr}"
    _assert_each_process_sent_its_own(ByProcess.of(sink), summary["parent"], children, "child")


@pytest.mark.parametrize("mode", ["manual", "auto"])
def test_preload_master_that_exported_forks_workers_that_export_their_own(
    mode: str, sink: OtlpSink, tmp_path: Path
) -> None:
    sink.clear()

    def build(port: int) -> list[str]:
        command = procs.gunicorn_command(port, "-w", str(CHILDREN), "--preload")
        return procs.auto(command) if mode == "auto" else command

    env = procs.telemetry_env(
        sink.endpoint, f"prefork-{mode}", APP_MODE=mode, APP_EXPORT_BEFORE_FORK="1", **LONG_DELAYS
    )
    with procs.server(build, env, tmp_path, f"preload-{mode}") as running:
        workers = procs.worker_pids(running.url, CHILDREN)
        assert len(workers) == CHILDREN, running.log()
        master = running.process.pid
        assert running.stop() == 0, running.log()

    received = ByProcess.of(sink)
    _assert_each_process_sent_its_own(received, master, workers, None)
    for worker in workers:
        assert received.spans[worker]["GET /slow"] >= 1, dict(received.spans)
