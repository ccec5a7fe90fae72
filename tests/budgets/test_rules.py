"""Generated rules pass promtool, their generated tests pass promtool test rules (and
fail when an alert is broken), and Alertmanager routes page and ticket correctly."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from otelkit.budgets.model import load_budgets, parse_budgets
from otelkit.budgets.promtests import generate_tests
from otelkit.budgets.rules import burn_windows, generate_rules, rules_text
from tests.budgets.alerting import alertmanager
from tests.support.services import free_port, require_binary

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


def budgets_with_period(period: str, alerting: dict[str, str]) -> dict[str, object]:
    window = "30s" if "min_window" in alerting else "5m"  # scaled-down policies, short windows
    return {
        "defaults": {"period": period, "window": window},
        "alerting": alerting,
        "budgets": {
            "checkout": {
                "match": {"service": "shop-api", "route": "/checkout*", "span_kind": "server"},
                "objectives": ["p95 < 400ms", "p(99)<1000"],
                "slos": {
                    "availability": {"objective": 99.9, "bad": ["error", "http_5xx"]},
                    "latency": {"objective": 99, "bad": "latency > 1000ms"},
                },
            }
        },
    }


# Periods from minutes to months, and alerting policies whose windows are shorter than,
# equal to and longer than the rule evaluation interval.
PERIODS = [
    ("2m", {}),
    ("90m", {}),
    ("1d", {}),
    ("7d", {}),
    ("30d", {}),
    ("1h", {"min_window": "4s"}),
    ("1h", {"min_window": "4s", "rule_interval": "1s"}),
    ("2h", {"min_window": "10s", "rule_interval": "15s"}),
]


@pytest.mark.parametrize(("period", "alerting"), PERIODS)
def test_generated_tests_pass_on_every_run_for_any_period(
    tmp_path: Path, period: str, alerting: dict[str, str]
) -> None:
    budgets = parse_budgets(budgets_with_period(period, alerting))
    (tmp_path / "rules.yml").write_text(rules_text(budgets))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(generate_tests(budgets, "rules.yml")))
    for _ in range(3):  # rule groups used to run in a random order: a different failure each run
        run = promtool("test", "rules", "tests.yml", cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr


def test_idle_windows_do_not_turn_the_slo_figures_into_nan() -> None:
    tests = generate_tests(load_budgets(SHIPPED), RULES.name)["tests"]
    idle = [t for t in tests if "idle windows count as no errors" in t["name"]]
    assert len(idle) == 3  # one per SLO of collector/budgets.yaml
    for test in idle:
        values = [series["values"] for series in test["input_series"]]
        assert all("+0x" in v and "_x" in v for v in values)  # flat, then no samples
        checked = " ".join(check["expr"] for check in test["promql_expr_test"])
        for figure in ("ratio_rate5m", "current_burn_rate", "ratio_rate30d", "remaining"):
            assert figure in checked
    # the shipped rules pass them (test_shipped_rules_pass_promtool_check_and_test)


def test_latency_objective_alerts_wait_one_window_before_firing() -> None:
    rules = generate_rules(load_budgets(SHIPPED))
    objectives = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if "Latency" in r.get("alert", "") and "ErrorBudgetBurn" not in r["alert"]
    ]
    assert {r["alert"]: r["for"] for r in objectives} == {
        "CheckoutLatencyP95": "5m",
        "CheckoutLatencyP99": "5m",
        "ApiLatencyP95": "5m",
        "DatabaseLatencyP99": "10m",
    }
    tests = generate_tests(load_budgets(SHIPPED), RULES.name)["tests"]
    bursts = [t["name"] for t in tests if "burst of slow spans" in t["name"]]
    assert len(bursts) == 4


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


def firing_labels(alert_name: str, severity: str) -> dict[str, str]:
    """The labels a generated alert fires with, for the shipped budgets file."""
    rules = generate_rules(load_budgets(SHIPPED))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert_name and rule["labels"]["severity"] == severity:
                labels = {"alertname": alert_name, **rule["labels"]}
                if "slo" in labels:  # burn alerts keep the SLO's sloth labels
                    slo_id = f"{labels['budget']}-{labels['slo']}"
                    labels |= {"sloth_id": f"shop-api-{slo_id}", "sloth_service": "shop-api",
                               "sloth_slo": slo_id}  # fmt: skip
                return labels
    raise AssertionError(f"no {severity} alert {alert_name}")


@pytest.mark.service("alertmanager")
def test_a_page_inhibits_only_the_ticket_of_its_own_slo(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("smtp-password", "slack-webhook-url", "pagerduty-routing-key"):
        (secrets / name).write_text("http://127.0.0.1:9/unused\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(ALERTMANAGER.read_text().replace("/etc/alertmanager/secrets", str(secrets)))
    alerts = {
        "page": firing_labels("CheckoutAvailabilityErrorBudgetBurn", "page"),
        "same SLO's ticket": firing_labels("CheckoutAvailabilityErrorBudgetBurn", "ticket"),
        "latency SLO's ticket": firing_labels("CheckoutLatencyErrorBudgetBurn", "ticket"),
        "latency objective": firing_labels("CheckoutLatencyP95", "ticket"),
    }
    port = free_port()
    now = datetime.now(UTC)
    window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
    with alertmanager(config, port):
        posted = httpx.post(
            f"http://127.0.0.1:{port}/api/v2/alerts",
            json=[{"labels": labels, **window} for labels in alerts.values()],
            timeout=5,
        )
        assert posted.status_code == 200, posted.text
        deadline = time.monotonic() + 20
        while True:
            got = httpx.get(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=5).json()
            inhibited = {
                name
                for name, labels in alerts.items()
                for alert in got
                if alert["labels"] == labels and alert["status"]["inhibitedBy"]
            }
            if (len(got) == len(alerts) and inhibited) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(got) == len(alerts)
    assert inhibited == {"same SLO's ticket"}
