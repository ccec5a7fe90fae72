"""Graceful shutdown: SIGTERM stops taking data, flushes the batch, exits 0."""

from __future__ import annotations

from pathlib import Path

from tests.collector.e2e.clients import (
    expected_spans,
    make_spans,
    read_output,
    send_all,
    span_keys,
)
from tests.support.collector import allocate_ports, collector

HELD_IN_BATCH = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
processors:
  batch: {send_batch_size: 100000, timeout: 1h}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [file]}
"""


def test_sigterm_flushes_the_batch_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ports = allocate_ports("grpc")
    spans = make_spans(40)
    with collector(HELD_IN_BATCH.replace("OUT", str(out)), tmp_path, ports=ports) as running:
        send_all("grpc", f"127.0.0.1:{ports['grpc']}", spans)
        assert span_keys(read_output(out)) == {}  # held by the batch processor (timeout 1h)
        assert running.stop(timeout=20) == 0
    assert span_keys(read_output(out)) == expected_spans(spans)
