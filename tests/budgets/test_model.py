"""The budgets file: what parses, and errors that name the path and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelkit.budgets.model import BudgetsError, load_budgets, parse_budgets

SHIPPED = Path(__file__).parents[2] / "collector" / "budgets.yaml"


def problems(data: object) -> list[str]:
    with pytest.raises(BudgetsError) as info:
        parse_budgets(data)
    return info.value.problems


def test_shipped_example_is_valid() -> None:
    budgets = load_budgets(SHIPPED)
    assert "checkout" in budgets.budgets
    assert budgets.budgets["checkout"].max == 2000.0


def test_objectives_accept_both_spellings() -> None:
    b = parse_budgets(
        {"budgets": {"a": {"objectives": ["p95 < 300ms over 5m", "p(99)<800", "p99.9 < 1.5s"]}}}
    )
    o1, o2, o3 = b.budgets["a"].objectives
    assert (o1.percentile, o1.below_ms, o1.window) == (95, 300, 300)
    assert (o2.percentile, o2.below_ms, o2.window) == (99, 800, None)  # k6: bare ms
    assert (o3.quantile, o3.below_ms) == (0.999, 1500)
    assert b.window_of(o2) == 300  # the file's default window


def test_bad_objective_names_its_path_and_the_expected_form() -> None:
    [msg] = problems({"budgets": {"checkout": {"objectives": ["p95 under 300"]}}})
    assert msg.startswith("budgets.checkout.objectives[0]:")
    assert "p95 < 300ms over 5m" in msg


def test_unknown_key_and_bad_duration_are_reported_together() -> None:
    found = problems({"budgets": {"checkout": {"max": "fast", "match": {"servce": "x"}}}})
    assert any(p.startswith("budgets.checkout.max:") and "not a duration" in p for p in found)
    assert any(p.startswith("budgets.checkout.match.servce:") for p in found)


def test_latency_slo_threshold_must_be_a_bucket_boundary() -> None:
    [msg] = problems(
        {"budgets": {"api": {"slos": {"fast": {"objective": 99, "bad": "latency > 300ms"}}}}}
    )
    assert "budgets.api.slos.fast.bad" in msg and "400ms" in msg


def test_budget_without_any_limit_is_refused() -> None:
    [msg] = problems({"budgets": {"api": {"match": {"service": "x"}}}})
    assert msg.startswith("budgets.api:") and "max, objectives or slos" in msg


def test_slo_bad_kinds_and_objective_range() -> None:
    found = problems({"budgets": {"api": {"slos": {"a": {"objective": 100.5, "bad": "oops"}}}}})
    assert any(p.startswith("budgets.api.slos.a.objective:") for p in found)
    assert any(p.startswith("budgets.api.slos.a.bad:") and "'error'" in p for p in found)


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets:\n  checkout:\n    max: 2 seconds\n")
    run = [sys.executable, "-m", "otelkit.cli", "budgets", "validate", "--budgets"]
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert "budgets.checkout.max" in failed.stderr
    ok = subprocess.run([*run, str(SHIPPED)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"defaults": {"period": "1m"}, "budgets": {"a": {"slos": {"x": {"objective": 99, "bad": "error"}}}}},
            "defaults.period: an SLO period must be longer than alerting.min_window (60s)",
        ),
        (
            {"alerting": {"min_window": "2h"},
             "budgets": {"a": {"slos": {"x": {"objective": 99, "bad": "error", "period": "1h"}}}}},
            "budgets.a.slos.x.period: an SLO period must be longer than alerting.min_window (7200s)",
        ),
    ],
)  # fmt: skip
def test_an_slo_period_must_be_longer_than_the_shortest_alert_window(
    data: object, problem: str
) -> None:
    assert problems(data) == [f"{problem}, the shortest alert window"]
