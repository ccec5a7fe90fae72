"""Two collector pods scraped by a real Prometheus with the shipped Kubernetes jobs and
rules: each pod is a target of its own, and the dashboards' and rules' queries give the
totals of both (scraped through the Service, the counters of the two would jump between
pods). Pod discovery is stood in for by the targets Kubernetes discovery makes of the
shipped Deployment's pods (tests/deploy/podsd.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.deploy.podsd import discovering, pod_targets
from tests.prometheus.promserver import Prometheus, prometheus
from tests.support.collector import SHIPPED_CONFIG, RunningCollector, shipped_collector
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
PODS = ("otelkit-collector-a", "otelkit-collector-b")
# collector/budgets.yaml's checkout availability SLO: server spans of shop-api on /checkout*.
SERVICE, ROUTE = "shop-api", "/checkout"
SLO = "shop-api-checkout-availability"
# What shipped_collector calls each of the Deployment's container ports.
PORT_NAMES = {"otlp-grpc": "grpc", "otlp-http": "http"}
Fleet = tuple[Prometheus, dict[str, RunningCollector]]


def quick_flush_config() -> str:
    """The shipped config, span metrics flushed every second rather than every 15."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["connectors"]["spanmetrics"]["metrics_flush_interval"] = "1s"
    return yaml.safe_dump(config, sort_keys=False)


def deployment_template() -> dict[str, Any]:
    path = ROOT / "deploy/kubernetes/collector.yaml"
    [deployment] = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Deployment"]
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def targets(template: dict[str, Any], pod: str, running: RunningCollector) -> list[dict[str, Any]]:
    """The pod's discovered targets, each container port at the running collector's port."""
    ports = template["spec"]["containers"][0]["ports"]
    local = {p["containerPort"]: running.ports[PORT_NAMES.get(p["name"], p["name"])] for p in ports}
    return pod_targets(template, pod, lambda port: f"127.0.0.1:{local[port]}")


def send(grpc_port: int, ok: int, errors: int) -> None:
    """Server spans of SERVICE on ROUTE from the real SDK, in one export request."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("shop.web")
    for i in range(ok + errors):
        span = tracer.start_span(f"POST {ROUTE}", kind=SpanKind.SERVER,
                                 attributes={"http.route": ROUTE})  # fmt: skip
        if i < errors:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
    provider.shutdown()


def total(expected: float) -> Any:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_binary("prometheus")
    tmp_path = tmp_path_factory.mktemp("pods")
    for pod in ("a", "b"):
        (tmp_path / pod).mkdir()
    kube = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-kubernetes.yml").read_text())
    rules = [ROOT / "deploy/prometheus" / name for name in kube["rule_files"]]
    template = deployment_template()
    with (
        shipped_collector(tmp_path / "a", config_text=quick_flush_config()) as a,
        shipped_collector(tmp_path / "b", config_text=quick_flush_config()) as b,
    ):
        pods = dict(zip(PODS, (a, b), strict=True))
        found = [t for pod, running in pods.items() for t in targets(template, pod, running)]
        jobs = [discovering(job, found) for job in kube["scrape_configs"]]
        with prometheus(tmp_path, scrape_configs=jobs, rule_files=rules) as prom:
            yield prom, pods


@pytest.fixture(scope="module")
def traffic(fleet: Fleet) -> Fleet:
    """Each pod first sees an OK and a failed request (the series start), then pod a 2 OK
    and 1 failed, pod b 4 OK and 2 failed: a third fail on each, 13 spans in all."""
    prom, pods = fleet
    for running in pods.values():
        send(running.ports["grpc"], ok=1, errors=1)
    calls = f'traces_span_metrics_calls_total{{service_name="{SERVICE}"}}'
    prom.wait_for(f"count({calls})", total(4))  # two status codes on each pod
    prom.wait_for(f"count(count_over_time({calls}[1h]) >= 2)", total(4))
    send(pods[PODS[0]].ports["grpc"], ok=2, errors=1)
    send(pods[PODS[1]].ports["grpc"], ok=4, errors=2)
    prom.wait_for(f"sum({calls})", total(13))
    return fleet


def test_each_pod_is_a_target_of_each_job(fleet: Fleet) -> None:
    prom, _ = fleet
    wanted = {(job, pod) for job in ("otelkit-collector-spanmetrics", "otelkit-collector-self")
              for pod in PODS}  # fmt: skip
    found: set[tuple[str, str]] = set()

    def discovered() -> bool:
        nonlocal found
        active = prom.api("targets", state="active")["activeTargets"]
        found = {(t["labels"]["job"], t["labels"]["pod"]) for t in active}
        return found == wanted

    prom.poll(discovered, 30, lambda: f"targets {found}")
    prom.wait_for('count by (job) (up{job=~"otelkit-collector.*"} == 1)',
                  lambda r: len(r) == 2 and all(s["value"][1] == "2" for s in r))  # fmt: skip


def test_the_span_metrics_of_the_two_pods_stay_apart_and_add_up(traffic: Fleet) -> None:
    prom, _ = traffic
    calls = f'traces_span_metrics_calls_total{{service_name="{SERVICE}", http_route="{ROUTE}"}}'
    per_pod = prom.query(f"sum by (pod, status_code) ({calls})")
    assert {(s["metric"]["pod"], s["metric"]["status_code"]): float(s["value"][1])
            for s in per_pod} == {
        (PODS[0], "STATUS_CODE_UNSET"): 3, (PODS[0], "STATUS_CODE_ERROR"): 2,
        (PODS[1], "STATUS_CODE_UNSET"): 5, (PODS[1], "STATUS_CODE_ERROR"): 3,
    }  # fmt: skip
    accepted = 'sum(otelcol_receiver_accepted_spans_total{job="otelkit-collector-self"})'
    prom.wait_for(accepted, total(13))


def dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1h").replace("$service", SERVICE)
                found.append((f"{path.stem}: {panel['title']}", expr))
    return found


def test_no_dashboard_query_splits_by_pod(traffic: Fleet) -> None:
    """Each panel shows the fleet: only the scrape-target panels have a line per pod."""
    prom, _ = traffic
    for title, expr in dashboard_queries():
        result = prom.query(expr)
        labels = {key for series in result for key in series["metric"]}
        if expr.startswith(("up{", "count by (job) (up{")):
            continue
        assert not labels & {"pod", "instance"}, (title, expr, result)


def test_the_red_dashboard_rate_is_the_sum_of_the_pods(traffic: Fleet) -> None:
    prom, _ = traffic
    [expr] = [
        e for title, e in dashboard_queries() if title.endswith("Requests per second by route")
    ]
    evaluated_at = prom.api("query", query="time()")["result"][0]

    def route_rate(query: str) -> float:
        [series] = [s for s in prom.query(query, time=evaluated_at)
                    if s["metric"].get("http_route") == ROUTE]  # fmt: skip
        return float(series["value"][1])

    server = 'span_kind="SPAN_KIND_SERVER"'
    pods = [route_rate(expr.replace(server, f'{server}, pod="{pod}"')) for pod in PODS]
    assert all(rate > 0 for rate in pods)
    assert math.isclose(route_rate(expr), sum(pods), rel_tol=1e-9)


def test_the_slo_rule_sees_the_error_ratio_of_the_fleet(traffic: Fleet) -> None:
    """A third of the requests after the series started failed on each pod, so on both."""
    prom, _ = traffic
    prom.wait_for(
        f'slo:sli_error:ratio_rate5m{{sloth_id="{SLO}"}}',
        lambda r: len(r) == 1 and math.isclose(float(r[0]["value"][1]), 1 / 3, rel_tol=0.05),
        timeout=60,
    )
