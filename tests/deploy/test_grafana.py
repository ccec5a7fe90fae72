"""The shipped Grafana dashboards load by file provisioning and their queries parse."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p["targets"]]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_provisionable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem
    assert dashboard["title"].startswith("otelkit / ")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
    # ${DS_...} inputs only resolve in the UI import flow, never in file provisioning.
    assert "${DS_" not in path.read_text()


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = []
    for path in DASHBOARDS:
        for index, target in enumerate(targets(json.loads(path.read_text()))):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$service", ".*")
            rules.append({"record": f"check:{path.stem.replace('-', '_')}:{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provider_points_at_a_folder_and_the_datasource_uid_matches() -> None:
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/otelkit.yaml").read_text()
    )
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file"
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasources["datasources"][0]["type"] == "prometheus"


def test_every_collector_alert_has_a_panel_on_the_collector_dashboard() -> None:
    """The panel that shows what the alert watches names the alert in its description."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/collector.rules.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/otelkit-collector.json").read_text())
    for name in names:
        panels = [p for p in dashboard["panels"] if f"Alert {name} " in p.get("description", "")]
        assert len(panels) == 1, f"no panel shows what {name} watches"
