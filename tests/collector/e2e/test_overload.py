"""Overload: an exporter that cannot send fills its small queue, the receiver refuses
with retryable codes, the SDK retries, and once the exporter is unblocked every span
arrives. The refusals are counted on the self-telemetry endpoint."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.collector.e2e.clients import (
    expected_spans,
    make_spans,
    metric_total,
    read_output,
    scrape,
    sdk_exporters,
    send_all,
    span_keys,
    wait_until,
)
from tests.support.collector import allocate_ports, collector

DOWNSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
"""

UPSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
exporters:
  otlp:
    endpoint: 127.0.0.1:DOWN
    tls: {insecure: true}
    timeout: 1s
    sending_queue: {queue_size: 2, num_consumers: 1}
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 0}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp]}
"""
SENDERS = 6


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_blocked_exporter_pushes_back_and_nothing_is_lost(transport: str, tmp_path: Path) -> None:
    out = tmp_path / "down.jsonl"
    down_ports, up_ports = allocate_ports("grpc"), allocate_ports("grpc", "http")
    batches = [make_spans(10, tag=f"sender{i}-") for i in range(SENDERS)]
    want = sum((expected_spans(b) for b in batches), start=expected_spans([]))
    upstream = UPSTREAM.replace("DOWN", str(down_ports["grpc"]))
    errors: list[BaseException] = []

    def sender(spans: object) -> None:
        try:
            send_all(transport, f"127.0.0.1:{up_ports[transport]}", spans, timeout=30)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    with collector(upstream, tmp_path, ports=up_ports, name="up") as up:
        threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()

        def refused() -> float:
            return metric_total(scrape(up.ports["metrics"]), "otelcol_receiver_refused_spans_total")

        wait_until(lambda: refused() > 0, what="the receiver to refuse spans")
        downstream = DOWNSTREAM.replace("OUT", str(out))
        with collector(downstream, tmp_path, ports=down_ports, name="down"):
            for thread in threads:
                thread.join(60)
            assert not errors, errors
            wait_until(lambda: span_keys(read_output(out)) == want, what="every span downstream")
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelcol_receiver_refused_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_enqueue_failed_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == sum(want.values())


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


def rss_mib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 // (1024 * 1024)


def ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())["status"]
    except urllib.error.HTTPError as error:
        return error.code, str(json.loads(error.read()).get("output", ""))


def test_overload_then_recovery_limiter_refuses_queue_drains_and_data_flows_again(
    tmp_path: Path,
) -> None:
    """The backend is down, the queue holds more and more, the memory limiter refuses and
    readiness says so; the backend returns, the queue drains, and within a bound the
    limiter accepts again (whatever memory the process keeps), readiness passes, and
    every span the SDK was told was accepted arrives."""
    out = tmp_path / "down.jsonl"
    down_ports, up_ports = allocate_ports("grpc"), allocate_ports("grpc", "health")
    config = LIMITED.replace("DOWN", str(down_ports["grpc"]))
    with collector(
        config.replace("LIMIT", "4000"), tmp_path, ports=up_ports, name="probe"
    ) as probe:
        at_rest = rss_mib(probe.process.pid)
        assert probe.stop() == 0
    limit = at_rest + 60  # refuses once the held data is about 40 MiB
    batches = [make_spans(500, tag=f"b{i}-", realistic=True) for i in range(150)]
    exporter = sdk_exporters("grpc", f"127.0.0.1:{up_ports['grpc']}", timeout=3)["traces"]
    acknowledged: list[object] = []
    with collector(config.replace("LIMIT", str(limit)), tmp_path, ports=up_ports) as up:
        for batch in batches:
            if exporter.export(batch).name != "SUCCESS":
                break
            acknowledged.extend(batch)
        else:
            raise AssertionError(f"the memory limiter never refused: {scrape(up.ports['metrics'])}")
        status, output = ready(up_ports["health"])
        assert status == 503 and "refusing data" in output, output
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelcol_processor_refused_spans_total") > 0
        assert metric_total(text, "otelkit_processor_memory_limiter_refusing") == 1
        downstream = DOWNSTREAM.replace("OUT", str(out))
        with collector(downstream, tmp_path, ports=down_ports, name="down"):
            started = time.monotonic()
            wait_until(lambda: ready(up_ports["health"])[0] == 200, timeout=90,
                       what="readiness to pass again")  # fmt: skip
            recovered = time.monotonic() - started
            assert exporter.export(batches[-1]).name == "SUCCESS"
            want = expected_spans(acknowledged) + expected_spans(batches[-1])  # type: ignore[arg-type]
            wait_until(lambda: span_keys(read_output(out)) == want, timeout=60,
                       what="every acknowledged span downstream")  # fmt: skip
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelkit_processor_memory_limiter_refusing") == 0
        assert "refusing data" in up.log() and "accepting data again" in up.log()
        print(f"recovered {recovered:.1f}s after the backend returned")
        exporter.shutdown()
        assert up.stop() == 0
