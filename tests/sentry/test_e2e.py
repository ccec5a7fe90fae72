"""End to end: a real instrumented app -> SDK OTLP exporters -> ``otelkit collector run``
-> the Sentry exporter -> a local Sentry stand-in."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from tests.collector.e2e.clients import wait_until
from tests.support.collector import allocate_ports, collector

from .app import APP_FILE, exercise, find_line
from .standin import Answer, SentryStandIn, sentry_standin
from .support import relay_check, sdk_tracer

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
processors:
  batch: {timeout: 50ms}
exporters:
  sentry:
    dsn: "DSN"
    trace_wait: 300ms
    logs: true
    retry_on_failure: {initial_interval: 50ms, max_interval: 100ms}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [sentry]}
    logs: {receivers: [otlp], processors: [batch], exporters: [sentry]}
"""


def _send_logs(endpoint: str) -> None:
    provider = LoggerProvider(resource=sdk_tracer("shop-api")[2].resource)
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True))
    )
    logger = logging.getLogger("e2e.orders")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("order %s placed", 7)
        try:
            {}["customer"]
        except KeyError:
            logger.exception("could not load order %s", 8)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def test_sdk_to_collector_to_sentry(tmp_path: Path) -> None:
    ports = allocate_ports("grpc", "http")
    with sentry_standin() as standin:
        standin.answers = [Answer(500)]  # the first envelope is retried
        config = CONFIG.replace("DSN", standin.dsn)
        with collector(config, tmp_path, ports=ports) as running:
            _, memory, provider = sdk_tracer("shop-api")
            exercise(provider)
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces")
            assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
            exporter.shutdown()
            _send_logs(f"http://127.0.0.1:{ports['grpc']}")

            def complete() -> bool:
                kinds = [kind for r in standin.accepted() for kind, _ in r.items()]
                return (
                    kinds.count("transaction") == 2 and kinds.count("event") == 2 and "log" in kinds
                )

            standin.wait_for(complete, timeout=20)
            assert running.stop() == 0
        items = [pair for r in standin.accepted() for pair in r.items()]
        log_text = running.log()
    assert len(standin.received) == len(standin.accepted()) + 1
    for kind, payload in items:
        if kind != "log":
            relay_check(payload)
    transactions = sorted(p["transaction"] for kind, p in items if kind == "transaction")
    assert transactions == ["GET /items/{item_id}", "GET /orders/{order_id}/pay"]
    events = {p.get("logger"): p for kind, p in items if kind == "event"}
    span_error = events["opentelemetry.instrumentation.fastapi"]
    frame = span_error["exception"]["values"][-1]["stacktrace"]["frames"][-1]
    assert (frame["abs_path"], frame["function"], frame["lineno"]) == (
        APP_FILE,
        "charge_card",
        find_line("raise-line"),
    )
    log_error = events["e2e.orders"]
    assert log_error["logentry"]["formatted"] == "could not load order 8"
    assert log_error["exception"]["values"][-1]["type"] == "KeyError"
    logs = [i for kind, p in items if kind == "log" for i in p["items"]]
    assert sorted(entry["body"] for entry in logs) == ["could not load order 8", "order 7 placed"]
    assert "Traceback" not in log_text  # nothing in the collector failed


def test_rate_limited_transactions_are_held_back_and_counted_while_errors_flow(
    tmp_path: Path,
) -> None:
    ports = allocate_ports("grpc", "http")
    limit = Answer(429, {"X-Sentry-Rate-Limits": "60:transaction:organization:quota_exceeded"})
    with sentry_standin() as standin:
        standin.by_type = {"transaction": limit}
        with collector(CONFIG.replace("DSN", standin.dsn), tmp_path, ports=ports) as running:
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces")
            for round_ in range(3):
                _, memory, provider = sdk_tracer("shop-api")
                exercise(provider)
                assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
                if round_ == 0:  # the first flush meets the limit; later ones must respect it
                    standin.wait_for(lambda: _transaction_requests(standin) == 2, timeout=20)
            exporter.shutdown()
            standin.wait_for(lambda: len(standin.items("event")) == 3, timeout=20)

            def counted() -> float:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{running.ports['metrics']}/metrics")
                    .read()
                    .decode()
                )
                return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("otelcol_exporter_send_failed_spans_total") and 'reason="rate_limited"' in line)  # fmt: skip

            wait_until(lambda: counted() >= 1, what="rate_limited spans counted")
            assert running.stop() == 0
        assert _transaction_requests(standin) == 2  # the first flush's two, then nothing
    assert not standin.items("transaction")


def _transaction_requests(standin: SentryStandIn) -> int:
    return sum(1 for r in list(standin.received) if r.items()[0][0] == "transaction")
