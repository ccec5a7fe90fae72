"""Every finding the budget and perf_issues processors emit reaches the log store,
whatever tail sampling keeps: the default collector (``collector/otelkit.yaml``) with
SDK traffic whose traces the sampling policy would drop, and the same file with every
keep rule turned off.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Tracer

from otelkit.collector.processors.memory_limiter import MemoryLimiter
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.service import Service
from tests.budgets.spans import n_plus_one
from tests.sentry.standin import SentryStandIn, sentry_standin
from tests.support.collector import SHIPPED_CONFIG, allocate_ports, shipped_collector

MS = 1_000_000


class UnsampledIds(IdGenerator):
    """Trace IDs the shipped ``one-in-ten`` probabilistic policy never keeps (their low
    64 bits are over 10% of the range), so only a keep rule can keep a trace."""

    def __init__(self) -> None:
        self._random = random.Random(7)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return (self._random.getrandbits(64) << 64) | (1 << 63) | self._random.getrandbits(63)


def send_findings_traffic(grpc_port: int) -> None:
    """For collector/budgets.yaml: 30 checkout requests of 900 ms in one batch (the p95
    objective of 400 ms breaks; each span is within the 2 s ceiling, so the finding sits
    on a span no keep rule marks), then one of 2.5 s (a ceiling breach) and a request
    with six repeated queries (an N+1)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop-api"}), id_generator=UnsampledIds()
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
    )
    tracer = provider.get_tracer("shop")
    now = time.time_ns()
    for ms in [900] * 30:
        server_span(tracer, "POST /checkout", "/checkout", now, ms).end(end_time=now + ms * MS)
    provider.force_flush()
    server_span(tracer, "POST /checkout", "/checkout", now, 2500).end(end_time=now + 2500 * MS)
    n_plus_one(tracer, now)
    provider.shutdown()


def server_span(tracer: Tracer, name: str, route: str, start: int, ms: int):  # type: ignore[no-untyped-def]
    return tracer.start_span(
        name, kind=SpanKind.SERVER, start_time=start, attributes={"http.route": route}
    )


def stored_findings(store: Path) -> list[dict[str, object]]:
    """The findings in the log store, read with ``otelkit logs query`` as the docs say."""
    if not store.exists():
        return []
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "logs", "query", "--url", f"sqlite:///{store}",
         "--attr", "event.name=otelkit.finding", "--json", "--limit", "1000"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return []
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def finding_types(records: list[dict[str, object]]) -> list[str]:
    return sorted(str(r["attributes"]["otelkit.finding.type"]) for r in records)  # type: ignore[index]


def wait_for_findings(store: Path, expected: list[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    records = stored_findings(store)
    while finding_types(records) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        records = stored_findings(store)
    return records


EXPECTED = ["ceiling", "n_plus_one_db_queries", "percentile"]


def test_every_finding_of_the_default_collector_is_in_the_log_store(tmp_path: Path) -> None:
    store = tmp_path / "otelkit-data" / "logs.db"
    with shipped_collector(tmp_path) as running:
        send_findings_traffic(running.ports["grpc"])
        records = wait_for_findings(store, EXPECTED)
        assert running.stop() == 0, running.log()
    assert finding_types(records) == EXPECTED, running.log()[-3000:]
    [percentile] = [r for r in records if r["attributes"]["otelkit.finding.type"] == "percentile"]  # type: ignore[index]
    assert "p95 is 9" in str(percentile["body"])  # observed about 900 ms
    assert percentile["trace_id"]


def test_findings_reach_the_log_store_and_sentry_when_tail_sampling_keeps_nothing(
    tmp_path: Path,
) -> None:
    text = SHIPPED_CONFIG.read_text()
    for rule in ("errors", "budget_breaches", "perf_issues"):
        text = text.replace(f"      {rule}: true", f"      {rule}: false")
    text = text.replace("sampling_percentage: 10", "sampling_percentage: 0")
    assert text.count(": false") == 3 and "sampling_percentage: 0" in text
    store = tmp_path / "otelkit-data" / "logs.db"
    with (
        sentry_standin() as sentry,
        shipped_collector(tmp_path, {"SENTRY_DSN": sentry.dsn}, text) as running,
    ):
        send_findings_traffic(running.ports["grpc"])
        records = wait_for_findings(store, EXPECTED)
        sentry.wait_for(lambda: len(issues(sentry)) >= len(EXPECTED), timeout=30)
        assert running.stop() == 0, running.log()
    assert finding_types(records) == EXPECTED, running.log()[-3000:]
    assert sorted(e["tags"]["otelkit.finding.type"] for e in issues(sentry)) == EXPECTED
    assert not sentry.items("transaction"), "tail sampling kept no trace"


def issues(sentry: SentryStandIn) -> list[dict[str, Any]]:
    return [e for e in sentry.items("event") if "otelkit.finding.type" in e.get("tags", {})]


def test_findings_of_acknowledged_traces_pass_a_memory_limiter_that_refuses_new_data(
    tmp_path: Path,
) -> None:
    """The shipped configuration under memory pressure: the N+1 trace was acknowledged
    before the memory limiter started refusing, so its finding (released by perf_issues
    on its timer into the logs pipeline, behind the same limiter) must still be stored,
    while new requests are refused for their senders to retry. The collector runs in a
    spawned process: gRPC's threads must not outlive it in this one, which forks."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        accepted, refused, passed = pool.apply(run_under_memory_pressure, (str(tmp_path),))
    assert accepted and refused
    records = stored_findings(tmp_path / "otelkit-data" / "logs.db")
    assert finding_types(records) == ["n_plus_one_db_queries"]
    assert passed >= 1


def run_under_memory_pressure(directory: str) -> tuple[bool, bool, float]:
    """(first trace accepted, second refused, log records the limiter passed while
    refusing), from the shipped configuration run in this process."""
    ports = allocate_ports("grpc", "http", "prometheus", "health", "metrics")
    environ = {
        "OTELKIT_GRPC_ENDPOINT": f"127.0.0.1:{ports['grpc']}",
        "OTELKIT_HTTP_ENDPOINT": f"127.0.0.1:{ports['http']}",
        "OTELKIT_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports['prometheus']}",
        "OTELKIT_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "OTELKIT_METRICS_ADDRESS": f"127.0.0.1:{ports['metrics']}",
        "OTELKIT_DATA_DIR": str(Path(directory) / "otelkit-data"),
        "OTELKIT_BUDGETS_FILE": str(SHIPPED_CONFIG.parent / "budgets.yaml"),
    }
    service = Service(parse_config(SHIPPED_CONFIG.read_text(), Registry.discover(), environ))

    async def scenario() -> tuple[bool, bool]:
        await service.start()
        accepted = await asyncio.to_thread(send_n_plus_one, ports["grpc"])
        limiter = next(c for _, c in service.graph.ordered if isinstance(c, MemoryLimiter))
        hold_refusing(limiter)
        refused = not await asyncio.to_thread(send_n_plus_one, ports["grpc"])
        await asyncio.sleep(3)  # perf_issues' wait (2 s) and its tick
        await service.shutdown()
        return accepted, refused

    accepted, refused = asyncio.run(scenario())
    passed = "otelkit_processor_memory_limiter_passed_acknowledged_total"
    return accepted, refused, service.telemetry.total(passed, signal="logs")


def send_n_plus_one(grpc_port: int) -> bool:
    """One N+1 trace sent by the SDK's OTLP exporter; whether the collector accepted it."""
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=2)
    spans = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    n_plus_one(provider.get_tracer("shop"), time.time_ns())
    result = exporter.export(spans.get_finished_spans())
    exporter.shutdown()
    return result is SpanExportResult.SUCCESS


def hold_refusing(limiter: MemoryLimiter) -> None:
    """Makes the limiter's shared check refuse from now on, as under memory pressure."""
    check = limiter._check
    check.check = lambda: None  # type: ignore[method-assign]
    check.refusing, check.reason = True, "held data 400 MiB (memory pressure)"
