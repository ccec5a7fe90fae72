"""Safe binds: defaults and the shipped local config stay on loopback, and ``otelkit
collector run`` warns once at start for each listener open beyond loopback without auth."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig
from otelkit.collector.extensions.health_check import HealthCheckConfig
from otelkit.collector.receivers.otlp import OtlpReceiverConfig
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.listeners import is_loopback, warn_exposed
from otelkit.collector.runtime.registry import Registry
from tests.collector.security.support import collector_command

ROOT = Path(__file__).resolve().parents[3]
EXPOSED = """
extensions:
  bearertokenauth: {token: abc}
  health_check: {endpoint: "0.0.0.0:13133"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317"}
      http: {endpoint: "0.0.0.0:4318", auth: {authenticator: bearertokenauth}}
  otlp/local:
    protocols:
      grpc: {endpoint: "127.0.0.1:4319"}
exporters:
  prometheus: {endpoint: "[::]:9464"}
  otlphttp: {traces_endpoint: "http://127.0.0.1:1/v1/traces"}
service:
  extensions: [bearertokenauth, health_check]
  telemetry: {metrics: {address: "localhost:8888"}}
  pipelines:
    metrics: {receivers: [otlp, otlp/local], exporters: [prometheus, otlphttp]}
"""


def test_defaults_bind_localhost_as_upstream() -> None:
    protocols = OtlpReceiverConfig.model_validate({"protocols": {"grpc": None, "http": None}})
    assert protocols.protocols.grpc is not None and protocols.protocols.http is not None
    assert protocols.protocols.grpc.endpoint == "localhost:4317"
    assert protocols.protocols.http.endpoint == "localhost:4318"
    assert HealthCheckConfig().endpoint == "localhost:13133"
    assert PrometheusConfig().endpoint == "localhost:9464"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.3.2.1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("collector", False)],
)  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_each_unauthenticated_exposed_listener_gets_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(EXPOSED, Registry.discover(), {})
    with caplog.at_level(logging.WARNING):
        assert warn_exposed(config, logging.getLogger("test")) == 4
    text = caplog.text
    assert "receiver/otlp: OTLP/grpc listens on 0.0.0.0:4317 without authentication" in text
    assert "extension/health_check: health check listens on 0.0.0.0:13133" in text
    assert "exporter/prometheus: Prometheus scrape endpoint listens on [::]:9464" in text
    # the token is checked, but it crosses the network readable by anyone on the path
    assert "receiver/otlp: OTLP/http listens on 0.0.0.0:4318 without TLS" in text
    assert "4319" not in text and "8888" not in text


def test_credentials_over_tls_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    tls = "tls: {cert_pem: x, key_pem: y}"
    config = parse_config(
        EXPOSED.replace(
            "auth: {authenticator: bearertokenauth}}",
            f"auth: {{authenticator: bearertokenauth}}, {tls}}}",
        ),
        Registry.discover(),
        {},
    )
    with caplog.at_level(logging.WARNING):
        assert warn_exposed(config, logging.getLogger("test")) == 3
    assert "OTLP/http" not in caplog.text


def test_the_shipped_local_config_warns_about_nothing(caplog: pytest.LogCaptureFixture) -> None:
    text = (ROOT / "collector/otelkit.yaml").read_text()
    config = parse_config(text, Registry.discover(), {"PATH": ""})
    assert warn_exposed(config, logging.getLogger("test")) == 0


def test_collector_run_prints_the_warnings_at_start(tmp_path: Path) -> None:
    """Nothing is bound: the otlphttp exporter has no logs endpoint, so building stops the
    run right after the start-up checks, which is where the warnings belong."""
    config = EXPOSED.replace("metrics: {receivers", "logs: {receivers").replace(
        "exporters: [prometheus, otlphttp]", "exporters: [otlphttp]"
    )
    path = tmp_path / "exposed.yaml"
    path.write_text(config)
    result = collector_command("run", path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("without authentication") == 2, result.stderr
    assert result.stderr.count("OTLP/grpc listens on 0.0.0.0:4317") == 1
