"""``otelkit demo --with-prometheus`` as a new user runs it: one command, the default
collector and the instrumented shop, every situation seen end to end, the places to look
printed with commands that really show what they claim."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelkit.budgets.model import load_budgets
from otelkit.demo.observe import SITUATIONS
from tests.support.services import require_binary

pytestmark = [pytest.mark.service("prometheus"), pytest.mark.service("alertmanager")]

ROOT = Path(__file__).resolve().parents[2]
DURATION = 40


@dataclass
class DemoRun:
    returncode: int
    output: str
    summary: dict[str, Any]
    data_dir: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    cwd = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "SENTRY_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "demo", "--duration", str(DURATION),
         "--data-dir", "data", "--with-prometheus"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=DURATION + 200,
    )  # fmt: skip
    print(result.stdout, result.stderr)  # shown when a test fails
    summary = json.loads((cwd / "data" / "summary.json").read_text())
    return DemoRun(result.returncode, result.stdout, summary, cwd / "data")


@pytest.mark.parametrize("situation", [s.key for s in SITUATIONS])
def test_each_situation_is_seen_end_to_end(demo: DemoRun, situation: str) -> None:
    assert demo.summary["seen_after_seconds"][situation] is not None, demo.output


def test_a_page_reaches_alertmanager_with_a_runbook_link(demo: DemoRun) -> None:
    assert demo.summary["seen_after_seconds"]["page"] is not None, demo.output
    assert "ApiAvailabilityErrorBudgetBurn" in demo.summary["alerts"]
    base = load_budgets(ROOT / "collector/budgets.yaml").defaults.runbook_base_url
    links = re.findall(r"runbook: (\S+)", demo.output)
    assert links and all(link.startswith(f"{base}/") for link in links), links
    assert all((ROOT / "docs/runbooks" / link.rsplit("/", 1)[1]).is_file() for link in links)


def test_no_collector_alert_fires_on_a_healthy_demo(demo: DemoRun) -> None:
    assert [a for a in demo.summary["alerts"] if a.startswith("Otelkit")] == []


def test_every_request_is_counted_in_the_span_metrics(demo: DemoRun) -> None:
    sent, counted = demo.summary["sent"], demo.summary["counted"]
    assert {route: counted.get(route) for route in sent} == sent


def test_the_demo_exits_zero_when_everything_was_seen(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.output
    assert "Every situation was seen end to end" in demo.output


def test_it_prints_where_to_look_and_sentry_is_off(demo: DemoRun) -> None:
    for name in ("span metrics", "health", "collector's own metrics", "log search API",
                 "Prometheus alerts", "Alertmanager"):  # fmt: skip
        assert re.search(rf"^  {re.escape(name)} +\S", demo.output, re.MULTILINE), name
    assert re.search(r"^  Sentry +disabled: set SENTRY_DSN$", demo.output, re.MULTILINE)
    assert (demo.data_dir / "logs.db").is_file()
    assert "${env:OTELKIT_LOGS_API_TOKEN}" in (demo.data_dir / "collector.yaml").read_text()


def test_the_printed_log_queries_show_what_they_claim(demo: DemoRun) -> None:
    """Each `otelkit logs query` line for a finding type prints records of that type."""
    commands = re.findall(r"^ +(\S+) +\d+ +(otelkit logs query .*--attr otelkit\.finding\.type=\S+)$",
                          demo.output, re.MULTILINE)  # fmt: skip
    assert {kind for kind, _ in commands} >= {
        "n_plus_one_db_queries",
        "slow_db_query",
        "consecutive_http",
    }
    for kind, command in commands:
        argv = shlex.split(command)
        result = subprocess.run(
            [sys.executable, "-m", "otelkit.cli", *argv[1:], "--json", "--limit", "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert records and all(r["attributes"]["otelkit.finding.type"] == kind for r in records)


def test_the_printed_log_api_command_names_the_api_and_its_token(demo: DemoRun) -> None:
    [command] = re.findall(r"^  log search API +(curl .*)$", demo.output, re.MULTILINE)
    argv = shlex.split(command)
    assert argv[:3] == ["curl", "-s", "-H"]
    assert re.fullmatch(r"Authorization: Bearer [0-9a-f]{32}", argv[3])
    assert argv[4].startswith("http://127.0.0.1:") and "/api/logs?" in argv[4]
    assert demo.summary["log_records"] > 0  # what the demo read through that API


def test_the_demo_stops_everything_it_started(demo: DemoRun) -> None:
    """Once it exits, nothing it started still answers: the API, the shop, Prometheus."""
    urls = re.findall(r"(http://127\.0\.0\.1:\d+)/", demo.output)
    assert len(set(urls)) >= 6
    for url in set(urls):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=2)
