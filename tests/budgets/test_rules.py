"""Generated rules pass promtool, their generated tests pass promtool test rules (and
fail when an alert is broken), and Alertmanager routes page and ticket correctly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from otelkit.budgets.model import load_budgets, parse_budgets
from otelkit.budgets.promtests import generate_tests
from otelkit.budgets.rules import burn_windows, generate_rules, rules_text
from tests.support.services import require_binary

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "collector" / "budgets.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "budgets.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules" / "budgets.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
SCALED = {
    "defaults": {"period": "1h"},
    "alerting": {"min_window": "4s", "rule_interval": "1s"},
    "budgets": {
        "checkout": {
            "match": {"service": "shop-api", "route": "/checkout*", "span_kind": "server"},
            "objectives": ["p95 < 300ms over 30s"],
            "slos": {
                "availability": {"objective": 99, "bad": "error"},
                "fast": {"objective": 95, "bad": "latency > 400ms"},
            },
        }
    },
}


def otelkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelkit.cli", *args], capture_output=True, text=True, check=False
    )


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def test_shipped_rules_are_up_to_date_with_the_budgets_file(tmp_path: Path) -> None:
    rules = otelkit("budgets", "rules", "--budgets", str(SHIPPED))
    tests = otelkit("budgets", "rules", "--budgets", str(SHIPPED), "--tests")
    assert rules.returncode == 0 and tests.returncode == 0, rules.stderr + tests.stderr
    assert rules.stdout == RULES.read_text(), (
        "regenerate deploy/prometheus/rules (see prometheus.yml)"
    )
    assert tests.stdout == RULE_TESTS.read_text()


def test_shipped_rules_pass_promtool_check_and_test() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_scaled_down_rules_pass_and_a_broken_alert_fails_its_test(tmp_path: Path) -> None:
    budgets = parse_budgets(SCALED)
    (tmp_path / "rules.yml").write_text(rules_text(budgets))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(generate_tests(budgets, "rules.yml")))
    assert promtool("check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    ok = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A broken 6h/30m page pair, a broken 3d/6h ticket pair, a changed label: all caught.
    text = (tmp_path / "rules.yml").read_text()
    mutations = (
        text.replace("(6 * 0.01)", "(60 * 0.01)"),
        text.replace("(1 * 0.01)", "(2.5 * 0.01)"),
        text.replace("severity: ticket", "severity: tiket", 1),
    )
    for mutated in mutations:
        assert mutated != text
        (tmp_path / "rules.yml").write_text(mutated)
        broken = promtool("test", "rules", "tests.yml", cwd=tmp_path)
        assert broken.returncode != 0
        assert "CheckoutAvailabilityErrorBudgetBurn" in broken.stdout + broken.stderr


def test_windows_scale_with_the_period_and_never_go_below_the_minimum() -> None:
    monthly = burn_windows(30 * 86400, 60)
    assert [(w.severity, w.long, w.short, w.factor) for w in monthly] == [
        ("page", "1h", "5m", 14.4),
        ("page", "6h", "30m", 6.0),
        ("ticket", "1d", "2h", 3.0),
        ("ticket", "3d", "6h", 1.0),
    ]
    hourly = burn_windows(3600, 4)
    assert [(w.long, w.short) for w in hourly] == [
        ("5s", "4s"),
        ("30s", "4s"),
        ("2m", "10s"),
        ("6m", "30s"),
    ]


def test_alert_labels_do_not_depend_on_the_window_and_link_a_runbook() -> None:
    rules = generate_rules(load_budgets(SHIPPED))
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert "sloth_window" not in alert["labels"]
        if "ErrorBudgetBurn" in alert["alert"]:
            assert alert["expr"].count("without (sloth_window)") == 4
        assert alert["labels"]["severity"] in ("page", "ticket")
        url = alert["annotations"]["runbook_url"]
        assert url.startswith("https://")
        assert (RUNBOOKS / url.rsplit("/", 1)[1]).is_file(), f"missing runbook for {url}"
        assert alert["annotations"]["summary"]
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert {
        "slo:sli_error:ratio_rate5m",
        "slo:sli_error:ratio_rate30d",
        "slo:objective:ratio",
        "slo:error_budget:ratio",
        "slo:time_period:days",
        "slo:current_burn_rate:ratio",
        "slo:period_burn_rate:ratio",
        "slo:period_error_budget_remaining:ratio",
    } <= records


def test_rule_selectors_use_the_spanmetrics_labels() -> None:
    text = rules_text(parse_budgets(SCALED))
    assert (
        'traces_span_metrics_calls_total{service_name="shop-api", span_kind="SPAN_KIND_SERVER", http_route=~"/checkout.*", status_code="STATUS_CODE_ERROR"}'
        in text
    )
    assert (
        'traces_span_metrics_duration_milliseconds_bucket{service_name="shop-api", span_kind="SPAN_KIND_SERVER", http_route=~"/checkout.*", le=~"400(\\\\.0)?"}'
        in text
    )


def test_alertmanager_config_is_valid() -> None:
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(ALERTMANAGER)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=page", "alertname=CheckoutAvailabilityErrorBudgetBurn"], "pagerduty"),
        (["severity=ticket", "alertname=ApiLatencyP95"], "ticket-slack,ticket-email"),
        (["alertname=Other"], "default-slack"),
    ],
)
def test_alertmanager_routes_page_and_ticket(labels: list[str], receivers: str) -> None:
    result = subprocess.run(
        [
            require_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            *labels,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receivers
