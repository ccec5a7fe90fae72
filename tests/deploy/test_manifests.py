"""The Kubernetes, Compose and Prometheus files agree with the configs they ship."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.registry import Registry
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
PRODUCTION_ENV = {
    "SENTRY_DSN": "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42",
    "OTELKIT_LOGSTORE_URL": "postgresql://otelkit@db:5432/otelkit",
    "OTELKIT_BUDGETS_FILE": str(ROOT / "collector/budgets.yaml"),
}


def kube_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in kube_documents() if d.get("kind") == kind]
    return doc


def test_the_configmap_holds_exactly_the_shipped_files() -> None:
    data = by_kind("ConfigMap")["data"]
    assert data["otelkit.yaml"] == (ROOT / "collector/otelkit-production.yaml").read_text()
    assert data["budgets.yaml"] == (ROOT / "collector/budgets.yaml").read_text()


def test_shipped_configs_are_valid() -> None:
    registry = Registry.discover()
    for name in ("otelkit.yaml", "otelkit-production.yaml"):
        text = (ROOT / "collector" / name).read_text()
        config = parse_config(text, registry, {**PRODUCTION_ENV, "PATH": ""})
        assert config.warnings == [], (name, config.warnings)


def test_probes_and_ports_match_the_collector_config() -> None:
    config = yaml.safe_load((ROOT / "collector/otelkit-production.yaml").read_text())
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    otlp = config["receivers"]["otlp"]["protocols"]
    assert ports["otlp-grpc"] == int(otlp["grpc"]["endpoint"].rsplit(":", 1)[1])
    assert ports["otlp-http"] == int(otlp["http"]["endpoint"].rsplit(":", 1)[1])
    assert ports["prometheus"] == int(
        config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    )
    health = int(config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
    assert ports["health"] == health
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTELKIT_BUDGETS_FILE"] == "/etc/otelkit/budgets.yaml"
    service_ports = {p["port"] for p in by_kind("Service")["spec"]["ports"]}
    assert {4317, 4318, 9464} <= service_ports


def test_compose_mounts_and_builds_from_files_that_exist() -> None:
    compose_dir = ROOT / "deploy/compose"
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    build = compose["services"]["otelkit-collector"]["build"]
    context = (compose_dir / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    config_in_image = compose["services"]["otelkit-collector"]["command"][1]
    assert (ROOT / "collector" / Path(config_in_image).name).is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (compose_dir / source).exists(), volume


def test_prometheus_config_passes_promtool() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
