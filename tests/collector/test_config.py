"""Configuration errors as an operator sees them from ``otelkit collector validate``.

Every problem names its path in the file and says what would be right.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelkit.cli import main

BLOCK_STYLE = """
receivers:
  otlp:
    protocols:
      grpc:
processors:
  batch:
    timeout: ${env:BATCH_TIMEOUT}
exporters:
  otlp:
    endpoint: ${env:OTELKIT_TEST_UNSET:-downstream}
    tls:
      insecure: true
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
"""
VALID = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:4317}
processors:
  batch: {timeout: 200ms}
exporters:
  otlp: {endpoint: 127.0.0.1:14317, tls: {insecure: true}}
extensions:
  health_check: {}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}
"""


def validate(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "otelkit.yaml"
    path.write_text(text)
    code = main(["collector", "validate", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def swap(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


def test_a_valid_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(VALID, tmp_path, capsys)
    assert (code, err) == (0, "")
    assert "valid (1 pipelines)" in out


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            swap("  batch: {timeout: 200ms}", "  batchy: {}"),
            "processors.batchy",
            "unknown processor type 'batchy'; known types: batch, ",
            id="unknown-type-lists-known",
        ),
        pytest.param(
            swap("exporters: [otlp]}", "exporters: [otlp/tier2]}"),
            "service.pipelines.traces.exporters[0]",
            "otlp/tier2 is not defined in exporters or connectors",
            id="undefined-component-in-pipeline",
        ),
        pytest.param(
            swap("batch: {timeout: 200ms}", "batch: {send_batch_size: lots}"),
            "processors.batch.send_batch_size",
            "valid integer",
            id="wrong-value-type",
        ),
        pytest.param(
            swap("otlp: {endpoint: 127.0.0.1:14317, tls: {insecure: true}}", "otlp: {}"),
            "exporters.otlp.endpoint",
            "required key is missing",
            id="missing-required-key",
        ),
        pytest.param(
            swap("endpoint: 127.0.0.1:14317", "endpoint: collector"),
            "exporters.otlp.endpoint",
            "'collector' is not an endpoint: expected host:port",
            id="bad-endpoint",
        ),
        pytest.param(
            swap("timeout: 200ms", "timeout: 200"),
            "processors.batch.timeout",
            "200 is not a duration: expected a number with a unit, such as 200ms",
            id="bad-duration",
        ),
        pytest.param(
            swap(
                "grpc: {endpoint: 127.0.0.1:4317}",
                "http: {endpoint: 127.0.0.1:4318, max_request_body_size: 20 megs}",
            ),
            "receivers.otlp.protocols.http.max_request_body_size",
            "'20 megs' is not a size: expected bytes or a number with a unit, such as 512KiB",
            id="bad-size",
        ),
        pytest.param(
            swap("extensions: [health_check]", "extensions: [health_check/]"),
            "service.extensions[0]",
            "'health_check/' is not a component ID: expected 'type' or 'type/name'",
            id="malformed-extension-id",
        ),
        pytest.param(
            swap("batch: {timeout: 200ms}", "batch: {timeout: 200ms, flush: always}"),
            "processors.batch.flush",
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            swap("batch: {timeout: 200ms}", "memory_limiter: {check_interval: 1s}").replace(
                "processors: [batch]", "processors: [memory_limiter]"
            ),
            "processors.memory_limiter",
            "set limit_mib (such as 512) or limit_percentage",
            id="memory-limiter-without-limit",
        ),
    ],
)
def test_each_error_names_its_path(
    text: str, path: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = validate(text, tmp_path, capsys)
    assert code == 2
    assert "invalid configuration" in err
    line = next((ln for ln in err.splitlines() if f"error: {path}" in ln), None)
    assert line is not None, err
    assert message in line


def test_every_problem_is_listed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = swap("timeout: 200ms", "timeout: soon").replace("endpoint: 127.0.0.1:14317, ", "")
    code, _, err = validate(text, tmp_path, capsys)
    assert code == 2
    assert "processors.batch.timeout" in err and "exporters.otlp.endpoint" in err


def test_unused_component_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = swap("exporters:\n", "exporters:\n  otlphttp: {endpoint: http://127.0.0.1:4318}\n")
    code, out, err = validate(text, tmp_path, capsys)
    assert code == 0
    assert "valid" in out
    assert "warning: exporters.otlphttp" in err
    assert "defined but not used in any pipeline" in err


def test_environment_values_are_substituted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_TIMEOUT", "soon")
    monkeypatch.delenv("OTELKIT_TEST_UNSET", raising=False)
    code, _, err = validate(BLOCK_STYLE, tmp_path, capsys)
    assert code == 2
    assert "processors.batch.timeout" in err and "'soon' is not a duration" in err
    assert "exporters.otlp.endpoint" in err and "'downstream' is not an endpoint" in err


def test_environment_defaults_make_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_TIMEOUT", "1s")
    monkeypatch.delenv("OTELKIT_TEST_UNSET", raising=False)
    text = BLOCK_STYLE.replace(":-downstream}", ":-127.0.0.1:4317}")
    code, _, err = validate(text, tmp_path, capsys)
    assert (code, err) == (0, "")


def test_an_unset_variable_without_default_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTELKIT_TEST_UNSET", raising=False)
    text = swap("health_check: {}", "health_check: {service_id: '${env:OTELKIT_TEST_UNSET}'}")
    code, _, err = validate(text, tmp_path, capsys)
    assert code == 0
    assert "warning: extensions.health_check.service_id" in err
    assert "OTELKIT_TEST_UNSET is not set" in err


def test_the_real_command_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(swap("timeout: 200ms", "timeout: 5"))
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "processors.batch.timeout" in result.stderr
