"""The start-up banner: one line per listener and per data destination, then one line
when ready; credentials never appear in it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.graph import build_graph
from otelkit.collector.runtime.listeners import announce
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.e2e.clients import wait_until
from tests.support.collector import SHIPPED_CONFIG, shipped_collector

SECRETS = ("hunter2", "s3cr3t-token", "0123456789abcdef0123456789abcdef", "pa55word")
CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:4317"}
      http: {endpoint: "127.0.0.1:4318"}
exporters:
  logstore:
    url: "postgresql://otelkit:pa55word@db.internal:5432/logs"
    api: {endpoint: "127.0.0.1:8890", token: "s3cr3t-token"}
  prometheusremotewrite:
    endpoint: "https://writer:hunter2@metrics.example.com/api/v1/write?token=s3cr3t-token"
  sentry:
    dsn: "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"
  file: {path: "FILE"}
  otlphttp: {endpoint: "https://gateway.internal:4318"}
service:
  telemetry: {metrics: {address: "127.0.0.1:8888"}}
  pipelines:
    logs: {receivers: [otlp], exporters: [logstore, sentry, file]}
    metrics: {receivers: [otlp], exporters: [prometheusremotewrite]}
    traces: {receivers: [otlp], exporters: [sentry, otlphttp]}
"""


def test_every_listener_and_destination_gets_one_line_and_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = CONFIG.replace("FILE", str(tmp_path / "out.jsonl"))
    config = parse_config(text, Registry.discover(), {})
    graph = build_graph(config, SelfTelemetry())
    logger = logging.getLogger("test.banner")
    with caplog.at_level(logging.INFO, logger="test.banner"):
        announce(config, graph.ordered, logger)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:4] == [
        "listening: receiver/otlp: OTLP/grpc on 127.0.0.1:4317 (gRPC)",
        "listening: receiver/otlp: OTLP/http on 127.0.0.1:4318 (HTTP)",
        "listening: exporter/logstore: log search API on http://127.0.0.1:8890/api/logs (HTTP)",
        "listening: service: self-telemetry metrics on http://127.0.0.1:8888/metrics (HTTP)",
    ]
    assert sorted(lines[4:]) == sorted(
        [
            "sending: exporter/logstore: log records to PostgreSQL "
            "postgresql://otelkit:****@db.internal:5432/logs (schema otelkit)",
            "sending: exporter/sentry: errors, transactions and logs to Sentry "
            "https://o1.ingest.sentry.io (project 42)",
            f"sending: exporter/file: OTLP/JSON lines to file {tmp_path / 'out.jsonl'}",
            "sending: exporter/prometheusremotewrite: metrics to remote write "
            "https://writer:****@metrics.example.com/api/v1/write?token=****",
            "sending: exporter/otlphttp: OTLP/HTTP to https://gateway.internal:4318/v1/traces",
        ]
    )
    for secret in SECRETS:
        assert secret not in "\n".join(lines)


def test_the_default_collector_announces_where_everything_is(tmp_path: Path) -> None:
    with shipped_collector(tmp_path) as running:
        ports = running.ports
        wait_until(lambda: " ready: " in running.log(), 30, "the ready line")
        running.stop()
        log_text = running.log()
    banner = [line.split(" otelkit.collector: ", 1)[1] for line in log_text.splitlines()
              if " otelkit.collector: " in line]  # fmt: skip
    store = (tmp_path / "otelkit-data" / "logs.db").resolve()
    pipelines = yaml.safe_load(SHIPPED_CONFIG.read_text())["service"]["pipelines"]
    expected = [
        f"listening: receiver/otlp: OTLP/grpc on 127.0.0.1:{ports['grpc']} (gRPC)",
        f"listening: receiver/otlp: OTLP/http on 127.0.0.1:{ports['http']} (HTTP)",
        "listening: exporter/prometheus: Prometheus scrape endpoint on "
        f"http://127.0.0.1:{ports['prometheus']}/metrics (HTTP)",
        "listening: extension/health_check: health check on "
        f"http://127.0.0.1:{ports['health']}/health (HTTP)",
        f"listening: service: self-telemetry metrics on http://127.0.0.1:{ports['telemetry']}/metrics (HTTP)",
        "sending: exporter/sentry: nothing to Sentry (off: no DSN; set SENTRY_DSN)",
        "sending: exporter/debug: basic-verbosity summaries to the collector's log",
        f"sending: exporter/logstore: log records to SQLite {store}",
        f"ready: {len(pipelines)} pipelines running ({', '.join(pipelines)})",
    ]
    for line in expected:
        assert line in banner, (line, banner)
    ready = banner.index(expected[-1])
    assert all(banner.index(line) < ready for line in expected[:-1])
