"""SIGKILL of one worker mid-stream, through the shipped configuration with two workers.

SDK log exporters stream on several connections, which the kernel spreads over both
workers; the SQLite log store runs in worker 0 and worker 1 hands it its records. Every
record whose export the SDK saw succeed must be in the store once the killed worker is
back, whichever worker was killed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.collector.e2e.access import access_record_paths, server_spans
from tests.collector.e2e.clients import wait_until
from tests.collector.e2e.test_redaction import post
from tests.collector.workers.test_workers_e2e import alive, get
from tests.support.collector import RunningCollector, shipped_collector
from tests.support.crash import SIGNALS, Streamer, logstore_bodies

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")
STREAMS = 6  # connections: the kernel spreads them over the workers by their ports
BATCHES, PER_BATCH = 30, 20


def worker_pid(running: RunningCollector, index: int) -> int:
    started = re.findall(rf"worker {index} started \(pid (\d+)\)", running.log())
    assert started, running.log()
    return int(started[-1])


@pytest.mark.parametrize("victim", [0, 1], ids=["the log store's worker", "the other worker"])
def test_a_killed_worker_loses_no_acknowledged_log_record(victim: int, tmp_path: Path) -> None:
    stored = logstore_bodies(f"sqlite:///{tmp_path / 'otelkit-data' / 'logs.db'}")
    logs = SIGNALS["logs"]
    with shipped_collector(tmp_path, args=["--workers", "2"]) as running:
        health = running.ports["health"]
        wait_until(lambda: get(health, "/health/ready").status_code == 200, 60, "readiness")
        target = f"127.0.0.1:{running.ports['grpc']}"
        streamers = [
            Streamer(logs, target, [logs.make(PER_BATCH, f"s{s}-b{b}-") for b in range(BATCHES)])
            for s in range(STREAMS)
        ]
        with ExitStack() as stack:
            for streamer in streamers:
                stack.enter_context(streamer.running())

            def acknowledged() -> int:
                return sum(len(s.acknowledged) for s in streamers)

            wait_until(lambda: acknowledged() >= 300, 60, "300 acknowledged records")
            pid = worker_pid(running, victim)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 10, "the killed worker to go")
            wait_until(lambda: all(s.finished() for s in streamers), 120, "every stream to end")
        wait_until(lambda: get(health, "/health/ready").status_code == 200, 60, "readiness")
        want: Counter[bytes] = Counter()
        for streamer in streamers:
            want.update(streamer.acknowledged)
        deadline = time.monotonic() + 30
        while (missing := [k for k in want if not stored()[k]]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(want)} acknowledged records lost"
        assert running.stop() == 0, running.log()[-3000:]


def test_sigterm_right_after_traffic_stores_every_access_record(tmp_path: Path) -> None:
    """The traces of the last requests are still held by ``perf_issues`` in both workers
    when SIGTERM comes; their access records are made as each worker flushes, and the
    worker that owns the log store stops last, so it takes them all."""
    database = tmp_path / "otelkit-data" / "logs.db"
    with shipped_collector(tmp_path, args=["--workers", "2"]) as running:
        health = running.ports["health"]
        wait_until(lambda: get(health, "/health/ready").status_code == 200, 60, "readiness")
        for n in range(40):  # a connection each: the kernel spreads them over both workers
            post(running.ports["http"], server_spans(1000 + 10 * n, 10, "/term"))
        assert running.stop() == 0, running.log()[-3000:]
    stored = access_record_paths(database, "/term")
    missing = {f"/term{n}" for n in range(1000, 1400)} - stored
    assert not missing, f"{len(missing)} of 400 access records lost at SIGTERM"
