"""``collector/otelkit.yaml`` with ``--workers 2`` shows a user what one process shows:
each finding once, counters and ``/health`` while a worker is started again, the
configuration's warnings once, nothing lost at Ctrl-C. Senders use several connections,
which the kernel spreads over both workers."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from tests.budgets.spans import n_plus_one
from tests.budgets.test_findings_reach_the_log_store import (
    finding_types,
    issues,
    server_span,
    stored_findings,
)
from tests.collector.e2e.access import access_record_paths, server_spans
from tests.collector.e2e.clients import metric_total, wait_until
from tests.collector.e2e.test_redaction import post
from tests.collector.workers.test_worker_crash import worker_pid
from tests.collector.workers.test_workers_e2e import (
    exporters,
    get,
    n_plus_one_traces,
    send_span_by_span,
    worker_pids,
)
from tests.sentry.standin import sentry_standin
from tests.support.collector import SHIPPED_CONFIG, RunningCollector, shipped_collector

MS = 1_000_000


class AlternatingOwners(IdGenerator):
    """Trace IDs owned by worker 0, 1, 0, ... (the owner is the last two bytes modulo
    the workers)."""

    def __init__(self) -> None:
        self._random = random.Random(11)
        self._next = itertools.count()

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return (self._random.getrandbits(127) << 1) | next(self._next) % 2


def findings_traffic() -> list[ReadableSpan]:
    """For collector/budgets.yaml: 60 checkout requests of 900 ms (the p95 objective of
    400 ms breaks, once in its five-minute window), one of 2.5 s (a ceiling breach) and
    a request with six repeated queries (an N+1)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop-api"}), id_generator=AlternatingOwners()
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("shop")
    now = time.time_ns()
    for ms in [900] * 60 + [2500]:
        server_span(tracer, "POST /checkout", "/checkout", now, ms).end(end_time=now + ms * MS)
    n_plus_one(tracer, now)
    provider.shutdown()
    return list(memory.get_finished_spans())


def send_in_turns(running: RunningCollector, spans: list[ReadableSpan], per_request: int) -> None:
    senders = exporters(running)
    turns = itertools.cycle(senders)
    try:
        for start in range(0, len(spans), per_request):
            result = next(turns).export(spans[start : start + per_request])
            assert result.name == "SUCCESS", result
    finally:
        for sender in senders:
            sender.shutdown()


def ready(running: RunningCollector) -> bool:
    return get(running.ports["health"], "/health/ready").status_code == 200


def test_each_finding_is_stored_and_sent_to_sentry_once(tmp_path: Path) -> None:
    """A budget's percentile is one over the whole collector's traffic, as in one
    process: found once its window holds ``min_samples`` spans in all (each worker
    alone saw too few), and reported once per window (not by each worker)."""
    expected = ["ceiling", "n_plus_one_db_queries", "percentile"]
    store = tmp_path / "otelkit-data" / "logs.db"
    with (
        sentry_standin() as sentry,
        shipped_collector(tmp_path, {"SENTRY_DSN": sentry.dsn}, args=["--workers", "2"]) as running,
    ):
        wait_until(lambda: ready(running), 60, "readiness of both workers")
        send_in_turns(running, findings_traffic(), per_request=10)
        sentry.wait_for(lambda: len(issues(sentry)) >= len(expected), timeout=30)
        wait_until(lambda: len(stored_findings(store)) >= len(expected), 30, "the findings")
        time.sleep(3)  # perf_issues' wait and tick: a second finding would be stored by now
        assert running.stop() == 0, running.log()[-3000:]
    assert finding_types(stored_findings(store)) == expected, running.log()[-3000:]
    sent: list[Any] = [event["tags"]["otelkit.finding.type"] for event in issues(sentry)]
    assert sorted(sent) == expected


def test_configuration_warnings_are_printed_once(tmp_path: Path) -> None:
    """The supervisor checks the configuration and says what is wrong with it; the
    workers load the same file and stay quiet about it."""
    text = SHIPPED_CONFIG.read_text().replace("  debug: {}\n", "  debug: {}\n  nop: {}\n", 1)
    with shipped_collector(tmp_path, config_text=text, args=["--workers", "2"]) as running:
        wait_until(lambda: ready(running), 60, "readiness of both workers")
        assert running.stop() == 0, running.log()[-3000:]
    warnings = [line for line in running.log().splitlines() if "exporters.nop" in line]
    assert len(warnings) == 1 and "not used in any pipeline" in warnings[0], running.log()


def test_while_a_worker_is_started_again_counters_hold_and_health_warns(tmp_path: Path) -> None:
    """Prometheus takes any decrease of a counter for a reset to zero: had the scrape
    lost the killed worker's counts, ``rate()`` and ``increase()`` would count the other
    worker's whole total again (a spike on every dashboard after each restart). And
    ``/health`` says something is wrong while part of the collector is down, as readiness
    does (one process that is down answers nothing at all)."""
    # Span metrics every second (instead of 15 s), for a short test.
    text = SHIPPED_CONFIG.read_text().replace(
        "  spanmetrics:\n", "  spanmetrics:\n    metrics_flush_interval: 1s\n", 1
    )
    with shipped_collector(tmp_path, config_text=text, args=["--workers", "2"]) as running:
        wait_until(lambda: ready(running), 60, "readiness of both workers")
        send_span_by_span(running, n_plus_one_traces(10))

        def totals() -> tuple[float, float]:
            scrape = get(running.ports["prometheus"], "/metrics").text
            telemetry = get(running.ports["telemetry"], "/metrics").text
            return (
                metric_total(scrape, "traces_span_metrics_calls_total"),
                metric_total(telemetry, "otelcol_receiver_accepted_spans_total"),
            )

        wait_until(lambda: totals() == (70, 70), 30, "70 spans in both views")
        victim = worker_pid(running, 1)
        os.kill(victim, signal.SIGKILL)
        seen, health_while_down = [totals()], []
        while not alive_again(running, victim):
            seen.append(totals())
            # /health first: a worker named by readiness after it was down before it too
            # (it only comes back during this loop).
            health = get(running.ports["health"], "/health").json()
            readiness = get(running.ports["health"], "/health/ready").json()
            if "worker 1: not ready" in readiness.get("output", ""):
                health_while_down.append(health)
        wait_until(lambda: ready(running), 60, "readiness again")
        seen.append(totals())
        assert set(seen) == {(70, 70)}, seen
        assert health_while_down, "readiness never named the worker that was down"
        assert {h["status"] for h in health_while_down} == {"warn"}, health_while_down[0]
        outputs = [c[0].get("output", "") for c in health_while_down[0]["checks"].values()]
        assert any(o.startswith("worker 1: not ready") for o in outputs), outputs
        assert get(running.ports["health"], "/health").json()["status"] == "pass"

        send_span_by_span(running, n_plus_one_traces(4))  # both workers count again
        wait_until(lambda: totals() == (98, 98), 30, "98 spans in both views")
        assert running.stop() == 0, running.log()[-3000:]


def alive_again(running: RunningCollector, killed: int) -> bool:
    """Whether worker 1 runs again (another process than ``killed``) and is ready."""
    return worker_pid(running, 1) != killed and ready(running)


def test_ctrl_c_in_a_terminal_stops_the_workers_in_order_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Ctrl-C signals the terminal's whole process group, supervisor and workers at once
    (as a service manager's stop may signal every process of the service). The workers
    leave the stopping to the supervisor, which stops the log store's worker last, so
    the access records the other worker makes from the traces it holds are stored."""
    database = tmp_path / "otelkit-data" / "logs.db"
    with shipped_collector(tmp_path, args=["--workers", "2"]) as running:
        wait_until(lambda: ready(running), 60, "readiness of both workers")
        for n in range(40):  # a connection each: the kernel spreads them over both workers
            post(running.ports["http"], server_spans(1000 + 10 * n, 10, "/int"))
        for pid in [running.process.pid, *worker_pids(running)]:
            os.kill(pid, signal.SIGINT)
        assert running.stop(timeout=90) == 0, running.log()[-3000:]
    missing = {f"/int{n}" for n in range(1000, 1400)} - access_record_paths(database, "/int")
    assert not missing, f"{len(missing)} of 400 access records lost at Ctrl-C"
    assert "did not stop" not in running.log()
