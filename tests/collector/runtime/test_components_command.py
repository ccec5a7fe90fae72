"""`otelkit collector components` shows what a configuration can name."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", "components", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_built_in_component_is_listed_with_its_settings() -> None:
    result = run()
    assert result.returncode == 0, result.stderr
    sections = {}
    current = ""
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            current = line.rstrip(":")
            sections[current] = []
        elif not line.startswith("   "):
            sections[current].append(line.split()[0])
    assert sections["receivers"] == ["otlp"]
    assert {"batch", "memory_limiter", "budget", "perf_issues", "tail_sampling"} <= set(
        sections["processors"]
    )
    assert {"spanmetrics", "findings"} <= set(sections["connectors"])
    assert {
        "nop", "debug", "file", "otlp", "otlphttp", "sentry", "prometheus",
        "prometheusremotewrite", "logstore",
    } <= set(sections["exporters"])  # fmt: skip
    assert sections["extensions"] == ["basicauth", "bearertokenauth", "health_check"]
    assert "    budgets_file: (required)" in result.stdout


def test_one_kind_shows_nested_settings_and_optional_protocols() -> None:
    result = run("--kind", "receiver")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:4] == [
        "receivers:",
        "  otlp (logs, metrics, traces)",
        "    protocols:",
        "      grpc:  # optional: off unless set",
    ]
    assert "        endpoint: 'localhost:4318'" in result.stdout
