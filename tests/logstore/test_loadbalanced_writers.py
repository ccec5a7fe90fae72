"""Three collectors writing to one PostgreSQL log store behind a ``loadbalancing``
collector that routes log records by trace ID: every acknowledged record is stored
exactly once, and every writer takes a share."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
import yaml

from otelkit.logstore.postgres import split_url
from tests.collector.e2e.clients import metric_total, scrape
from tests.logstore.test_e2e import AckRecorder, SdkApp, config, grpc_exporter
from tests.support.collector import allocate_ports, collector

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")

WRITERS = 3


def front_config(backend_ports: list[int]) -> str:
    otlp = {
        "tls": {"insecure": True},
        "retry_on_failure": {"initial_interval": "50ms", "max_interval": "500ms"},
    }
    hostnames = [f"127.0.0.1:{port}" for port in backend_ports]
    front = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:{grpc}"}}}},
        "exporters": {
            "loadbalancing": {
                "routing_key": "traceID",
                "resolver": {"static": {"hostnames": hostnames}},
                "protocol": {"otlp": otlp},
            }
        },
        "service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["loadbalancing"]}}},
    }
    return yaml.safe_dump(front, sort_keys=False)


def emit(app: SdkApp, requests: int) -> None:
    """Per request: two records inside its trace; every tenth request one record outside."""
    for n in range(requests):
        with app.tracer.start_as_current_span(f"GET /orders/{n}"):
            app.logger.info("order %d received", n, extra={"seq": 2 * n})
            app.logger.info("order %d stored", n, extra={"seq": 2 * n + 1})
        if n % 10 == 0:
            app.logger.warning("housekeeping %d", n, extra={"seq": 100_000 + n})


def stored(pg_url: str, service: str) -> list[tuple[int, str | None]]:
    conninfo, schema = split_url(pg_url)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            f"SELECT (attributes->>'seq')::int, trace_id FROM \"{schema}\".logs "
            "WHERE service_name = %s",
            (service,),
        ).fetchall()
    return sorted((int(seq), trace_id) for seq, trace_id in rows)


def test_three_collectors_behind_a_trace_router_store_every_record_once(
    tmp_path: Path, pg_url: str
) -> None:
    requests = 1500
    ports = [allocate_ports("grpc", "http") for _ in range(WRITERS)]
    front_ports = allocate_ports("grpc")
    service = "checkout-lb"
    with ExitStack() as stack:
        running = [
            stack.enter_context(
                collector(config(pg_url, batch=True), tmp_path, ports=ports[n], name=f"writer-{n}")
            )
            for n in range(WRITERS)
        ]
        with collector(
            front_config([p["grpc"] for p in ports]), tmp_path, ports=front_ports, name="front"
        ) as front:
            recorder = AckRecorder(grpc_exporter(front_ports["grpc"]))
            app = SdkApp(service, recorder, max_export_batch_size=200, max_queue_size=10_000)
            sender = threading.Thread(target=emit, args=(app, requests))
            sender.start()
            sender.join(120)
            app.close()
            assert front.stop() == 0  # drains its queues into the writers
        written = [
            metric_total(scrape(w.ports["metrics"]), "otelcol_exporter_sent_log_records_total")
            for w in running
        ]
        assert all(count > 0 for count in written), written
        for w in running:
            assert w.stop() == 0  # each drains into the database
    rows = stored(pg_url, service)
    seqs = [seq for seq, _ in rows]
    assert len(seqs) == len(set(seqs)), "a record stored twice"
    assert set(recorder.acked) <= set(seqs), "an acknowledged record is missing"
    assert len(recorder.acked) == 2 * requests + requests // 10
    assert sum(written) == len(rows)
    traced = {trace_id for _, trace_id in rows if trace_id}
    assert len(traced) == requests
