"""Auth as configured in a collector file: two collectors talking with a token, apps using
``OTEL_EXPORTER_OTLP_HEADERS``, and configurations that name an authenticator wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.registry import Registry
from tests.collector.e2e.clients import (
    expected_spans,
    make_spans,
    metric_total,
    read_output,
    scrape,
    sdk_exporters,
    send_all,
    span_keys,
    wait_until,
)
from tests.collector.security.support import TOKEN, collector_command
from tests.support.collector import allocate_ports, collector
from tests.support.services import free_port

DOWNSTREAM = """
extensions:
  bearertokenauth: {token: "${env:OTELKIT_TOKEN}"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}", auth: {authenticator: bearertokenauth}}
      http: {endpoint: "127.0.0.1:{http}", auth: {authenticator: bearertokenauth}}
exporters:
  file: {path: "OUT"}
service:
  extensions: [bearertokenauth]
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
"""

UPSTREAM = """
extensions:
  bearertokenauth/client: {token: "${env:UPSTREAM_TOKEN}"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
exporters:
  EXPORTER:
    ENDPOINT
    auth: {authenticator: bearertokenauth/client}
    timeout: 2s
    retry_on_failure: {enabled: false}
service:
  extensions: [bearertokenauth/client]
  pipelines:
    traces: {receivers: [otlp], exporters: [EXPORTER]}
"""


@pytest.mark.parametrize("exporter", ["otlp", "otlphttp"])
def test_two_collectors_talk_with_a_token_and_a_wrong_one_is_refused(
    tmp_path: Path, exporter: str
) -> None:
    down_ports = allocate_ports("grpc", "http")
    out = tmp_path / "out.jsonl"
    endpoint = (
        f"endpoint: 127.0.0.1:{down_ports['grpc']}\n    tls: {{insecure: true}}"
        if exporter == "otlp"
        else f"endpoint: http://127.0.0.1:{down_ports['http']}"
    )
    upstream = UPSTREAM.replace("EXPORTER", exporter).replace("ENDPOINT", endpoint)
    env = {"OTELKIT_TOKEN": TOKEN}
    with collector(
        DOWNSTREAM.replace("OUT", str(out)), tmp_path, ports=down_ports, env=env, name="down"
    ):
        spans = make_spans(5, "good")
        with collector(
            upstream,
            tmp_path,
            ports=allocate_ports("grpc"),
            env={"UPSTREAM_TOKEN": TOKEN},
            name="up",
        ) as up:
            send_all("grpc", f"127.0.0.1:{up.ports['grpc']}", spans=spans)
            wait_until(lambda: span_keys(read_output(out)) == expected_spans(spans), what="spans")
        with collector(
            upstream,
            tmp_path,
            ports=allocate_ports("grpc"),
            env={"UPSTREAM_TOKEN": "not-the-token"},
            name="intruder",
        ) as intruder:
            send_all("grpc", f"127.0.0.1:{intruder.ports['grpc']}", spans=make_spans(5, "bad"))

            def refused() -> bool:
                text = scrape(intruder.ports["metrics"])
                return metric_total(text, "otelcol_exporter_send_failed_spans_total") == 10

            wait_until(refused, what="the intruder's spans refused")
            assert TOKEN not in intruder.log() and "not-the-token" not in intruder.log()
    assert span_keys(read_output(out)) == expected_spans(spans)


def test_app_sends_the_token_through_otel_exporter_otlp_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The presets' SDK exporters read OTEL_EXPORTER_OTLP_HEADERS (values URL-encoded)."""
    ports = allocate_ports("grpc", "http")
    out = tmp_path / "out.jsonl"
    with collector(
        DOWNSTREAM.replace("OUT", str(out)), tmp_path, ports=ports, env={"OTELKIT_TOKEN": TOKEN}
    ):
        for transport in ("grpc", "http"):
            spans = make_spans(2, transport)
            target = f"127.0.0.1:{ports[transport]}"
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
            exporter = sdk_exporters(transport, target)["traces"]
            assert exporter.export(spans) is SpanExportResult.FAILURE
            exporter.shutdown()
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{TOKEN}")
            exporter = sdk_exporters(transport, target)["traces"]
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            exporter.shutdown()
        wait_until(lambda: len(span_keys(read_output(out))) == 8, what="both transports' spans")


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Registry.discover(), environ or {})
    return [str(p) for p in caught.value.problems if p.severity == "error"]


RECEIVER_WITH_AUTH = """
receivers:
  otlp:
    protocols:
      http: {auth: {authenticator: bearertokenauth}}
exporters: {nop: {}}
service:
  EXTENSIONS
  pipelines: {traces: {receivers: [otlp], exporters: [nop]}}
"""


def test_an_authenticator_that_is_not_defined_is_a_config_error() -> None:
    [problem] = problems(RECEIVER_WITH_AUTH.replace("EXTENSIONS", ""))
    assert "receivers.otlp.protocols.http.auth.authenticator" in problem
    assert "not defined in extensions" in problem


def test_an_authenticator_not_listed_in_service_extensions_is_a_config_error() -> None:
    text = "extensions: {bearertokenauth: {token: abc}}\n" + RECEIVER_WITH_AUTH.replace(
        "EXTENSIONS", ""
    )
    assert any("not listed in service.extensions" in p for p in problems(text))


def test_an_unset_token_variable_is_an_error_not_an_open_door() -> None:
    text = 'extensions: {bearertokenauth: {token: "${env:OTELKIT_TOKEN}"}}\n' + (
        RECEIVER_WITH_AUTH.replace("EXTENSIONS", "extensions: [bearertokenauth]")
    )
    [problem] = problems(text)
    assert problem.startswith("error: extensions.bearertokenauth")
    assert "no token" in problem


def test_basicauth_is_server_or_client_not_both() -> None:
    text = (
        "extensions: {basicauth: {htpasswd: {inline: 'a:b'}, client_auth: {username: a, "
        "password: b}}}\n" + RECEIVER_WITH_AUTH.replace("EXTENSIONS", "extensions: [basicauth]")
    )
    assert any("not both" in p for p in problems(text.replace("bearertokenauth", "basicauth")))


def test_a_client_only_authenticator_on_a_receiver_fails_at_start(tmp_path: Path) -> None:
    text = (
        "extensions: {basicauth/client: {client_auth: {username: a, password: b}}}\n"
        + RECEIVER_WITH_AUTH.replace("EXTENSIONS", "extensions: [basicauth/client]")
        .replace("bearertokenauth", "basicauth/client")
        .replace("{auth:", '{endpoint: "127.0.0.1:{http}", auth:')
    )
    # Its own self-metrics port: the default 8888 may be taken on a shared machine.
    telemetry = f"  telemetry: {{metrics: {{address: '127.0.0.1:{free_port()}'}}}}\n"
    config_path = tmp_path / "c.yaml"
    config_path.write_text(text.replace("{http}", "0") + telemetry)
    result = collector_command("run", config_path)
    assert result.returncode == 1
    assert "cannot authenticate incoming requests" in result.stderr


def test_validate_never_prints_the_secrets(tmp_path: Path) -> None:
    text = """
extensions:
  bearertokenauth: {token: 987654321, colour: red}
  basicauth/client: {client_auth: {username: bob, password: [hunter2-secret]}}
  bearertokenauth/other: {tokens: ["first-secret-token", 42]}
receivers:
  otlp: {protocols: {http: {auth: {authenticator: bearertokenauth}}}}
exporters:
  logstore: {url: "sqlite:///x.db", api: {endpoint: "127.0.0.1:0", token: 1234.5}}
  otlphttp: {endpoint: "http://127.0.0.1:1", auth: {authenticator: basicauth/client}}
service:
  extensions: [bearertokenauth, basicauth/client, bearertokenauth/other]
  pipelines:
    logs: {receivers: [otlp], exporters: [logstore, otlphttp]}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = collector_command("validate", path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "extensions.bearertokenauth.colour" in output  # the real problems are named
    assert "extensions.basicauth/client.client_auth.password" in output
    for secret in ("987654321", "hunter2", "first-secret", "1234.5"):
        assert secret not in output, output
