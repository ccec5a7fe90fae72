"""Secrets in a configuration never show in the collector's own output: ``validate``,
``components``, ``run`` (its log, on stdout and stderr, across retries) and ``otelkit logs``."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from pydantic import BaseModel, Field

from otelkit.collector.commands import _settings
from tests.collector.e2e.clients import wait_until
from tests.support.collector import allocate_ports, collector
from tests.support.secrets import planted_logs
from tests.support.services import free_port

SECRETS = (
    "userinfo-pw-secret", "query-pw-secret", "sslpw-secret", "otlp-endpoint-secret",
    "header-token-secret", "dsn-secret-part", "0123456789abcdef0123456789abcdef",
    "unsupported-scheme-secret", "header-list-secret", "yaml-line-secret", "cli-pw-secret",
)  # fmt: skip


def otelkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_validate_names_bad_settings_without_printing_their_secrets(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("""
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:4318"}}}
exporters:
  logstore:
    url: "mysql://root:unsupported-scheme-secret@db/logs?password=query-pw-secret"
  otlphttp:
    endpoint: "http://u:otlp-endpoint-secret@127.0.0.1:1"
    headers: {authorization: ["Bearer header-list-secret"]}
  sentry:
    dsn: "ftp://0123456789abcdef0123456789abcdef:dsn-secret-part@127.0.0.1/42"
service:
  pipelines:
    logs: {receivers: [otlp], exporters: [logstore, otlphttp, sentry]}
""")
    for command in ("validate", "run"):
        result = otelkit("collector", command, "--config", str(config))
        output = shown(result)
        assert result.returncode == 2, output
        assert not leaks(output), output
        for path in (
            "exporters.logstore.url",
            "exporters.otlphttp.headers",
            "exporters.sentry.dsn",
        ):
            assert path in output
        assert "mysql://root:****@db/logs?password=****" in output


def test_a_yaml_error_does_not_echo_a_secret_on_its_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text('exporters:\n  sentry: {dsn: "x", password: yaml-line-secret, ]\n')
    result = otelkit("collector", "validate", "--config", str(config))
    assert result.returncode == 2
    assert "not valid YAML" in shown(result)
    assert not leaks(shown(result)), shown(result)


def test_components_never_prints_secret_defaults() -> None:
    class Plugin(BaseModel):
        token: str = "header-token-secret"
        headers: dict[str, str] = Field(default_factory=lambda: {"x": "header-list-secret"})
        url: str = "postgresql://app:userinfo-pw-secret@db/x?password=query-pw-secret"
        timeout: float = 5.0

    lines = _settings(Plugin, "  ")
    assert not leaks("\n".join(lines)), lines
    assert "  timeout: 5.0" in lines and "  token: '****'" in lines
    result = otelkit("collector", "components")
    assert result.returncode == 0 and "redaction" in result.stdout
    assert not leaks(shown(result))


RUN = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:{http}"}}}
exporters:
  logstore:
    url: "postgresql://app:userinfo-pw-secret@127.0.0.1:CLOSED/db?password=query-pw-secret&sslpassword=sslpw-secret"
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms}
    sending_queue: {drain_timeout: 1s}
  otlphttp:
    endpoint: "http://collector:otlp-endpoint-secret@127.0.0.1:CLOSED"
    headers: {authorization: "Bearer header-token-secret"}
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms}
    sending_queue: {drain_timeout: 1s}
  sentry:
    dsn: "http://0123456789abcdef0123456789abcdef:dsn-secret-part@127.0.0.1:CLOSED/42"
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms}
    sending_queue: {drain_timeout: 1s}
    min_event_level: info
service:
  telemetry: {logs: {level: debug}}
  pipelines:
    logs: {receivers: [otlp], exporters: [logstore, otlphttp, sentry]}
"""


def test_a_running_collector_logs_no_secret_through_start_retries_and_shutdown(
    tmp_path: Path,
) -> None:
    ports = allocate_ports("http")
    config = RUN.replace("CLOSED", str(free_port()))
    with collector(config, tmp_path, ports=ports) as running:
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['http']}/v1/logs",
            data=planted_logs().SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        wait_until(lambda: running.log().count("send failed") >= 6, timeout=30,
                   what="retries of every exporter in the log")  # fmt: skip
        running.stop()
        output = running.log()
    assert not leaks(output), [line for line in output.splitlines() if leaks(line)][:5]
    assert "postgresql://app:****@127.0.0.1" in output


def test_otelkit_logs_does_not_print_the_store_password() -> None:
    url = f"postgresql://app:cli-pw-secret@127.0.0.1:{free_port()}/db?password=cli-pw-secret"
    result = otelkit("logs", "query", "--url", url)
    assert result.returncode != 0
    assert "127.0.0.1" in shown(result)
    assert not leaks(shown(result)), shown(result)
