"""Config problems are reported once, at the place the operator must change."""

from __future__ import annotations

import pytest

from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.registry import Registry


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Registry.discover(), {})
    return [str(p) for p in caught.value.problems]


def test_a_broken_component_is_not_also_reported_as_undefined_in_pipelines() -> None:
    found = problems(
        """
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
processors: {batch: {timeout: soon}}
exporters: {nop: {}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [nop]}
    logs: {receivers: [otlp], processors: [batch], exporters: [nop]}
"""
    )
    assert len(found) == 1, found
    assert found[0].startswith("error: processors.batch.timeout")
    assert "'soon' is not a duration" in found[0]


def test_env_substitution_with_defaults_and_escapes() -> None:
    text = """
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ${env:GRPC_ENDPOINT:-127.0.0.1:4317}
exporters:
  file:
    path: /tmp/$${not_env}/${env:NAME}.jsonl
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
"""
    config = parse_config(text, Registry.discover(), {"NAME": "spans"})
    specs = {str(spec.id): spec.config for spec in config.components.values()}
    assert specs["otlp"].protocols.grpc.endpoint == "127.0.0.1:4317"  # type: ignore[attr-defined]
    assert specs["file"].path == "/tmp/${not_env}/spans.jsonl"  # type: ignore[attr-defined]
