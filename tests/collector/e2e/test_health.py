"""The health_check extension of a running collector, including during shutdown."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.collector.e2e.clients import make_spans, send_all, wait_until
from tests.support.collector import allocate_ports, collector

WITH_HEALTH = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
exporters:
  otlp:
    endpoint: 127.0.0.1:DOWN
    tls: {insecure: true}
    retry_on_failure: {initial_interval: 100ms, max_interval: 100ms}
    sending_queue: {drain_timeout: 3s}
extensions:
  health_check: {endpoint: "127.0.0.1:{health}"}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp]}
"""


def get(port: int, path: str) -> tuple[int, str, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["content-type"], json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], json.load(error)


def test_health_endpoints_and_not_ready_during_shutdown(tmp_path: Path) -> None:
    ports = allocate_ports("grpc", "health")
    down = allocate_ports("down")["down"]
    config = WITH_HEALTH.replace("DOWN", str(down))
    with collector(config, tmp_path, ports=ports) as running:
        health = ports["health"]
        wait_until(lambda: get(health, "/health/ready")[0] == 200, what="readiness")
        status, content_type, body = get(health, "/health/live")
        assert (status, content_type, body["status"]) == (200, "application/health+json", "pass")
        status, _, body = get(health, "/health")
        assert status == 200
        assert body["status"] == "pass"
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert {"receiver/otlp:status", "exporter/otlp:status"} <= set(checks)
        assert checks["exporter/otlp:status"][0]["status"] == "pass"
        status, content_type, body = get(health, "/")
        assert (status, content_type, body["status"]) == (
            200,
            "application/json",
            "Server available",
        )

        # A batch for the stopped downstream: /health warns, shutdown stays busy draining.
        send_all("grpc", f"127.0.0.1:{ports['grpc']}", make_spans(3))
        wait_until(lambda: get(health, "/health")[2]["status"] == "warn", what="a warning")
        status, _, body = get(health, "/health")
        exporter_check = body["checks"]["exporter/otlp:status"][0]  # type: ignore[index]
        assert status == 200
        assert exporter_check["status"] == "warn"
        assert "UNAVAILABLE" in exporter_check["output"]
        running.process.terminate()
        seen: list[int] = []
        wait_until(
            lambda: seen.append(get(health, "/health/ready")[0]) or seen[-1] == 503,
            timeout=10,
            what="readiness to fail during shutdown",
        )
        assert running.process.poll() is None, "collector exited before the check"
        assert get(health, "/health/live")[0] == 200
        assert get(health, "/")[0] == 503
        assert running.stop(timeout=20) == 0
