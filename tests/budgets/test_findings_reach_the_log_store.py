"""Every finding the budget and perf_issues processors emit reaches the log store,
whatever tail sampling keeps: the default collector (``collector/otelkit.yaml``) with
SDK traffic whose traces the sampling policy would drop, and the same file with every
keep rule turned off.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Tracer

from tests.budgets.spans import n_plus_one
from tests.sentry.standin import SentryStandIn, sentry_standin
from tests.support.collector import SHIPPED_CONFIG, shipped_collector

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
