"""Every labelled counter the default collector knows it will use is exported at zero
before its first increment: dashboards show 0 instead of "No data", and ``rate()`` sees
the first burst of breaches, issues, refusals and failures."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.support.collector import SHIPPED_CONFIG, shipped_collector

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
UNAUTHENTICATED = "otelkit_receiver_unauthenticated_requests_total"


def scrape(port: int) -> Series:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def test_the_default_collector_exports_its_counters_at_zero(tmp_path: Path) -> None:
    with shipped_collector(tmp_path) as running:
        series = scrape(running.ports["telemetry"])
        for item in ("spans", "metric_points", "log_records"):
            for transport in ("grpc", "http"):
                name = f"otelcol_receiver_refused_{item}_total"
                assert value(series, name, receiver="otlp", transport=transport) == 0.0, name
        for exporter, items in {
            "logstore": ["log_records"],
            "prometheus": ["metric_points"],
            "sentry": ["spans", "log_records"],
            "debug": ["spans"],
        }.items():
            for item in items:
                name = f"otelcol_exporter_send_failed_{item}_total"
                for reason in ("permanent", "retry_exhausted", "shutdown", "invalid"):
                    assert value(series, name, exporter=exporter, reason=reason) == 0.0, (
                        name,
                        exporter,
                        reason,
                    )
                name = f"otelcol_exporter_enqueue_failed_{item}_total"
                assert value(series, name, exporter=exporter) == 0.0, (name, exporter)
        for processor, items in {
            "memory_limiter": ["spans", "metric_points", "log_records"],
            "redaction": ["spans", "metric_points", "log_records"],
            "batch": ["spans", "metric_points"],
            "budget": ["spans"],
            "perf_issues": ["spans"],
            "tail_sampling": ["spans"],
        }.items():
            for item in ("spans", "metric_points", "log_records"):
                for outcome in ("refused", "dropped"):
                    name = f"otelcol_processor_{outcome}_{item}_total"
                    found = value(series, name, processor=processor)
                    assert found == (0.0 if item in items else None), (name, processor)
        passed = "otelkit_processor_memory_limiter_passed_acknowledged_total"
        for signal in ("traces", "metrics", "logs"):
            assert value(series, passed, processor="memory_limiter", signal=signal) == 0.0
        # No receiver of the default configuration requires credentials.
        assert not [k for k in series if k[0] == UNAUTHENTICATED]
        # collector/budgets.yaml: checkout has a ceiling and objectives, api objectives
        # only, database both.
        violations = "otelkit_budget_violations_total"
        for budget, kind in [("checkout", "ceiling"), ("checkout", "percentile"),
                             ("api", "percentile"), ("database", "ceiling"),
                             ("database", "percentile")]:  # fmt: skip
            assert value(series, violations, budget=budget, type=kind) == 0.0, (budget, kind)
        assert value(series, violations, budget="api", type="ceiling") is None  # it has none

        # Performance-issue counters start when a service is first seen.
        issues = "otelkit_perf_issues_total"
        assert not [key for key in series if key[0] == issues]
        send_one_clean_request(running.ports["grpc"])
        kinds = ("n_plus_one_db_queries", "slow_db_query", "consecutive_http",
                 "n_plus_one_api_calls")  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            series = scrape(running.ports["telemetry"])
            found = {k: value(series, issues, type=k, service="shop-api") for k in kinds}
            if all(v is not None for v in found.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found == dict.fromkeys(kinds, 0.0)


def test_a_token_requiring_receiver_counts_refusals_from_zero(tmp_path: Path) -> None:
    """The shipped file as a user edits it to require a token (docs/security.md)."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config.setdefault("extensions", {})["bearertokenauth"] = {"token": "s3cret-token"}
    config["service"].setdefault("extensions", []).append("bearertokenauth")
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        protocol["auth"] = {"authenticator": "bearertokenauth"}
    with shipped_collector(tmp_path, config_text=yaml.safe_dump(config)) as running:
        series = scrape(running.ports["telemetry"])
    for transport in ("grpc", "http"):
        assert value(series, UNAUTHENTICATED, receiver="otlp", transport=transport) == 0.0


def send_one_clean_request(grpc_port: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
    )
    span = provider.get_tracer("test").start_span(
        "GET /health", kind=SpanKind.SERVER, attributes={"http.route": "/health"}
    )
    span.end()
    provider.shutdown()
