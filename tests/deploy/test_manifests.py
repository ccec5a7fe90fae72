"""The Kubernetes, Compose and Prometheus files agree with the configs they ship."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from otelkit.collector.runtime.component import Kind
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.listeners import Listener, all_listeners, is_loopback
from otelkit.collector.runtime.registry import Registry
from tests.deploy.podsd import discovering, pod_targets
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


# The two-tier shape (deploy/kubernetes-two-tier) -------------------------------------
TWO_TIER = ROOT / "deploy/kubernetes-two-tier"
FRONTS = {
    "otelkit-front": "otelkit-loadbalancer.yaml",
    "contrib-front": "otelcol-loadbalancer.yaml",
}
FRONT = "otelkit-loadbalancer"
HEADLESS = "otelkit-collector-headless"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization yields, for the parts of kustomize these files use:
    ``resources`` (files and directories) and ``configMapGenerator`` (without the hash
    suffix kustomize adds to the name and to the references)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += kustomize(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {name: (directory / name).read_text() for name in generator["files"]}
        docs.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def front_config(front: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((TWO_TIER / front / FRONTS[front]).read_text())
    return config


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_every_two_tier_shape_builds_with_kustomize() -> None:
    """kustomize itself: a base may not contain its overlay, files may not come from
    outside the kustomization, and the generated ConfigMap's name is what the pods mount."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    for front, config_name in FRONTS.items():
        result = subprocess.run([kubectl, "kustomize", str(TWO_TIER / front)],
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        stem = config_name.removesuffix(".yaml")  # the generator's name
        [generated] = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"
                       and d["metadata"]["name"].startswith(f"{stem}-")]  # fmt: skip
        built = {(d["kind"], d["metadata"]["name"]) for d in docs}
        resolved = {(d["kind"], d["metadata"]["name"]) for d in kustomize(TWO_TIER / front)}
        assert built - {("ConfigMap", generated)} == resolved - {("ConfigMap", stem)}
        volumes = pod_spec(docs, FRONT)["volumes"]
        [config] = [v for v in volumes if v["name"] == "config"]
        assert config["configMap"]["name"] == generated
        assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "otelkit" for d in docs)


def test_the_headless_service_resolves_to_the_ready_processing_pods() -> None:
    docs = kustomize(TWO_TIER / "processing")
    headless = find(docs, "Service", HEADLESS)["spec"]
    assert headless["clusterIP"] == "None"
    assert not headless.get("publishNotReadyAddresses"), "only ready pods take traffic"
    processing = find(docs, "Deployment", "otelkit-collector")["spec"]
    assert headless["selector"].items() <= processing["template"]["metadata"]["labels"].items()
    assert processing["selector"]["matchLabels"] == headless["selector"]
    [port] = headless["ports"]
    container = processing["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] == "otlp-grpc"
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]
    assert port["port"] == ports["otlp-grpc"] == port_of(grpc["endpoint"])
    # The processing tier is the collector of deploy/kubernetes, unchanged.
    assert processing == by_kind("Deployment")["spec"]
    assert container["args"][1] == "/etc/otelkit/" + CONTAINER_CONFIG.name


def loadbalancing_exporters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: settings
        for name, settings in config["exporters"].items()
        if name.split("/")[0] == "loadbalancing"
    }


def test_both_front_tiers_resolve_the_headless_service_on_the_processing_port() -> None:
    headless = find(kustomize(TWO_TIER / "processing"), "Service", HEADLESS)["spec"]
    for front in FRONTS:
        exporters = loadbalancing_exporters(front_config(front))
        assert len(exporters) == 2, front
        for name, exporter in exporters.items():
            assert list(exporter["resolver"]) == ["dns"], (front, name)
            dns = exporter["resolver"]["dns"]
            assert dns["hostname"] == HEADLESS and dns["port"] == headless["ports"][0]["port"]
            assert "endpoint" not in exporter["protocol"]["otlp"], "set per backend"


def test_traces_and_logs_go_by_trace_id_and_metrics_by_service() -> None:
    """Every span of a trace (and the logs of that trace) on one processing collector, for
    tail sampling, budgets and span metrics from whole traces; the metrics of a service
    on one collector, so no two write the same series."""
    for front in FRONTS:
        config = front_config(front)
        exporters = loadbalancing_exporters(config)
        pipelines = config["service"]["pipelines"]
        for signal, key in (("traces", "traceID"), ("logs", "traceID"), ("metrics", "service")):
            [exporter] = pipelines[signal]["exporters"]
            assert exporters[exporter].get("routing_key", "traceID") == key, (front, signal)
            assert pipelines[signal]["receivers"] == ["otlp"]
        assert set(pipelines) == {"traces", "logs", "metrics"}, front


def test_the_front_tiers_take_otlp_with_the_token_and_send_it_to_the_processing_tier() -> None:
    processing = yaml.safe_load(CONTAINER_CONFIG.read_text())
    grpc = processing["receivers"]["otlp"]["protocols"]["grpc"]
    assert grpc["auth"] == {"authenticator": "bearertokenauth"}
    processing_tls = "tls" in grpc
    for front in FRONTS:
        config = front_config(front)
        spec = pod_spec(kustomize(TWO_TIER / front), FRONT)
        container = spec["containers"][0]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "token"]
        [volume] = [v for v in spec["volumes"] if v["name"] == "token"]
        assert (
            volume["secret"]
            == by_kind("Deployment")["spec"]["template"]["spec"]["volumes"][1]["secret"]
        ), "the Secret the processing tier reads"
        token_file = f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
        filename = config["extensions"]["bearertokenauth"]["filename"]
        assert filename in (token_file, f"${{env:OTELKIT_TOKEN_FILE:-{token_file}}}"), front
        assert "bearertokenauth" in config["service"]["extensions"]
        for protocol in config["receivers"]["otlp"]["protocols"].values():
            assert protocol["auth"] == {"authenticator": "bearertokenauth"}, front
        for exporter in loadbalancing_exporters(config).values():
            otlp = exporter["protocol"]["otlp"]
            assert otlp["tls"].get("insecure", False) is not processing_tls, front
            sends_token(front, otlp, container)


def sends_token(front: str, otlp: dict[str, Any], container: dict[str, Any]) -> None:
    """otelkit's bearertokenauth sends the token file; the upstream one only over TLS, so
    the Go collector sends it as a header from the same Secret."""
    if otlp.get("auth") is not None:
        assert otlp["auth"] == {"authenticator": "bearertokenauth"}, front
        return
    assert otlp["headers"] == {"authorization": "Bearer ${env:OTELKIT_TOKEN}"}, front
    [env] = [e for e in container["env"] if e["name"] == "OTELKIT_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "otelkit-token", "key": "token"}


def test_front_tier_ports_probes_and_security_match_the_collector() -> None:
    base = by_kind("Deployment")["spec"]["template"]["spec"]
    for front, config_name in FRONTS.items():
        config = front_config(front)
        docs = kustomize(TWO_TIER / front)
        spec = pod_spec(docs, FRONT)
        container = spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        protocols = config["receivers"]["otlp"]["protocols"]
        assert ports["otlp-grpc"] == port_of(protocols["grpc"]["endpoint"])
        assert ports["otlp-http"] == port_of(protocols["http"]["endpoint"])
        assert ports["health"] == port_of(config["extensions"]["health_check"]["endpoint"])
        assert ports["telemetry"] == telemetry_port(config)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "health", (front, probe)
        assert spec["securityContext"] == base["securityContext"]
        assert container["securityContext"] == base["containers"][0]["securityContext"]
        assert container["resources"]["limits"]["memory"]
        assert "memory_limiter" in config["processors"]
        service = find(docs, "Service", FRONT)["spec"]
        assert (
            service["selector"].items()
            <= find(docs, "Deployment", FRONT)["spec"]["template"]["metadata"]["labels"].items()
        )
        assert {p["targetPort"] for p in service["ports"]} <= set(ports)
        assert {4317, 4318} <= {p["port"] for p in service["ports"]}
        [config_mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
        assert f"{config_mount['mountPath']}/{config_name}" in " ".join(container["args"])


def telemetry_port(config: dict[str, Any]) -> int:
    metrics = config["service"]["telemetry"]["metrics"]
    if "address" in metrics:
        return port_of(metrics["address"])
    [reader] = metrics["readers"]
    port: int = reader["pull"]["exporter"]["prometheus"]["port"]
    return port


# The keys the upstream Collector documents (each component's README) for the components
# the Go front tier uses; ... means any value.
UPSTREAM_OTLP_CLIENT: dict[str, Any] = {
    **{key: ... for key in ("timeout", "headers", "compression", "sending_queue",
                            "retry_on_failure", "balancer_name", "keepalive",
                            "write_buffer_size", "read_buffer_size", "wait_for_ready")},
    "tls": dict.fromkeys(("insecure", "insecure_skip_verify", "ca_file", "cert_file", "key_file",
                          "server_name_override", "min_version", "max_version"), ...),
    "auth": {"authenticator": ...},
}  # fmt: skip
UPSTREAM_KEYS: dict[str, Any] = {
    "extensions": {
        "bearertokenauth": dict.fromkeys(("token", "filename", "scheme", "header"), ...),
        "health_check": dict.fromkeys(("endpoint", "path", "tls", "auth"), ...),
    },
    "receivers": {
        "otlp": {
            "protocols": {
                "grpc": dict.fromkeys(("endpoint", "auth", "tls", "max_recv_msg_size_mib"), ...),
                "http": dict.fromkeys(("endpoint", "auth", "tls", "cors"), ...),
            }
        },
    },
    "processors": {
        "memory_limiter": dict.fromkeys(
            (
                "check_interval",
                "limit_mib",
                "limit_percentage",
                "spike_limit_mib",
                "spike_limit_percentage",
            ),
            ...,
        ),
    },
    "exporters": {
        "loadbalancing": {
            "routing_key": ...,
            "routing_attributes": ...,
            "protocol": {"otlp": UPSTREAM_OTLP_CLIENT},
            "resolver": {
                "static": {"hostnames": ...},
                "dns": dict.fromkeys(("hostname", "port", "interval", "timeout"), ...),
                "k8s": ...,
                "aws_cloud_map": ...,
            },
            "timeout": ...,
            "retry_on_failure": ...,
            "sending_queue": ...,
        },
    },
    "service": {
        "extensions": ...,
        "pipelines": ...,
        "telemetry": {"logs": ..., "metrics": {"level": ..., "readers": ...}},
    },
}
ROUTING_KEYS = {"traceID", "service", "resource", "metric", "streamID", "attributes"}


def unknown_keys(config: Any, allowed: Any, path: str = "") -> list[str]:
    if allowed is ... or not isinstance(config, dict):
        return []
    found = []
    for key, value in config.items():
        kind = key.split("/")[0] if path.count(".") == 1 else key  # component IDs: type/name
        if kind not in allowed:
            found.append(f"{path}{key}")
        else:
            found += unknown_keys(value, allowed[kind], f"{path}{key}.")
    return found


def test_the_go_collector_config_uses_only_upstream_keys() -> None:
    config = front_config("contrib-front")
    assert unknown_keys(config, UPSTREAM_KEYS) == []
    misspelt = {"exporters": {"loadbalancing/x": {"resolver": {"dns": {"hostnmae": "a"}}}}}
    assert unknown_keys(misspelt, UPSTREAM_KEYS) == [
        "exporters.loadbalancing/x.resolver.dns.hostnmae"
    ]
    pipelines = config["service"]["pipelines"]
    metrics_exporters = set(pipelines["metrics"]["exporters"])
    for name, exporter in loadbalancing_exporters(config).items():
        key = exporter.get("routing_key", "traceID")
        assert key in ROUTING_KEYS
        if name in metrics_exporters:
            assert key != "traceID", "upstream refuses traceID for metrics"
        assert len(exporter["resolver"]) == 1, "newer upstream versions require exactly one"
    container = pod_spec(kustomize(TWO_TIER / "contrib-front"), FRONT)["containers"][0]
    assert container["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert container["readinessProbe"]["httpGet"]["path"] == config["extensions"][
        "health_check"
    ].get("path", "/")


def test_the_otelkit_front_tier_config_is_valid() -> None:
    text = (TWO_TIER / "otelkit-front" / FRONTS["otelkit-front"]).read_text()
    config = parse_config(text, Registry.discover(), {"PATH": ""})
    assert config.warnings == []
    listeners = {port_of(one.endpoint): one for _, one in all_listeners(config)}
    assert listeners[4317].authenticated and listeners[4318].authenticated


def test_the_go_front_tier_routes_with_settings_otelkit_accepts_too() -> None:
    """Either front tier can replace the other: otelkit's loadbalancing exporter takes the
    Go collector's settings as they are."""
    factory = Registry.discover().get(Kind.EXPORTER, "loadbalancing")
    for exporter in loadbalancing_exporters(front_config("contrib-front")).values():
        factory.config_class.model_validate(exporter)


# Scraping each collector pod ---------------------------------------------------------
KUBE_PROMETHEUS = ROOT / "deploy/prometheus/prometheus-kubernetes.yml"


def metrics_ports() -> dict[str, int]:
    """Span metrics and self-metrics: the container ports Prometheus must scrape, by job."""
    production = yaml.safe_load(CONTAINER_CONFIG.read_text())
    return {
        "otelkit-collector-spanmetrics": port_of(production["exporters"]["prometheus"]["endpoint"]),
        "otelkit-collector-self": telemetry_port(production),
    }


def kube_prometheus() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(KUBE_PROMETHEUS.read_text())
    return config


def discover(tmp_path: Path, config: dict[str, Any], job: str) -> list[dict[str, Any]]:
    """The labels of ``job``'s targets that the real Prometheus keeps after relabelling."""
    promtool = require_binary("promtool")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": config["scrape_configs"]}))
    result = subprocess.run([promtool, "check", "service-discovery", str(path), job],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return [t["labels"] for t in json.loads(result.stdout) if t["labels"]]


def on(ip: str) -> Callable[[int], str]:
    """A pod's address for each of its container ports."""
    return lambda port: f"{ip}:{port}"


def test_kubernetes_prometheus_scrapes_each_collector_pod_on_both_metrics_ports(
    tmp_path: Path,
) -> None:
    """Two collector pods (from the shipped Deployment) and a front-tier pod, found as
    Kubernetes discovery finds them: each job keeps one target per collector pod, on the
    port the production config serves, labelled with its pod, and nothing else."""
    template = by_kind("Deployment")["spec"]["template"]
    front = find(kustomize(TWO_TIER / "otelkit-front"), "Deployment", FRONT)["spec"]["template"]
    pods = {"otelkit-collector-a": "10.0.0.1", "otelkit-collector-b": "10.0.0.2"}
    targets = [t for name, ip in pods.items() for t in pod_targets(template, name, on(ip))]
    targets += pod_targets(front, "otelkit-loadbalancer-a", on("10.0.0.3"))
    config = kube_prometheus()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(metrics_ports())
    discovered = {"scrape_configs": [discovering(job, targets) for job in jobs.values()]}
    for name, port in metrics_ports().items():
        found = {labels["pod"]: labels for labels in discover(tmp_path, discovered, name)}
        assert set(found) == set(pods), name
        for pod, labels in found.items():
            assert labels["__address__"] == f"{pods[pod]}:{port}", (name, labels)
            assert labels["namespace"] == "default" and labels["job"] == name
            assert labels["__metrics_path__"] == "/metrics"
    assert jobs["otelkit-collector-spanmetrics"]["honor_labels"] is True, "job from service.name"
    assert not jobs["otelkit-collector-self"].get("honor_labels")


def test_kubernetes_prometheus_differs_from_the_compose_one_only_in_finding_targets() -> None:
    compose = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    kube = kube_prometheus()
    assert {k: v for k, v in kube.items() if k != "scrape_configs"} == {
        k: v for k, v in compose.items() if k != "scrape_configs"
    }
    assert [job["job_name"] for job in kube["scrape_configs"]] == [
        job["job_name"] for job in compose["scrape_configs"]
    ], "the collector's alert rules select these job names"
    rules = yaml.safe_load(
        by_kind("ConfigMap", "otelkit-prometheus-rules")["data"]["collector.rules.yml"]
    )
    selectors = {r["expr"] for g in rules["groups"] for r in g["rules"] if "up{" in r["expr"]}
    assert selectors and all('job=~"otelkit-collector.*"' in expr for expr in selectors)


def test_the_podmonitor_scrapes_the_same_ports_under_the_same_jobs() -> None:
    """For the Prometheus Operator, which labels each target with its pod itself."""
    monitor = by_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    template = by_kind("Deployment")["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    endpoints = {}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        [job] = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        endpoints[job] = endpoint
        assert endpoint["path"] == "/metrics"
    assert {job: ports[e["port"]] for job, e in endpoints.items()} == metrics_ports()
    assert endpoints["otelkit-collector-spanmetrics"]["honorLabels"] is True
    assert not endpoints["otelkit-collector-self"].get("honorLabels")
    # Clusters without the Operator have no PodMonitor kind: apply -k must still work.
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert "podmonitor.yaml" not in kustomization["resources"]
    assert all((KUBE / r).is_file() for r in kustomization["resources"])


def test_the_pod_annotations_name_the_span_metrics_port() -> None:
    """For a Prometheus that follows prometheus.io/* annotations (one port per pod)."""
    template = by_kind("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (
        int(annotations["prometheus.io/port"]) == metrics_ports()["otelkit-collector-spanmetrics"]
    )
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_documented_scrape_jobs_are_the_shipped_ones() -> None:
    text = (ROOT / "docs/scaling.md").read_text()
    blocks = [yaml.safe_load(textwrap.dedent(block))
              for block in re.findall(r"```yaml\n(.*?)^\s*```", text, re.DOTALL | re.MULTILINE)]  # fmt: skip
    [config] = [b for b in blocks if "scrape_configs" in b]
    assert config["scrape_configs"] == kube_prometheus()["scrape_configs"]
