"""Real SDK log records through ``otelkit collector run`` into the log store.

The app side is the OpenTelemetry Python SDK with its stock OTLP exporters and the
stdlib logging handler, as an instrumented service sends logs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otelkit.logstore.postgres import split_url
from otelkit.logstore.query import build_query
from otelkit.logstore.sqlite import SqliteBackend
from otelkit.logstore.store import LogStore, open_store
from tests.support.collector import allocate_ports, collector

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{{grpc}}"}}
      http: {{endpoint: "127.0.0.1:{{http}}"}}
processors:
  batch: {{timeout: 50ms}}
exporters:
  logstore:
    url: "{url}"
{extra}
service:
  pipelines:
    logs: {{receivers: [otlp], processors: [{processors}], exporters: [logstore]}}
"""


def config(url: str, *, extra: str = "", batch: bool = False) -> str:
    return CONFIG.format(url=url, extra=extra, processors="batch" if batch else "")


class SdkApp:
    """An app process's logging set up as the SDK does it, sending to one collector."""

    def __init__(self, service: str, exporter: LogRecordExporter, **batch: Any) -> None:
        resource = Resource.create({"service.name": service, "service.version": "2.1.0"})
        self.provider = LoggerProvider(resource=resource)
        self.provider.add_log_record_processor(BatchLogRecordProcessor(exporter, **batch))
        self.logger = logging.getLogger(f"app.{service}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.handler = LoggingHandler(logger_provider=self.provider)
        self.logger.addHandler(self.handler)
        self.tracer = TracerProvider(resource=resource).get_tracer("app")

    def close(self) -> None:
        self.provider.force_flush(10_000)
        self.logger.removeHandler(self.handler)
        self.provider.shutdown()


def grpc_exporter(port: int) -> GrpcExporter:
    return GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=5)


def http_exporter(port: int) -> HttpExporter:
    return HttpExporter(endpoint=f"http://127.0.0.1:{port}/v1/logs", timeout=5)


def emit_one_request(app: SdkApp) -> str:
    """What a service logs around one request; returns that request's trace ID."""
    app.logger.info("service ready ✓ — 東京 café")
    with app.tracer.start_as_current_span("GET /checkout") as span:
        app.logger.info("checkout started for cart %s", "c-42")
        app.logger.warning("inventory low", extra={"sku": "A-1", "stock": 3})
        try:
            raise ValueError("card declined: insufficient funds")
        except ValueError:
            app.logger.exception("payment failed")
        # A structured body, through the Logs API (the logging handler sends strings).
        app.provider.get_logger("app.events").emit(
            severity_number=SeverityNumber.INFO,
            body={"event": "order", "total": 12.5, "items": ["a", "b"]},
            event_name="order.placed",
        )
        trace_id = format(span.get_span_context().trace_id, "032x")
    with app.tracer.start_as_current_span("GET /other"):
        app.logger.info("another request")
    return trace_id


def bodies(store: LogStore, **filters: Any) -> list[Any]:
    return [r.body for r in store.query(build_query(**filters)).records]


def check_every_filter(store: LogStore, service: str, trace_id: str) -> None:
    order = {"event": "order", "total": 12.5, "items": ["a", "b"]}
    request_lines = ["checkout started for cart c-42", "inventory low", "payment failed", order]
    assert bodies(store, trace_id=trace_id) == request_lines
    assert store.query(build_query(trace_id=trace_id)).records[3].event_name == "order.placed"
    everything = bodies(store, services=[service], since="1h")
    assert len(everything) == 6
    assert everything[-1] == "service ready ✓ — 東京 café"
    assert bodies(store, services=[service], severity="warn") == ["payment failed", "inventory low"]
    assert bodies(store, services=[service], grep="東京 café") == ["service ready ✓ — 東京 café"]
    assert bodies(store, services=[service], grep="cart c-42") == [request_lines[0]]
    assert bodies(store, services=[service], attributes=["sku=A-1"]) == ["inventory low"]
    assert bodies(store, services=[service], attributes=["stock<5"]) == ["inventory low"]
    assert bodies(store, services=[service], attributes=["stock>3"]) == []
    (failed,) = store.query(
        build_query(services=[service], attributes=["exception.type=ValueError"])
    ).records
    assert "card declined: insufficient funds" in failed.attributes["exception.stacktrace"]
    assert failed.trace_id == trace_id and failed.span_id is not None
    assert (failed.severity_text, failed.severity_number) == ("ERROR", 17)
    assert (failed.service_name, failed.service_version) == (service, "2.1.0")
    untraced = store.query(build_query(services=[service], grep="service ready")).records[0]
    assert untraced.trace_id is None and untraced.span_id is None
    assert bodies(store, services=[service], until="2000-01-01") == []
    assert bodies(store, services=["someone-else"]) == []


def test_sdk_logs_over_grpc_into_sqlite_found_by_every_filter_and_the_api(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    ports = allocate_ports("grpc", "http", "api")
    extra = '    durability: commit\n    api: {endpoint: "127.0.0.1:{api}", token: api-token}'
    service = f"shop-{uuid.uuid4().hex[:8]}"
    with collector(config(url, extra=extra), tmp_path, ports=ports) as running:
        app = SdkApp(service, grpc_exporter(ports["grpc"]))
        trace_id = emit_one_request(app)
        app.close()
        store = open_store(url, create=False)
        check_every_filter(store, service, trace_id)
        store.close()
        response = httpx.get(
            f"http://127.0.0.1:{ports['api']}/api/logs",
            params={"trace_id": trace_id, "limit": 2},
            headers={"authorization": "Bearer api-token"},
            timeout=10,
        )
        page = response.json()
        assert [r["body"] for r in page["records"]] == [
            "checkout started for cart c-42",
            "inventory low",
        ]
        assert page["next_cursor"]
        low = httpx.get(
            f"http://127.0.0.1:{ports['api']}/api/logs",
            params={"service": service, "attr": ["sku=A-1", "stock<=3"]},
            headers={"authorization": "Bearer api-token"},
            timeout=10,
        ).json()
        assert [r["body"] for r in low["records"]] == ["inventory low"]
        assert running.stop() == 0


def test_sdk_logs_over_http_into_postgres_found_by_every_filter(
    tmp_path: Path, pg_url: str
) -> None:
    ports = allocate_ports("grpc", "http")
    service = f"shop-{uuid.uuid4().hex[:8]}"
    with collector(config(pg_url, batch=True), tmp_path, ports=ports) as running:
        app = SdkApp(service, http_exporter(ports["http"]))
        trace_id = emit_one_request(app)
        app.close()
        assert running.stop() == 0  # SIGTERM drains the queue into the database
    store = open_store(pg_url)
    check_every_filter(store, service, trace_id)
    store.close()


def send_numbered(app: SdkApp, count: int) -> None:
    for seq in range(count):
        app.logger.info("record %d", seq, extra={"seq": seq})


def stored_seqs(pg_url: str, service: str) -> list[int]:
    conninfo, schema = split_url(pg_url)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            f"SELECT (attributes->>'seq')::int FROM \"{schema}\".logs WHERE service_name = %s",
            (service,),
        ).fetchall()
    return sorted(row[0] for row in rows)


def test_two_collectors_writing_to_one_postgres_lose_nothing(tmp_path: Path, pg_url: str) -> None:
    count = 3000
    ports = [allocate_ports("grpc", "http") for _ in range(2)]
    with (
        collector(config(pg_url, batch=True), tmp_path, ports=ports[0], name="c1") as first,
        collector(config(pg_url, batch=True), tmp_path, ports=ports[1], name="c2") as second,
    ):
        apps = [
            SdkApp(
                f"writer-{n}",
                grpc_exporter(ports[n]["grpc"]),
                max_export_batch_size=200,
                max_queue_size=count,
            )
            for n in range(2)
        ]
        senders = [threading.Thread(target=send_numbered, args=(app, count)) for app in apps]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        for app in apps:
            app.close()
        assert first.stop() == 0 and second.stop() == 0
    for n in range(2):
        assert stored_seqs(pg_url, f"writer-{n}") == list(range(count))


class AckRecorder(LogRecordExporter):
    """Wraps the SDK's exporter and remembers which records the collector acknowledged."""

    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.acked: list[int] = []
        self.collector_gone = threading.Event()
        self._lock = threading.Lock()

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self.collector_gone.is_set():
            return LogRecordExportResult.FAILURE
        result = self.inner.export(batch)
        if result == LogRecordExportResult.SUCCESS:
            with self._lock:
                self.acked.extend(
                    int(r.log_record.attributes["seq"])  # type: ignore[arg-type, index]
                    for r in batch
                )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@contextmanager
def emitting(app: SdkApp) -> Iterator[threading.Event]:
    stop = threading.Event()

    def run() -> None:
        seq = 0
        while not stop.is_set():
            app.logger.info("stream record %d", seq, extra={"seq": seq})
            seq += 1
            if seq % 50 == 0:
                time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(10)


def test_sigkill_mid_stream_keeps_every_acknowledged_record_and_a_sound_file(
    tmp_path: Path,
) -> None:
    """With ``durability: commit`` an OTLP success means "committed to the SQLite file":
    kill -9 the collector while records stream in, and every acknowledged one is there.

    Small write transactions with fsync make the writer lag behind the stream, so the
    same run with ``durability: queue`` loses acknowledged records."""
    db = tmp_path / "logs.db"
    ports = allocate_ports("grpc", "http")
    extra = "    durability: commit\n    synchronous: full\n    max_batch_records: 100"
    with collector(config(f"sqlite:///{db}", extra=extra), tmp_path, ports=ports) as running:
        recorder = AckRecorder(grpc_exporter(ports["grpc"]))
        app = SdkApp("streamer", recorder, schedule_delay_millis=20, max_export_batch_size=100)
        with emitting(app):
            deadline = time.monotonic() + 60
            while len(recorder.acked) < 3000 and time.monotonic() < deadline:
                time.sleep(0.01)
            running.process.kill()  # SIGKILL, mid-stream
            running.process.wait(10)
            recorder.collector_gone.set()
        app.close()
    acked = set(recorder.acked)
    assert len(acked) >= 3000
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {
            row[0] for row in conn.execute("SELECT json_extract(attributes, '$.seq') FROM logs")
        }
    assert acked <= stored, f"{len(acked - stored)} acknowledged records are missing"
    backend = SqliteBackend(f"sqlite:///{db}")
    assert backend.integrity_check() == []
    backend.close()
