"""The health check, the Prometheus scrape endpoint and the log search API serve HTTPS
when their config has ``tls`` (upstream's key), in one process and behind workers: a
client that trusts the CA reads them, a plain-text client gets nothing, and the start-up
banner says https."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.certs import Authority
from tests.support.collector import allocate_ports, collector

CONFIG = """
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{{grpc}}"}}}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{{health}}", tls: {tls}}}
exporters:
  prometheus: {{endpoint: "127.0.0.1:{{prometheus}}", tls: {tls}}}
  logstore:
    url: sqlite:///{data}/logs.db
    api: {{endpoint: "127.0.0.1:{{api}}", token: secret-token, tls: {tls}}}
service:
  extensions: [health_check]
  pipelines:
    metrics: {{receivers: [otlp], exporters: [prometheus]}}
    logs: {{receivers: [otlp], exporters: [logstore]}}
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_health_scrape_and_log_api_serve_https(tmp_path: Path, workers: str) -> None:
    ca = Authority(tmp_path / "pki")
    server = ca.server()
    tls = f'{{cert_file: "{server.cert_file}", key_file: "{server.key_file}"}}'
    text = CONFIG.format(tls=tls, data=tmp_path)
    ports = allocate_ports("grpc", "health", "prometheus", "api", "metrics")
    with collector(text, tmp_path, ports=ports, args=["--workers", workers]) as running:
        with httpx.Client(
            verify=ssl.create_default_context(cafile=ca.cert_file), timeout=5
        ) as client:
            ready = wait_ready(client, f"https://localhost:{ports['health']}/health/ready")
            assert ready.status_code == 200, ready.text
            scrape = client.get(f"https://localhost:{ports['prometheus']}/metrics")
            assert scrape.status_code == 200
            logs = client.get(
                f"https://localhost:{ports['api']}/api/logs",
                headers={"Authorization": "Bearer secret-token"},
            )
            assert logs.status_code == 200, logs.text
            refused = "otelkit_logstore_api_refused_requests_total"
            assert api_refusals(ports["metrics"]) == {"host": 0.0, "unauthenticated": 0.0}
            wrong = client.get(
                f"https://localhost:{ports['api']}/api/logs",
                headers={"Authorization": "Bearer wrong"},
            )
            assert wrong.status_code == 401
            assert api_refusals(ports["metrics"]) == {"host": 0.0, "unauthenticated": 1.0}, refused
        for name in ("health", "prometheus", "api"):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{ports[name]}/", timeout=5)
        assert running.stop() == 0
    banner = running.log()
    assert f"https://127.0.0.1:{ports['health']}/health" in banner
    assert f"https://127.0.0.1:{ports['prometheus']}/metrics" in banner
    assert f"https://127.0.0.1:{ports['api']}/api/logs" in banner


def wait_ready(client: httpx.Client, url: str, timeout: float = 20.0) -> httpx.Response:
    """Readiness over HTTPS; workers take a moment after the port opens."""
    deadline = time.monotonic() + timeout
    while (response := client.get(url)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    return response


def api_refusals(metrics_port: int) -> dict[str, float]:
    """The log search API's refusals by reason, from the self-metrics as Prometheus reads them."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "otelkit_logstore_api_refused_requests_total"
    }
