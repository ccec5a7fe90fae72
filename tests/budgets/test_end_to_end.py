"""End to end: SDK load breaks a budget -> otelkit collector (budget processor,
spanmetrics, prometheus exporter, findings to a file) -> a real Prometheus evaluating
the generated rules -> a real Alertmanager -> a webhook receiver in this test.

The budget's SLO period is scaled down to one hour with a 4 s minimum window, so the
page alert's windows are 5 s / 4 s and the whole run takes seconds, not hours.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from otelkit.budgets.model import parse_budgets
from otelkit.budgets.rules import rules_text
from otelkit.collector.pdata.otlp_json import iter_file
from tests.budgets.alerting import Webhook, alertmanager, process
from tests.support.collector import allocate_ports, collector
from tests.support.services import free_port, require_binary

pytestmark = [pytest.mark.service("prometheus"), pytest.mark.service("alertmanager")]

BUDGETS = {
    "defaults": {"period": "1h"},
    "alerting": {"min_window": "4s", "rule_interval": "1s"},
    "budgets": {
        "checkout": {
            "description": "Placing an order.",
            "match": {"service": "shop-api", "span_kind": "server", "route": "/checkout*"},
            "max": "1s",
            "slos": {"availability": {"objective": 99, "bad": "error"}},
            "alerting": {
                "runbook_url": "https://runbooks.example/checkout.md",
                "labels": {"team": "shop"},
            },
        }
    },
}
COLLECTOR = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:{grpc}"}}}
processors:
  budget: {budgets_file: "{budgets}"}
connectors:
  spanmetrics:
    metrics_flush_interval: 500ms
    dimensions: [{name: http.route}]
  findings: {}
exporters:
  prometheus: {endpoint: "127.0.0.1:{scrape}"}
  file: {path: "{findings_file}", flush_interval: 200ms}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [budget], exporters: [spanmetrics, findings]}
    metrics: {receivers: [spanmetrics], exporters: [prometheus]}
    logs: {receivers: [findings], exporters: [file]}
"""
ALERTMANAGER = """
route:
  receiver: ticket
  group_by: [alertname, sloth_id]
  group_wait: 1s
  group_interval: 2s
  routes:
    - {matchers: ['severity="page"'], receiver: page}
    - {matchers: ['severity="ticket"'], receiver: ticket}
inhibit_rules:
  - {source_matchers: ['severity="page"'], target_matchers: ['severity="ticket"'], equal: [alertname, sloth_id]}
receivers:
  - {name: page, webhook_configs: [{url: "http://127.0.0.1:{hook}/page"}]}
  - {name: ticket, webhook_configs: [{url: "http://127.0.0.1:{hook}/ticket"}]}
"""


def send_load(grpc_port: int, stop: threading.Event, error_share: float) -> int:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True),
            schedule_delay_millis=200,
        )
    )
    tracer = provider.get_tracer("load")
    sent = 0
    deadline = time.monotonic() + 90  # bounded even if the alert never comes
    while not stop.is_set() and time.monotonic() < deadline:
        for i in range(10):
            start = time.time_ns()
            span = tracer.start_span(
                "POST /checkout",
                kind=SpanKind.SERVER,
                start_time=start,
                attributes={"http.route": "/checkout", "http.request.method": "POST"},
            )
            if i < error_share * 10:
                span.set_status(Status(StatusCode.ERROR))
            slow_ns = 1_500_000_000 if i == 0 else 20_000_000  # one span in ten over max
            span.end(end_time=start + slow_ns)
            sent += 1
        time.sleep(0.2)
    provider.shutdown()
    return sent


def test_a_burning_budget_pages_through_prometheus_and_alertmanager(tmp_path: Path) -> None:
    prometheus_bin = require_binary("prometheus")
    budgets_path = tmp_path / "budgets.yaml"
    budgets_path.write_text(yaml.safe_dump(BUDGETS))
    (tmp_path / "rules.yml").write_text(rules_text(parse_budgets(BUDGETS)))
    hook = Webhook()
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(ALERTMANAGER.replace("{hook}", str(hook.port)))
    ports = allocate_ports("grpc", "scrape")
    findings_file = tmp_path / "findings.jsonl"
    config = COLLECTOR.replace("{budgets}", str(budgets_path)).replace(
        "{findings_file}", str(findings_file)
    )
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "900ms",
                    "evaluation_interval": "1s",
                },
                "rule_files": ["rules.yml"],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "otelkit",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{ports['scrape']}"]}],
                    }
                ],
            }
        )
    )
    am = alertmanager(tmp_path / "alertmanager.yml", am_port)
    prom = process(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        tmp_path / "prometheus.log",
        f"http://127.0.0.1:{prom_port}/-/ready",
    )
    with am, prom, collector(config, tmp_path, ports=ports, wait_ports=("grpc",)):
        stop = threading.Event()
        load = threading.Thread(target=send_load, args=(ports["grpc"], stop, 0.5), daemon=True)
        load.start()
        try:
            deadline = time.monotonic() + 80
            while not hook.firing("/page") and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop.set()
            load.join(30)
        ratio = httpx.get(
            f"http://127.0.0.1:{prom_port}/api/v1/query",
            timeout=5,
            params={"query": "slo:sli_error:ratio_rate5s"},
        ).json()["data"]["result"]
        assert hook.firing("/page"), (
            f"no page reached the webhook; posts={hook.posts}; ratio={ratio}\n"
            + (tmp_path / "prometheus.log").read_text()[-2000:]
        )
        time.sleep(0.5)  # let the file exporter flush the findings

    [alert, *_] = hook.firing("/page")
    assert alert["labels"]["alertname"] == "CheckoutAvailabilityErrorBudgetBurn"
    assert alert["labels"]["severity"] == "page"
    assert alert["labels"]["sloth_id"] == "shop-api-checkout-availability"
    assert alert["labels"]["team"] == "shop"
    assert "sloth_window" not in alert["labels"]
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/checkout.md"
    # the ticket for the same SLO is inhibited by the page
    assert hook.firing("/ticket") == []
    # the ceiling breaches became log records, through the findings connector
    records = [
        r
        for req in iter_file(findings_file)
        for rl in req.resource_logs  # type: ignore[union-attr]
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
    assert records and all(r.event_name == "otelkit.finding" for r in records)
    assert "POST /checkout took 1500 ms (max 1000 ms)" in records[0].body.string_value
