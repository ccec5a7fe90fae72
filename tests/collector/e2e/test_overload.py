"""Overload: an exporter that cannot send fills its small queue, the receiver refuses
with retryable codes, the SDK retries, and once the exporter is unblocked every span
arrives. The refusals are counted on the self-telemetry endpoint."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.collector.e2e.clients import (
    expected_spans,
    make_spans,
    metric_total,
    read_output,
    scrape,
    send_all,
    span_keys,
    wait_until,
)
from tests.support.collector import allocate_ports, collector

DOWNSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
"""

UPSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
exporters:
  otlp:
    endpoint: 127.0.0.1:DOWN
    tls: {insecure: true}
    timeout: 1s
    sending_queue: {queue_size: 2, num_consumers: 1}
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 0}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp]}
"""
SENDERS = 6


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_blocked_exporter_pushes_back_and_nothing_is_lost(transport: str, tmp_path: Path) -> None:
    out = tmp_path / "down.jsonl"
    down_ports, up_ports = allocate_ports("grpc"), allocate_ports("grpc", "http")
    batches = [make_spans(10, tag=f"sender{i}-") for i in range(SENDERS)]
    want = sum((expected_spans(b) for b in batches), start=expected_spans([]))
    upstream = UPSTREAM.replace("DOWN", str(down_ports["grpc"]))
    errors: list[BaseException] = []

    def sender(spans: object) -> None:
        try:
            send_all(transport, f"127.0.0.1:{up_ports[transport]}", spans, timeout=30)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    with collector(upstream, tmp_path, ports=up_ports, name="up") as up:
        threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()

        def refused() -> float:
            return metric_total(scrape(up.ports["metrics"]), "otelcol_receiver_refused_spans_total")

        wait_until(lambda: refused() > 0, what="the receiver to refuse spans")
        downstream = DOWNSTREAM.replace("OUT", str(out))
        with collector(downstream, tmp_path, ports=down_ports, name="down"):
            for thread in threads:
                thread.join(60)
            assert not errors, errors
            wait_until(lambda: span_keys(read_output(out)) == want, what="every span downstream")
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelcol_receiver_refused_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_enqueue_failed_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == sum(want.values())


OVER_MEMORY = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
processors:
  memory_limiter: {limit_mib: 2, check_interval: 100ms}
exporters:
  nop: {}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter], exporters: [nop]}
"""


def test_over_the_memory_limit_data_is_refused_as_retryable(tmp_path: Path) -> None:
    ports = allocate_ports("grpc")
    with collector(OVER_MEMORY, tmp_path, ports=ports) as running:
        with pytest.raises(AssertionError, match="span export failed"):
            send_all("grpc", f"127.0.0.1:{ports['grpc']}", make_spans(5), timeout=2)
        text = scrape(running.ports["metrics"])
        refused = metric_total(
            text, "otelcol_processor_refused_spans_total", processor="memory_limiter"
        )
        assert refused >= 20  # the SDK tried the 10 spans at least twice: it was told to retry
        assert metric_total(text, "otelcol_receiver_refused_spans_total") == refused
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == 0
        assert running.stop() == 0
