"""``otelkit collector run --workers 2`` through the shipped ``collector/otelkit.yaml``.

Real OpenTelemetry SDK exporters on many connections (the kernel spreads connections
over the workers) send traces whose spans are split over separate requests. A trace
is whole in one worker if ``perf_issues`` finds its N+1 query: its six queries arrive in
six requests, and a worker holding only some of them finds nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.budgets.spans import n_plus_one
from tests.collector.e2e.clients import (
    expected_logs,
    expected_points,
    expected_spans,
    log_keys,
    make_logs,
    make_metrics,
    make_spans,
    metric_total,
    point_keys,
    read_output,
    send_all,
    span_keys,
    wait_until,
)
from tests.support.collector import (
    ROOT,
    SHIPPED_ADDRESSES,
    SHIPPED_CONFIG,
    RunningCollector,
    allocate_ports,
    collector,
    downstream_config,
    shipped_collector,
)

BUDGETS = ROOT / "collector" / "budgets.yaml"
TRACES = 12
SPANS_PER_TRACE = 7  # a root and six repeated queries
CONNECTIONS = 6


def n_plus_one_traces(count: int) -> list[list[ReadableSpan]]:
    """``count`` SDK traces, each an N+1 query (its spans, the root last)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "books-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("books")
    now = time.time_ns()
    for _ in range(count):
        n_plus_one(tracer, now)
    provider.shutdown()
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in memory.get_finished_spans():
        by_trace.setdefault(span.get_span_context().trace_id, []).append(span)
    return list(by_trace.values())


def exporters(running: RunningCollector) -> list[SpanExporter]:
    """Several SDK exporters, gRPC and HTTP: one connection each."""
    made: list[SpanExporter] = []
    for i in range(CONNECTIONS):
        if i % 2:
            made.append(HttpSpans(endpoint=f"http://127.0.0.1:{running.ports['http']}/v1/traces"))
        else:
            made.append(GrpcSpans(endpoint=f"127.0.0.1:{running.ports['grpc']}", insecure=True))
    return made


def send_span_by_span(running: RunningCollector, traces: Sequence[Sequence[ReadableSpan]]) -> None:
    """Every span in its own request, each request on the next connection."""
    senders = exporters(running)
    turns = itertools.cycle(senders)
    try:
        for trace in traces:
            for span in trace:
                result = next(turns).export([span])
                assert result.name == "SUCCESS", result
    finally:
        for sender in senders:
            sender.shutdown()


def stored(store: Path, *filters: str) -> list[dict[str, object]]:
    """Records in the log store, read with ``otelkit logs query``."""
    if not store.exists():
        return []
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "logs", "query", "--url", f"sqlite:///{store}",
         *filters, "--json", "--limit", "10000"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return []
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def worker_pids(running: RunningCollector) -> list[int]:
    pid = running.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[RunningCollector]:
    with shipped_collector(tmp_path, args=["--workers", "2"]) as running:
        ready = lambda: get(running.ports["health"], "/health/ready").status_code == 200  # noqa: E731
        wait_until(ready, 60, "readiness of both workers")
        yield running


def test_each_trace_is_processed_whole_and_every_view_is_one(
    two_workers: RunningCollector, tmp_path: Path
) -> None:
    running = two_workers
    assert len(worker_pids(running)) == 2
    banner = running.log()
    assert banner.count("listening: receiver/otlp: OTLP/grpc") == 1
    assert banner.count("sending: exporter/logstore: log records to SQLite") == 1
    traces = n_plus_one_traces(TRACES)
    send_span_by_span(running, traces)
    logs = make_logs(40, "workers")
    send_all("grpc", f"127.0.0.1:{running.ports['grpc']}", logs=logs, batch=7)
    send_all("http", f"127.0.0.1:{running.ports['http']}", logs=logs[:10], batch=3)
    store = tmp_path / "otelkit-data" / "logs.db"

    def findings() -> list[dict[str, object]]:
        return stored(store, "--attr", "event.name=otelkit.finding")

    wait_until(lambda: len(findings()) >= TRACES, 60, "a finding for every trace")
    found = findings()
    assert (
        sorted(str(f["attributes"]["otelkit.finding.type"]) for f in found)
        == [  # type: ignore[index]
            "n_plus_one_db_queries"
        ]
        * TRACES
    ), running.log()[-3000:]
    expected_ids = {f"{trace[0].get_span_context().trace_id:032x}" for trace in traces}
    assert {str(f["trace_id"]) for f in found} == expected_ids

    # Every acknowledged log record stored once: 40 by gRPC, the first 10 again by HTTP.
    records = stored(store, "--grep", "declined")
    bodies = sorted(str(r["body"]) for r in records)
    expected = sorted([f"payment workers{i} declined" for i in range(40)] + [
        f"payment workers{i} declined" for i in range(10)
    ])  # fmt: skip
    assert bodies == expected

    # One self-metrics view: the accepted spans of both workers added up.
    spans_sent = TRACES * SPANS_PER_TRACE
    telemetry = get(running.ports["telemetry"], "/metrics").text
    assert metric_total(telemetry, "otelcol_receiver_accepted_spans_total") == spans_sent
    assert metric_total(telemetry, "otelcol_receiver_accepted_log_records_total") == 50
    assert metric_total(telemetry, "otelkit_perf_issues_total") == TRACES
    assert metric_total(telemetry, "otelkit_collector_workers") == 2

    # One scrape view: span metrics of both workers added up, one series per route.
    def calls() -> float:
        text = get(running.ports["prometheus"], "/metrics").text
        return metric_total(text, "traces_span_metrics_calls_total")

    wait_until(lambda: calls() == spans_sent, 30, f"{spans_sent} calls in span metrics")
    scrape = get(running.ports["prometheus"], "/metrics").text
    series = [
        line for line in scrape.splitlines()
        if line.startswith("traces_span_metrics_calls_total{") and 'span_name="SELECT shop"' in line
    ]  # fmt: skip
    assert len(series) == 1 and series[0].endswith(f" {TRACES * 6}"), series

    ready = get(running.ports["health"], "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "pass"
    assert running.stop() == 0, running.log()[-3000:]
    assert running.log().count("Sentry export is off") == 1  # said once, not by each worker


def test_a_killed_worker_is_started_again_and_sigterm_stops_all(
    two_workers: RunningCollector, tmp_path: Path
) -> None:
    running = two_workers
    first, second = worker_pids(running)
    health = running.ports["health"]
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: not alive(second), 10, "the killed worker to go")

    def names_the_worker() -> bool:
        answer = get(health, "/health/ready")
        output = answer.json().get("output", "") if answer.status_code == 503 else ""
        return re.search(r"worker \d: not ready \(exited with signal SIGKILL", output) is not None

    wait_until(names_the_worker, 10, "readiness to name the worker that is down")

    def restarted() -> bool:
        pids = worker_pids(running)
        return len(pids) == 2 and second not in pids

    wait_until(restarted, 30, "a new worker")
    wait_until(lambda: get(health, "/health/ready").status_code == 200, 60, "readiness again")
    telemetry = get(running.ports["telemetry"], "/metrics").text
    assert metric_total(telemetry, "otelkit_collector_worker_restarts_total") == 1
    assert re.search(r"worker \d exited with signal SIGKILL; starting it again", running.log())

    # Both workers take data again: every span is accepted and counted once.
    traces = n_plus_one_traces(4)
    send_span_by_span(running, traces)
    telemetry = get(running.ports["telemetry"], "/metrics").text
    assert metric_total(telemetry, "otelcol_receiver_accepted_spans_total") == 4 * SPANS_PER_TRACE

    workers = worker_pids(running)
    assert first in workers
    assert running.stop() == 0, running.log()[-3000:]
    assert not any(alive(pid) for pid in workers)


@pytest.mark.parametrize(("flag", "processes"), [((), 2), (("--workers", "1"), 0)])
def test_service_workers_in_the_config_and_the_flag_that_overrides_it(
    tmp_path: Path, flag: tuple[str, ...], processes: int
) -> None:
    text = SHIPPED_CONFIG.read_text().replace("\nservice:\n", "\nservice:\n  workers: 2\n", 1)
    with shipped_collector(tmp_path, config_text=text, args=flag) as running:
        health = running.ports["health"]
        wait_until(lambda: get(health, "/health/ready").status_code == 200, 60, "readiness")
        assert len(worker_pids(running)) == processes
        assert running.stop() == 0, running.log()[-3000:]


def test_a_worker_that_cannot_start_stops_the_collector_with_an_error(tmp_path: Path) -> None:
    """A taken port fails every worker the same way: no restart loop, exit code 1."""
    ports = allocate_ports(*SHIPPED_ADDRESSES)
    env = {**os.environ, **{name: f"127.0.0.1:{ports[k]}" for k, name in SHIPPED_ADDRESSES.items()}}
    env.update(OTELKIT_DATA_DIR=str(tmp_path / "data"), OTELKIT_BUDGETS_FILE=str(BUDGETS))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["grpc"]))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "otelkit.cli", "collector", "run",
             "--config", str(SHIPPED_CONFIG), "--workers", "2"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "before it was ready: stopping" in result.stderr


def test_a_file_has_one_writer_and_holds_every_acknowledged_item_once(tmp_path: Path) -> None:
    """gRPC and HTTP into two workers; the ``file`` exporter runs in
    one of them and the other hands it its share."""
    out = tmp_path / "out.jsonl"
    config = downstream_config(["traces", "logs", "metrics"], out, http=True)
    ports = allocate_ports("grpc", "http")
    with collector(config, tmp_path, ports=ports, args=["--workers", "2"]) as running:
        spans = make_spans(150, "file")
        logs = make_logs(60, "file")
        metrics = make_metrics()
        send_all("grpc", f"127.0.0.1:{ports['grpc']}", spans[:200], metrics, logs[:30], batch=25)
        send_all("http", f"127.0.0.1:{ports['http']}", spans[200:], logs=logs[30:], batch=25)
        want_spans, want_logs = expected_spans(spans), expected_logs(logs)
        wait_until(lambda: span_keys(read_output(out)) == want_spans, 30, "every span once")
        wait_until(lambda: log_keys(read_output(out)) == want_logs, 30, "every log record once")
        assert point_keys(read_output(out)) == expected_points(metrics)
        assert running.stop() == 0, running.log()[-3000:]
    assert not list(tmp_path.glob("out*.jsonl*"))[1:], "one file, one writer"


def test_workers_of_a_killed_supervisor_exit_and_leave_no_runtime_directory(
    tmp_path: Path,
) -> None:
    config = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:{grpc}"}}}
exporters:
  nop: {}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [nop]}
"""
    ports = allocate_ports("grpc")
    with collector(config, tmp_path, ports=ports, args=["--workers", "2"]) as running:
        wait_until(lambda: len(worker_pids(running)) == 2, 30, "two workers")
        workers = worker_pids(running)
        command = Path(f"/proc/{workers[0]}/cmdline").read_text().split("\0")
        runtime_dir = Path(command[command.index("--runtime-dir") + 1])
        assert runtime_dir.is_dir()
        running.kill()  # SIGKILL: the supervisor cannot tidy up
        wait_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers to exit")
        wait_until(lambda: not runtime_dir.exists(), 10, "the runtime directory to go")
