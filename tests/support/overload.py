"""Overload, then recovery: the backend is down until the memory limiter refuses, then it
returns; how long until the collector accepts again, and was anything lost?

Used by the overload test and by ``benchmarks/robustness.py``. The collector's memory
limit is set a fixed amount above its own footprint at rest (measured first, with a
generous limit), so the held data, not the machine, decides when it refuses.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.collector.e2e.clients import (
    expected_spans,
    make_spans,
    metric_total,
    read_output,
    scrape,
    sdk_exporters,
    span_keys,
    wait_until,
)
from tests.support.collector import allocate_ports, collector, downstream_config

LIMITED = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
processors:
  memory_limiter: {limit_mib: LIMIT, spike_limit_mib: 20, check_interval: 200ms}
exporters:
  otlp:
    endpoint: 127.0.0.1:DOWN
    tls: {insecure: true}
    timeout: 2s
    sending_queue: {queue_size: 100000, num_consumers: 4}
    retry_on_failure: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0}
extensions:
  health_check: {endpoint: "127.0.0.1:{health}"}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter], exporters: [otlp]}
"""
HELD_BEFORE_REFUSING_MIB = 40  # the limit is the footprint at rest + this + the 20 MiB spike


@dataclass
class OverloadResult:
    acknowledged: int  # spans the SDK was told were accepted before the first refusal
    delivered: int  # of those, how many reached the backend after it returned
    refused_readiness: str  # what /health/ready said while refusing
    refusing_metric: float  # otelkit_processor_memory_limiter_refusing while refusing
    recovered_seconds: float  # from the backend's return to readiness passing again
    accepted_after: bool  # a new export succeeded after the recovery
    log: str


def rss_mib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 // (1024 * 1024)


def ready(port: int) -> tuple[int, str]:
    """(status, output) of ``/health/ready``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())["status"]
    except urllib.error.HTTPError as error:
        return error.code, str(json.loads(error.read()).get("output", ""))


def overload_and_recover(tmp_path: Path, batches: int = 150) -> OverloadResult:
    out = tmp_path / "down.jsonl"
    down_ports, up_ports = allocate_ports("grpc"), allocate_ports("grpc", "health")
    config = LIMITED.replace("DOWN", str(down_ports["grpc"]))
    with collector(config.replace("LIMIT", "4000"), tmp_path, ports=up_ports,
                   name="probe") as probe:  # fmt: skip
        at_rest = rss_mib(probe.process.pid)
        probe.stop()
    limit = at_rest + HELD_BEFORE_REFUSING_MIB + 20
    made = [make_spans(500, tag=f"b{i}-", realistic=True) for i in range(batches)]
    exporter = sdk_exporters("grpc", f"127.0.0.1:{up_ports['grpc']}", timeout=3)["traces"]
    acknowledged: list[Any] = []
    try:
        with collector(config.replace("LIMIT", str(limit)), tmp_path, ports=up_ports) as up:
            for batch in made:
                if exporter.export(batch).name != "SUCCESS":
                    break
                acknowledged.extend(batch)
            else:
                raise AssertionError(f"the limiter never refused: {scrape(up.ports['metrics'])}")
            _, readiness = ready(up_ports["health"])
            refusing = metric_total(
                scrape(up.ports["metrics"]), "otelkit_processor_memory_limiter_refusing"
            )
            with collector(downstream_config(["traces"], out), tmp_path, ports=down_ports,
                           name="down"):  # fmt: skip
                started = time.monotonic()
                wait_until(lambda: ready(up_ports["health"])[0] == 200, timeout=120,
                           what="readiness to pass again")  # fmt: skip
                recovered = time.monotonic() - started
                accepted_after = exporter.export(made[-1]).name == "SUCCESS"
                delivered = _delivered(out, acknowledged)
            up.stop()
            log = up.log()
    finally:
        exporter.shutdown()
    return OverloadResult(len(acknowledged), delivered, readiness, refusing, recovered,
                          accepted_after, log)  # fmt: skip


def _delivered(out: Path, acknowledged: Sequence[Any]) -> int:
    want = expected_spans(acknowledged)

    def arrived() -> int:
        got = span_keys(read_output(out))
        return sum(1 for key in want if got[key])

    with contextlib.suppress(AssertionError):  # the caller compares the counts
        wait_until(lambda: arrived() == len(want), timeout=60, what="acknowledged spans")
    return arrived()
