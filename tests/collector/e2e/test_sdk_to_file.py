"""The real SDK exporters -> a collector (memory_limiter, batch) -> the file exporter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.collector.e2e.clients import (
    expected_logs,
    expected_points,
    expected_spans,
    log_keys,
    make_logs,
    make_metrics,
    make_spans,
    point_keys,
    read_output,
    send_all,
    span_keys,
    wait_until,
)
from tests.support.collector import allocate_ports, collector

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
processors:
  memory_limiter: {limit_percentage: 95, check_interval: 100ms}
  batch: {send_batch_size: 64, send_batch_max_size: 100, timeout: 50ms}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [file]}
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [file]}
    logs: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [file]}
"""


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_span_point_and_record_arrives_intact(transport: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ports = allocate_ports("grpc", "http")
    spans, metrics, logs = make_spans(150, tag=transport), make_metrics(), make_logs(120)
    want_spans, want_points, want_logs = (
        expected_spans(spans), expected_points(metrics), expected_logs(logs),
    )  # fmt: skip
    with collector(CONFIG.replace("OUT", str(out)), tmp_path, ports=ports) as running:
        send_all(transport, f"127.0.0.1:{ports[transport]}", spans, metrics, logs, batch=70)

        def everything_arrived() -> bool:
            got = read_output(out)
            return (span_keys(got), point_keys(got), log_keys(got)) == (
                want_spans, want_points, want_logs,
            )  # fmt: skip

        wait_until(everything_arrived, what="every item in the file")
        assert running.stop() == 0
    # Split at send_batch_max_size: no request in the file holds more than 100 spans.
    assert all(sum(span_keys([p]).values()) <= 100 for p in read_output(out))
