"""The collector's own alert rules: generated from the packaged ones, pass promtool (and
their tests catch a broken alert), read metrics the collector really exports, are loaded
by every shipped Prometheus setup; and every shipped alert links a runbook that exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from otelkit.budgets.model import load_budgets
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.rules import RULES_FILE, TESTS_FILE, template
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.graph import build_graph
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RUNBOOKS = ROOT / "docs" / "runbooks"
BUDGETS = ROOT / "collector" / "budgets.yaml"


def alerts(path: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(("name", "flags"), [(RULES_FILE, []), (TESTS_FILE, ["--tests"])])
def test_shipped_collector_rules_are_generated_from_the_packaged_ones(
    name: str, flags: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", "rules", "--budgets", str(BUDGETS), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (RULES_DIR / name).read_text(), (
        "regenerate deploy/prometheus/rules (see deploy/prometheus/prometheus.yml)"
    )


def test_collector_rules_pass_promtool_and_their_tests_catch_a_broken_alert(
    tmp_path: Path,
) -> None:
    checked = promtool("check", "rules", RULES_FILE, cwd=RULES_DIR)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout
    tested = promtool("test", "rules", TESTS_FILE, cwd=RULES_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    text = (RULES_DIR / RULES_FILE).read_text()
    (tmp_path / TESTS_FILE).write_text((RULES_DIR / TESTS_FILE).read_text())
    mutations = {
        "OtelkitCollectorDown": text.replace("== 0\n        for: 2m", "== 0\n        for: 20m"),
        "OtelkitReceiverRefusing": text.replace(") > 0.01", ") > 0.5"),
        "OtelkitExporterQueueNearlyFull": text.replace("> 0.8", "> 0.95"),
        "OtelkitMemoryLimiterRefusing": text.replace('processor=~"memory_limiter.*"', 'processor=~"batch"'),
        "OtelkitTailSamplingDecidedEarly": text.replace("for: 10m", "for: 30m", 2),
    }  # fmt: skip
    for alert, mutated in mutations.items():
        assert mutated != text, alert
        (tmp_path / RULES_FILE).write_text(mutated)
        broken = promtool("test", "rules", TESTS_FILE, cwd=tmp_path)
        assert broken.returncode != 0, alert
        assert alert in broken.stdout + broken.stderr


def test_every_shipped_alert_links_a_runbook_that_exists() -> None:
    """Budgets' alerts and the collector's: every link is the one base URL set in the
    budgets file plus a file in docs/runbooks/."""
    base = load_budgets(BUDGETS).defaults.runbook_base_url
    assert base, "collector/budgets.yaml sets defaults.runbook_base_url"
    rules_files = sorted(RULES_DIR.glob("*.rules.yml"))
    assert {p.name for p in rules_files} == {"budgets.rules.yml", "collector.rules.yml"}
    for path in rules_files:
        for alert in alerts(path):
            url = alert["annotations"]["runbook_url"]
            assert url.startswith(base.rstrip("/") + "/"), (path.name, alert["alert"], url)
            runbook = RUNBOOKS / url.removeprefix(base.rstrip("/") + "/")
            assert runbook.is_file(), f"{alert['alert']}: no runbook {runbook}"
            if path.name == RULES_FILE:  # the budgets' runbooks name patterns of alerts
                assert f"`{alert['alert']}`" in runbook.read_text(), runbook.name
    for name in re.findall(r"runbook_url: (\S+)", template(RULES_FILE)):
        assert (RUNBOOKS / name).is_file(), name


def exported_metric_names() -> set[str]:
    """Every metric the default collector can export about itself: its components' own,
    and the per-signal ones once each has happened."""
    config = parse_config(
        (ROOT / "collector/otelkit.yaml").read_text(),
        Registry.discover(),
        {"OTELKIT_BUDGETS_FILE": str(BUDGETS), "OTELKIT_DATA_DIR": "/nonexistent/unused"},
    )
    telemetry = SelfTelemetry()
    build_graph(config, telemetry)
    for signal in Signal:
        telemetry.receiver_accepted("otlp", "grpc", signal, 1)
        telemetry.receiver_refused("otlp", "grpc", signal, 1)
        telemetry.processor_refused("memory_limiter", signal, 1)
        telemetry.exporter_send_failed("logstore", signal, 1, "permanent")
        telemetry.exporter_enqueue_failed("logstore", signal, 1)
        telemetry.exporter_queue("logstore", signal, 1, 10)
    return {sample.name for family in telemetry.registry.collect() for sample in family.samples}


def test_collector_rules_read_metrics_the_collector_exports() -> None:
    exported = exported_metric_names() | {"up"}
    read = set()
    for alert in alerts(RULES_DIR / RULES_FILE):
        read |= set(re.findall(r"\b(up|otel(?:col|kit)_[a-z_]+)\b", alert["expr"]))
    assert read - exported == set()
    assert "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total" in read
    assert "otelkit_logstore_write_errors_total" in read


def test_every_shipped_prometheus_setup_loads_both_rules_files() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert sorted(config["rule_files"]) == ["rules/budgets.rules.yml", "rules/collector.rules.yml"]
    # Compose mounts the whole directory; Kubernetes gets a ConfigMap holding copies.
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    assert "../prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
    rules_map = yaml.safe_load((ROOT / "deploy/kubernetes/prometheus-rules.yaml").read_text())
    for name in ("budgets.rules.yml", "collector.rules.yml"):
        assert rules_map["data"][name] == (RULES_DIR / name).read_text(), (
            f"copy deploy/prometheus/rules/{name} into deploy/kubernetes/prometheus-rules.yaml"
        )
    kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    assert "prometheus-rules.yaml" in kustomization["resources"]


@pytest.mark.parametrize(
    ("base", "runbook", "link"),
    [
        ("https://wiki.example/runbooks/", "checkout.md", "https://wiki.example/runbooks/checkout.md"),
        ("https://wiki.example/runbooks", "https://other.example/x.md", "https://other.example/x.md"),
        (None, "checkout.md", "checkout.md"),
    ],
)  # fmt: skip
def test_runbook_links_are_the_base_plus_the_file(
    base: str | None, runbook: str, link: str
) -> None:
    budgets = load_budgets(BUDGETS).model_copy(
        update={"defaults": load_budgets(BUDGETS).defaults.model_copy(update={"runbook_base_url": base})}
    )  # fmt: skip
    assert budgets.runbook_url(runbook) == link
