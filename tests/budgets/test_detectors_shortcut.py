"""The detectors skip traces whose client spans cannot hold a finding: never one that does."""

from __future__ import annotations

import random

import pytest

from otelkit.budgets.detectors import DetectorsConfig, TraceTallies, could_find, detect
from tests.budgets.spans import S, to_span

QUERIES = [
    "SELECT * FROM items WHERE id = 1",
    "SELECT * FROM items WHERE id = 2",
    "UPDATE t SET x = 1",
]
URLS = ["http://api.internal/v1/users/1", "http://api.internal/v1/users/2", "http://pay.internal/q"]
CONFIGS = {
    "defaults": DetectorsConfig(),
    "low thresholds": DetectorsConfig.model_validate(
        {
            "n_plus_one_db_queries": {"min_count": 2, "min_total_ms": 0},
            "slow_db_query": {"min_duration_ms": 3},
            "consecutive_http": {"min_count": 2, "min_span_ms": 1, "min_savings_ms": 0},
            "n_plus_one_api_calls": {"min_count": 2, "min_total_ms": 1},
        }
    ),
}


def random_trace(rng: random.Random) -> list[S]:
    """A server span and up to 12 client calls (database or HTTP) under it or under an
    internal span, of random durations (some negative), sequential or overlapping."""
    spans = [S("GET /x", span_id=1), S("work", kind="internal", span_id=2, parent=1)]
    at = 0.0
    for k in range(rng.randrange(13)):
        ms = rng.choice([0.2, 2, 9, 11, 60, 120, 499.9, 500, 700, -3])
        parent = rng.choice([1, 1, 2])
        if rng.random() < 0.6:
            attrs: dict[str, str | int | bool] = {
                "db.system": "postgresql",
                "db.query.text": rng.choice(QUERIES),
            }
            name = "SELECT"
        else:
            attrs = {"http.request.method": "GET", "url.full": rng.choice(URLS)}
            name = "GET"
        spans.append(S(name, "client", at, ms, attrs, span_id=10 + k, parent=parent))
        at += rng.choice([0, 0.001, 1, abs(ms) + 0.1, abs(ms) + 600])
    return spans


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_a_trace_with_a_finding_is_never_skipped(config_name: str) -> None:
    config = CONFIGS[config_name]
    rng = random.Random(config_name)
    found = skipped = 0
    for _ in range(3000):
        spans = [to_span(s) for s in random_trace(rng)]
        findings = detect(spans, ["shop-api"] * len(spans), config)
        if findings:
            found += 1
            assert could_find(spans, config), [f.finding.type for f in findings]
        elif not could_find(spans, config):
            skipped += 1
    assert found > 100 and skipped > 100  # both sides of the shortcut were exercised


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_the_per_trace_tally_passes_every_trace_the_shortcut_passes(config_name: str) -> None:
    """perf_issues tallies spans as they arrive, summed per trace: it parses a trace only
    when the tally passes it, so it must pass every trace could_find passes."""
    config = CONFIGS[config_name]
    rng = random.Random(config_name + " tally")
    tallies = TraceTallies(config)
    passed = skipped = 0
    for n in range(3000):
        spans = [to_span(s) for s in random_trace(rng)]
        trace_id = n.to_bytes(16, "big")
        half = len(spans) // 2  # arriving in two batches
        tallies.add([trace_id] * half, spans[:half])
        tallies.add([trace_id] * (len(spans) - half), spans[half:])
        if could_find(spans, config):
            passed += 1
            assert tallies.might_find(trace_id)
        elif not tallies.might_find(trace_id):
            skipped += 1
    assert passed > 100 and skipped > 100
    assert len(tallies) == 0  # each judged trace is forgotten
