"""A third-party processor, installed with pip from tests/plugins, runs like a built-in.

The plugin is installed into a directory of this test's own (``pip install --target``)
that only the collector subprocess sees through PYTHONPATH, so the test is
self-contained and leaves the interpreter running the tests unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.collector.e2e.clients import make_spans, read_output, send_all, span_keys, wait_until
from tests.support.collector import allocate_ports, collector

PLUGIN = Path(__file__).parents[2] / "plugins" / "otelkit_example_plugin"

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
processors:
  resource_tag: {key: deployment.region, value: eu-west-1}
  batch: {timeout: 20ms}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [resource_tag, batch], exporters: [file]}
"""


def install_plugin(tmp_path: Path) -> Path:
    """pip-install the plugin into a fresh directory; returns that directory."""
    source = tmp_path / "plugin-source"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    failures = []
    # Offline first (needs setuptools and wheel here); else let pip fetch the build backend.
    for isolation in (["--no-build-isolation"], []):
        result = subprocess.run(
            [*base, str(target), *isolation, str(source)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return target
        failures.append(result.stderr[-2000:])
    pytest.fail("pip could not install the example plugin:\n" + "\n".join(failures))


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", "validate", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_an_installed_plugin_processor_runs_in_a_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    text = CONFIG.replace("OUT", str(out))
    config_file = tmp_path / "check.yaml"
    config_file.write_text(text.replace("{grpc}", "4317"))
    plain_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    before = validate(config_file, plain_env)
    assert before.returncode == 2
    assert "unknown processor type 'resource_tag'" in before.stderr

    site = install_plugin(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    assert validate(config_file, {**plain_env, **env}).returncode == 0

    ports = allocate_ports("grpc")
    spans = make_spans(25)
    with collector(text, tmp_path, ports=ports, env=env) as running:
        send_all("grpc", f"127.0.0.1:{ports['grpc']}", spans)
        wait_until(lambda: sum(span_keys(read_output(out)).values()) == len(spans))
        assert running.stop() == 0
    for payload in read_output(out):
        for rs in payload.resource_spans:
            attributes = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert attributes["deployment.region"] == "eu-west-1"
            assert attributes["service.name"] == "checkout"
