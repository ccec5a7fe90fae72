"""End to end through the real otelkit collector: two instrumented services export over
OTLP (gRPC, or HTTP/protobuf) to ``otelkit collector run``, whose file exporter writes OTLP/JSON lines."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from otelkit.collector.pdata import otlp_json
from tests.presets import procs
from tests.presets.sink import Received
from tests.support.collector import allocate_ports, collector

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
processors:
  batch: {timeout: 50ms}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [file]}
    metrics: {receivers: [otlp], processors: [batch], exporters: [file]}
    logs: {receivers: [otlp], processors: [batch], exporters: [file]}
"""
SERVER, CLIENT = 2, 3


def _read(out: Path) -> Received:
    return Received.of(otlp_json.iter_file(out)) if out.exists() else Received()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_trace_and_logs_arrive_through_the_collector(protocol: str, tmp_path: Path) -> None:
    out = tmp_path / "otlp.jsonl"
    ports = allocate_ports("grpc", "http")
    with collector(CONFIG.replace("OUT", str(out)), tmp_path, ports=ports) as running:
        port = ports["grpc" if protocol == "grpc" else "http"]
        endpoint = f"http://127.0.0.1:{port}"
        down_env = procs.telemetry_env(
            endpoint, "downstream", APP_MODE="manual", OTEL_EXPORTER_OTLP_PROTOCOL=protocol
        )
        with procs.server(procs.uvicorn_command, down_env, tmp_path, "downstream") as down:
            front_env = procs.telemetry_env(
                endpoint,
                "front",
                APP_MODE="manual",
                APP_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
                APP_DOWNSTREAM_URL=down.url,
                OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            )
            with procs.server(procs.uvicorn_command, front_env, tmp_path, "front") as front:
                response = httpx.get(
                    f"{front.url}/items/3", headers={"X-Request-ID": "via-collector"}
                )
                assert response.status_code == 200
                assert front.stop() in procs.CLEAN_EXIT
            assert down.stop() in procs.CLEAN_EXIT

        def arrived() -> bool:
            received = _read(out)
            return len([s for s in received.spans() if s.kind == SERVER]) >= 2 and any(
                log.body == "fetched item 3" for log in received.logs()
            )

        deadline = time.monotonic() + 15
        while not arrived() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.stop() == 0, running.log()

    received = _read(out)
    spans = received.spans()
    front_server = next(
        s for s in spans if s.kind == SERVER and s.resource["service.name"] == "front"
    )
    assert front_server.attributes["http.route"] == "/items/{item_id}"
    assert front_server.attributes["request_id"] == "via-collector"
    children = [s for s in spans if s.parent_span_id == front_server.span_id]
    assert {s.attributes.get("db.system") for s in children} >= {"sqlite"}
    client = next(s for s in children if s.kind == CLIENT and "url.full" in s.attributes)
    down_server = next(
        s for s in spans if s.kind == SERVER and s.resource["service.name"] == "downstream"
    )
    assert down_server.parent_span_id == client.span_id
    assert down_server.attributes["request_id"] == "via-collector"
    fetched = next(log for log in received.logs() if log.body == "fetched item 3")
    assert fetched.trace_id == front_server.trace_id
    assert fetched.attributes["request_id"] == "via-collector"
    # Request metrics come from the collector's span metrics; the app still records the
    # connection pool's state, which no span shows.
    metrics = {p.metric for p in received.metric_points()}
    assert "db.client.connections.usage" in metrics
    assert not {m for m in metrics if m.startswith("http.server.")}
