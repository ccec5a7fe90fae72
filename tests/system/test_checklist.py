"""The testing checklist, end to end, on the system as shipped: the demo shop under
``opentelemetry-instrument`` -> the default collector (``collector/otelkit.yaml``, ports
moved by its variables) -> a Sentry stand-in, the log store, and a real Prometheus with
the shipped rules files loaded as they are -> a real Alertmanager with the shipped routing
-> a webhook this test runs.

Only documented knobs are turned: Prometheus scrapes and evaluates every second,
Alertmanager groups within a second, and its receivers post to the webhook instead of
PagerDuty, Slack and e-mail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from otelkit.budgets.model import load_budgets
from otelkit.demo.stack import Process, Webhook, start, start_shop, wait_until_ready
from tests.collector.e2e.clients import wait_until
from tests.sentry.standin import SentryStandIn, sentry_standin
from tests.sentry.support import relay_check
from tests.support.collector import RunningCollector, shipped_collector
from tests.support.services import free_port, require_binary

pytestmark = [pytest.mark.service("prometheus"), pytest.mark.service("alertmanager")]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
PAGE_ALERT = "ApiAvailabilityErrorBudgetBurn"
BAD_ROUTE = "/orders/13/invoice"  # an unhandled ZeroDivisionError in the demo shop
PAGE_TIMEOUT = 150.0
# Queries that return nothing on a healthy system, and why.
EXPECTED_EMPTY = {
    ("otelkit-collector", "Accepted and refused (per second)", "B"):
        "the OpenTelemetry SDK exports metrics every 60 s (OTEL_METRIC_EXPORT_INTERVAL); "
        "the shop's first export may come after this test ends",
    ("otelkit-collector", "Receiver refusal ratio", "B"):
        "a ratio over accepted metric points: none before the shop's first metrics export",
}  # fmt: skip


@dataclass
class System:
    collector: RunningCollector
    sentry: SentryStandIn
    prometheus_url: str
    webhook: Webhook
    first_bad_request: float = 0.0
    page_received: float = 0.0
    sent: dict[str, int] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def pages(self) -> list[dict[str, Any]]:
        """The error burst's page, as the shipped routing delivers it (to PagerDuty)."""
        return [
            alert
            for path, alert in self.webhook.deliveries
            if path == "/pagerduty"
            and alert["status"] == "firing"
            and alert["labels"]["alertname"] == PAGE_ALERT
        ]


def alertmanager_config(webhook: Webhook) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with its routing and inhibitions as shipped,
    every receiver posting to the webhook at /<receiver name>, and grouping in a second."""
    config = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    config["global"] = {"resolve_timeout": config["global"]["resolve_timeout"]}
    config["route"].update(group_wait="1s", group_interval="2s")
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": webhook.url(f"/{r['name']}")}]}
        for r in config["receivers"]
    ]
    return config


def prometheus_config(ports: dict[str, int], alertmanager_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its jobs and rules files as shipped, pointed
    at this machine, scraping and evaluating every second."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="900ms", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "deploy/prometheus" / f) for f in config["rule_files"]]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{alertmanager_port}"]}
    ]
    collector_ports = {"9464": ports["prometheus"], "8888": ports["telemetry"]}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [
                f"127.0.0.1:{collector_ports[t.rsplit(':', 1)[1]]}" for t in static["targets"]
            ]
    return config


class Load:
    """Normal traffic on a thread (products, N+1 orders, slow reports, checkouts), and on
    demand a burst of unhandled exceptions."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.stop = threading.Event()
        self.burst = threading.Event()
        self.sent: dict[str, int] = {}
        self.first_bad: float = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        plan = [
            ("GET", "/products", None), ("GET", "/products/3", None),
            ("POST", "/checkout", {"product_id": 1}), ("GET", "/orders", None),
            ("GET", "/products", None), ("GET", "/reports/sales", None),
            ("POST", "/checkout", {"product_id": 2, "payment": "invoice"}),
        ]  # fmt: skip
        deadline = time.monotonic() + 300  # bounded even if nothing stops it
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            step = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                method, path, body = plan[step % len(plan)]
                step += 1
                if self.burst.is_set():
                    for _ in range(3):
                        self._send(client, "GET", BAD_ROUTE, None)
                self._send(client, method, path, body)
                time.sleep(0.2)

    def _send(self, client: httpx.Client, method: str, path: str, body: Any) -> None:
        if path == BAD_ROUTE and not self.first_bad:
            self.first_bad = time.monotonic()
        try:
            status = str(client.request(method, path, json=body).status_code)
        except httpx.HTTPError as exc:  # a slow answer on a busy machine: count it, go on
            status = type(exc).__name__
        key = f"{method} {path} {status}"
        self.sent[key] = self.sent.get(key, 0) + 1


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("system")
    processes: list[Process] = []
    webhook = Webhook()
    webhook.start()
    try:
        with (
            sentry_standin() as sentry,
            shipped_collector(tmp, env={"SENTRY_DSN": sentry.dsn}) as collector,
        ):
            ports = collector.ports
            wait_until_ready_url(f"http://127.0.0.1:{ports['health']}/health/ready")
            am_port, prom_port, shop_port = free_port(), free_port(), free_port()
            (tmp / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(webhook)))
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(ports, am_port)))
            alertmanager = start(
                "alertmanager",
                [alertmanager_bin, f"--config.file={tmp / 'alertmanager.yml'}",
                 f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                 "--cluster.listen-address="],
                tmp, {"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
            processes.append(alertmanager)
            wait_until_ready(alertmanager, f"http://127.0.0.1:{am_port}/-/ready")
            prometheus = start(
                "prometheus",
                [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'prom-data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                tmp, {"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
            processes.append(prometheus)
            wait_until_ready(prometheus, f"http://127.0.0.1:{prom_port}/-/ready")
            shop = start_shop(tmp, shop_port, f"http://127.0.0.1:{ports['grpc']}")
            processes.append(shop)
            running = System(collector, sentry, f"http://127.0.0.1:{prom_port}", webhook)
            with Load(f"http://127.0.0.1:{shop_port}") as load:
                # Normal traffic until Prometheus has the shop's span metrics, then the burst.
                wait_until(lambda: running.query('traces_span_metrics_calls_total{service_name="shop-api"}'),
                         60, "the shop's span metrics in Prometheus")  # fmt: skip
                load.burst.set()
                wait_until(
                    running.pages, PAGE_TIMEOUT, f"a page at the webhook\n{prometheus.log_tail()}"
                )
                running.page_received = time.monotonic()
                running.first_bad_request = load.first_bad
                print(
                    f"\nfirst bad request to the page at the webhook: "
                    f"{running.page_received - running.first_bad_request:.1f}s"
                )
                wait_until(lambda: sentry.items("event"), 60, "a Sentry event")
            running.sent = dict(load.sent)
            yield running
    finally:
        for process in reversed(processes):
            process.stop()
        webhook.stop()


def wait_until_ready_url(url: str) -> None:
    wait_until(lambda: _status(url) == 200, 60, url)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_an_exception_becomes_a_sentry_event_with_frames(system: System) -> None:
    events = [e for e in system.sentry.items("event") if _exception_type(e) == "ZeroDivisionError"]
    assert events, [e.get("exception") for e in system.sentry.items("event")]
    event = relay_check(events[0])
    [exception] = event["exception"]["values"]
    functions = [frame.get("function") for frame in exception["stacktrace"]["frames"]]
    assert "render_invoice" in functions, functions


def _exception_type(event: dict[str, Any]) -> str:
    values = event.get("exception", {}).get("values", [])
    return str(values[-1].get("type")) if values else ""


def test_span_metrics_per_route_appear_in_prometheus(system: System) -> None:
    result = system.query(
        'sum by (http_route, status_code) (traces_span_metrics_calls_total{service_name="shop-api", span_kind="SPAN_KIND_SERVER"})'
    )  # fmt: skip
    routes = {(r["metric"]["http_route"], r["metric"]["status_code"]) for r in result}
    assert ("/products", "STATUS_CODE_UNSET") in routes, routes
    assert ("/orders/{order_id}/invoice", "STATUS_CODE_ERROR") in routes, routes
    assert ("/checkout", "STATUS_CODE_UNSET") in routes, routes


def test_health_endpoints_answer(system: System) -> None:
    base = f"http://127.0.0.1:{system.collector.ports['health']}"
    for path in ("/health/live", "/health/ready", "/health"):
        response = httpx.get(base + path, timeout=5)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("application/health+json")
        assert response.json()["status"] == "pass", response.json()


def test_logs_in_the_store_carry_request_and_trace_ids(system: System) -> None:
    """Read where the docs say: `otelkit logs query` on ./otelkit-data/logs.db."""
    store = system.collector.config_path.parent / "otelkit-data" / "logs.db"
    assert store.is_file()
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "logs", "query", "--url", f"sqlite:///{store}",
         "--service", "shop-api", "--grep", "paid by", "--json", "--limit", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records, "no checkout log lines in the store"  # the shop logs each payment
    for record in records:
        assert len(record["trace_id"] or "") == 32, record
        assert len(record["span_id"] or "") == 16, record
        assert record["attributes"].get("request_id"), record


def test_a_critical_error_burst_pages_with_its_runbook(system: System) -> None:
    [page, *_] = system.pages()
    assert page["labels"]["alertname"] == PAGE_ALERT
    assert page["labels"]["severity"] == "page"
    base = load_budgets(ROOT / "collector/budgets.yaml").defaults.runbook_base_url
    assert base
    url = page["annotations"]["runbook_url"]
    assert url == f"{base}/error-budget-burn.md"
    assert (ROOT / "docs/runbooks/error-budget-burn.md").is_file()
    assert system.page_received - system.first_bad_request < PAGE_TIMEOUT


def test_the_collector_raises_no_alert_about_itself(system: System) -> None:
    collector_alerts = [
        alert
        for _, alert in system.webhook.deliveries
        if alert["labels"]["alertname"].startswith("Otelkit")
    ]
    assert collector_alerts == []


def dashboard_queries() -> list[Any]:
    return [
        pytest.param((path.stem, panel["title"], target["refId"]), target["expr"],
                     id=f"{path.stem}/{panel['title']}/{target['refId']}")
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]  # fmt: skip


@pytest.mark.parametrize(("key", "expr"), dashboard_queries())
def test_every_dashboard_query_returns_data(
    system: System, key: tuple[str, str, str], expr: str
) -> None:
    concrete = expr.replace("$__rate_interval", "1m").replace("$service", "shop-api")
    result = system.query(concrete)
    if key in EXPECTED_EMPTY:
        return  # a valid query that is allowed to be empty, for the reason given
    assert result, f"{key}: no data for {concrete}"
