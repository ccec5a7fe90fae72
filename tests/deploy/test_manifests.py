"""The Kubernetes, Compose and Prometheus files agree with the configs they ship."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.listeners import Listener, all_listeners, is_loopback
from otelkit.collector.runtime.registry import Registry
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
CONTAINER_CONFIG = ROOT / "collector/otelkit-production.yaml"
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


def by_kind(kind: str, name: str = "otelkit-collector") -> dict[str, Any]:
    [doc] = [d for d in kube_documents() if d.get("kind") == kind and d["metadata"]["name"] == name]
    return doc


def test_the_configmap_holds_exactly_the_shipped_files() -> None:
    data = by_kind("ConfigMap")["data"]
    assert (
        data["otelkit-production.yaml"] == (ROOT / "collector/otelkit-production.yaml").read_text()
    )
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
    assert {4317, 4318} | set(scraped_ports()) <= service_ports
    assert {p["targetPort"] for p in by_kind("Service")["spec"]["ports"]} <= set(ports)


def scraped_ports() -> list[int]:
    """Every port deploy/prometheus/prometheus.yml scrapes on the collector's Service."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    return [
        int(target.rsplit(":", 1)[1])
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
        if target.startswith("otelkit-collector:")
    ]


def container_listeners() -> dict[int, tuple[str, Listener]]:
    config = parse_config(CONTAINER_CONFIG.read_text(), Registry.discover(), PRODUCTION_ENV)
    found = all_listeners(config)
    return {int(one.endpoint.rsplit(":", 1)[1]): (label, one) for label, one in found}


def test_image_compose_and_kubernetes_run_the_same_container_config() -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    [cmd] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    image_config = json.loads(cmd.removeprefix("CMD "))[1]
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert image_config == "/etc/otelkit/" + CONTAINER_CONFIG.name
    assert compose["services"]["otelkit-collector"]["command"][1] == image_config
    assert container["args"][1] == image_config
    assert Path(image_config).name in by_kind("ConfigMap")["data"]


def test_every_port_the_image_exposes_listens_beyond_loopback() -> None:
    """The image's config must not bind to the container's own loopback what the
    Dockerfile exposes and Prometheus scrapes (the self-metrics did)."""
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    [expose] = [line for line in dockerfile.splitlines() if line.startswith("EXPOSE ")]
    exposed = {int(port) for port in expose.split()[1:]}
    listeners = container_listeners()
    assert exposed == set(listeners)
    for port in exposed | set(scraped_ports()):
        label, listener = listeners[port]
        assert not is_loopback(listener.endpoint.rsplit(":", 1)[0]), (label, listener)


def test_the_container_config_takes_otlp_only_with_the_token_from_a_secret() -> None:
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert protocol["auth"] == {"authenticator": "bearertokenauth"}
    assert "bearertokenauth" in config["service"]["extensions"]
    token_file = PRODUCTION_ENV.get("OTELKIT_TOKEN_FILE") or "/run/secrets/otelkit/token"
    assert config["extensions"]["bearertokenauth"]["filename"].endswith(f":-{token_file}}}")
    # Kubernetes mounts the otelkit-token Secret there (a directory, so rotation works) ...
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "token"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "token"]
    [item] = volume["secret"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == token_file
    assert volume["secret"]["secretName"] == "otelkit-token"
    # ... and Compose its otelkit-token secret.
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    [secret] = compose["services"]["otelkit-collector"]["secrets"]
    assert secret == {"source": "otelkit-token", "target": token_file}
    assert "otelkit-token" in compose["secrets"]
    # Only authenticated listeners are published beyond the host's loopback.
    listeners = container_listeners()
    for published in compose["services"]["otelkit-collector"]["ports"]:
        parts = str(published).split(":")
        if len(parts) == 2:
            assert listeners[int(parts[1])][1].authenticated, published
        else:
            assert parts[0] == "127.0.0.1", published


def test_the_local_config_listens_on_loopback_only() -> None:
    config = parse_config(
        (ROOT / "collector/otelkit.yaml").read_text(), Registry.discover(), {"PATH": ""}
    )
    listeners = all_listeners(config)
    assert {one.what for _, one in listeners} >= {"OTLP/grpc", "OTLP/http", "health check"}
    for label, listener in listeners:
        assert is_loopback(listener.endpoint.rsplit(":", 1)[0]), (label, listener)


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
