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
from tests.support.collector import allocate_ports, collector, downstream_config
from tests.support.overload import overload_and_recover

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
        downstream = downstream_config(["traces"], out)
        with collector(downstream, tmp_path, ports=down_ports, name="down"):
            for thread in threads:
                thread.join(60)
            assert not errors, errors
            wait_until(lambda: span_keys(read_output(out)) == want, what="every span downstream")
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelcol_receiver_refused_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_enqueue_failed_spans_total") >= 20
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == sum(want.values())


def test_overload_then_recovery_limiter_refuses_queue_drains_and_data_flows_again(
    tmp_path: Path,
) -> None:
    """The backend is down, the queue holds more and more, the memory limiter refuses and
    readiness says so; the backend returns, the queue drains, and within a bound the
    limiter accepts again (whatever memory the process keeps), readiness passes, and
    every span the SDK was told was accepted arrives."""
    result = overload_and_recover(tmp_path)
    assert "refusing data" in result.refused_readiness, result.refused_readiness
    assert result.refusing_metric == 1
    assert result.recovered_seconds < 120
    assert result.accepted_after
    assert result.delivered == result.acknowledged > 0
    assert "refusing data" in result.log and "accepting data again" in result.log
