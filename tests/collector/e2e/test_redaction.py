"""Planted secrets in traces, metrics and logs, read back from every destination's output:
the file exporter, the log store, Prometheus labels, the Sentry stand-in, an OTLP
forward to a second collector and the debug exporter's lines in the collector log. Once
through a config naming each destination, once through the shipped collector/otelkit.yaml.
"""

from __future__ import annotations

import sqlite3
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.pdata.signals import Payload
from tests.collector.e2e.clients import scrape, wait_until
from tests.sentry.standin import SentryStandIn, sentry_standin
from tests.support.collector import allocate_ports, collector, shipped_collector
from tests.support.secrets import leaked, planted_logs, planted_metrics, planted_traces

CONFIG = """
receivers:
  otlp:
    protocols:
      http: {endpoint: "127.0.0.1:{http}"}
processors:
  redaction: {allow_all_keys: true}
exporters:
  file: {path: "OUT"}
  logstore: {url: "sqlite:///DB"}
  prometheus: {endpoint: "127.0.0.1:{prom}"}
  sentry: {dsn: "DSN", trace_wait: 200ms, logs: true}
  otlp: {endpoint: "127.0.0.1:{down}", tls: {insecure: true}}
  debug: {verbosity: detailed}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [redaction], exporters: [file, sentry, otlp, debug]}
    metrics: {receivers: [otlp], processors: [redaction], exporters: [file, prometheus, otlp, debug]}
    logs: {receivers: [otlp], processors: [redaction], exporters: [file, logstore, sentry, otlp, debug]}
"""
DOWNSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{down}"}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
    metrics: {receivers: [otlp], exporters: [file]}
    logs: {receivers: [otlp], exporters: [file]}
"""
PATHS = {
    ExportTraceServiceRequest: "/v1/traces",
    ExportMetricsServiceRequest: "/v1/metrics",
    ExportLogsServiceRequest: "/v1/logs",
}


def post(port: int, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATHS[type(payload)]}",
        data=payload.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def log_store_text(path: Path) -> str:
    if not path.exists():
        return ""
    with sqlite3.connect(path) as conn:
        return "\n".join(str(row) for row in conn.execute("SELECT * FROM logs"))


def sentry_text(standin: SentryStandIn) -> str:
    return "\n".join(r.body.decode() for r in list(standin.received))


def file_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_no_planted_secret_reaches_any_destination(tmp_path: Path) -> None:
    out, forwarded, database = tmp_path / "out.jsonl", tmp_path / "down.jsonl", tmp_path / "logs.db"
    ports = allocate_ports("http", "prom", "down")
    with sentry_standin() as standin:
        config = (
            CONFIG.replace("OUT", str(out)).replace("DB", f"/{database}")
            .replace("DSN", standin.dsn)
        )  # fmt: skip
        downstream = DOWNSTREAM.replace("OUT", str(forwarded))
        with (
            collector(downstream, tmp_path, ports={"down": ports["down"]}, name="downstream"),
            collector(config, tmp_path, ports=ports, wait_ports=("http", "prom")) as running,
        ):
            for payload in (planted_traces(), planted_metrics(), planted_logs()):
                post(ports["http"], payload)
            outputs = {
                "file": lambda: file_text(out),
                "otlp forward": lambda: file_text(forwarded),
                "log store": lambda: log_store_text(database),
                "prometheus": lambda: scrape(ports["prom"]),
                "sentry": lambda: sentry_text(standin),
                "collector log": running.log,
            }
            arrived = {
                "file": lambda text: text.count("\n") >= 3,
                "otlp forward": lambda text: text.count("\n") >= 3,
                "log store": lambda text: text.count("order 7 shipped") >= 2,
                "prometheus": lambda text: "db_client_operations" in text,
                "sentry": lambda text: '"type":"transaction"' in text and '"type":"log"' in text,
                "collector log": lambda text: "order 7 shipped" in text,
            }
            for name, read in outputs.items():
                wait_until(lambda read=read, name=name: arrived[name](read()), timeout=30,
                           what=f"planted data in the {name}")  # fmt: skip
            texts = {name: read() for name, read in outputs.items()}
    for name, text in texts.items():
        assert not leaked(text), f"{name} leaked {sorted(leaked(text))}"
        assert "order 7 shipped" in text, name
    assert 'payment_note="paid with **** today"' in texts["prometheus"]


def test_the_shipped_config_keeps_planted_secrets_out_of_the_log_store_prometheus_and_sentry(
    tmp_path: Path,
) -> None:
    with (
        sentry_standin() as standin,
        shipped_collector(tmp_path, env={"SENTRY_DSN": standin.dsn}) as running,
    ):
        ports = running.ports
        for payload in (planted_traces(), planted_metrics(), planted_logs()):
            post(ports["http"], payload)
        database = tmp_path / "otelkit-data" / "logs.db"
        wait_until(lambda: log_store_text(database).count("order 7 shipped") >= 2,
                   timeout=30, what="the log records in the log store")  # fmt: skip
        wait_until(lambda: "db_client_operations" in scrape(ports["prometheus"]), timeout=30,
                   what="the data point in Prometheus")  # fmt: skip
        wait_until(lambda: len(standin.items("event")) >= 1, timeout=30,
                   what="the error log record in Sentry")  # fmt: skip
        texts = {
            "log store": log_store_text(database),
            "prometheus": scrape(ports["prometheus"]),
            "sentry": sentry_text(standin),
            "collector log": running.log(),
        }
    for name, text in texts.items():
        assert not leaked(text), f"{name} leaked {sorted(leaked(text))}"
