"""Two collectors chained through the otlp and otlphttp exporters lose nothing, even
while the downstream one is stopped, and (with a persistent queue) across a restart of
the upstream one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.collector.e2e.clients import (
    expected_logs,
    expected_spans,
    log_keys,
    make_logs,
    make_spans,
    metric_total,
    read_output,
    scrape,
    send_all,
    span_keys,
    wait_until,
)
from tests.support.collector import allocate_ports, collector, downstream_config

DOWNSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
exporters:
  file: {path: "OUT"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
    logs: {receivers: [otlp], exporters: [file]}
"""

UPSTREAM = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
processors:
  batch: {send_batch_size: 50, timeout: 50ms}
exporters:
  EXPORTER:
    ENDPOINT
    compression: gzip
    timeout: 2s
    retry_on_failure: {initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 60s}
    sending_queue: {num_consumers: 2, drain_timeout: 1sQUEUE}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [EXPORTER]}
    logs: {receivers: [otlp], processors: [batch], exporters: [EXPORTER]}
"""


def upstream_config(
    exporter: str, downstream: dict[str, int], storage: Path | None = None, encoding: str = ""
) -> str:
    if exporter == "otlp":
        endpoint = f"endpoint: 127.0.0.1:{downstream['grpc']}\n    tls: {{insecure: true}}"
    else:
        endpoint = f"endpoint: http://127.0.0.1:{downstream['http']}"
    if encoding:
        endpoint += f"\n    encoding: {encoding}"
    queue = f", storage: {storage}" if storage else ""
    return (
        UPSTREAM.replace("EXPORTER", exporter).replace("ENDPOINT", endpoint)
        .replace("QUEUE", queue)
    )  # fmt: skip


def all_arrived(out: Path, spans: object, logs: object) -> bool:
    got = read_output(out)
    return span_keys(got) == spans and log_keys(got) == logs


@pytest.mark.parametrize(
    ("exporter", "encoding"), [("otlp", ""), ("otlphttp", ""), ("otlphttp", "json")]
)
def test_chained_collectors_lose_nothing(exporter: str, encoding: str, tmp_path: Path) -> None:
    out = tmp_path / "downstream.jsonl"
    down_ports, up_ports = allocate_ports("grpc", "http"), allocate_ports("grpc")
    spans, logs = make_spans(200), make_logs(100)
    with (
        collector(DOWNSTREAM.replace("OUT", str(out)), tmp_path, ports=down_ports, name="down"),
        collector(
            upstream_config(exporter, down_ports, encoding=encoding),
            tmp_path,
            ports=up_ports,
            name="up",
        ) as up,
    ):
        send_all("grpc", f"127.0.0.1:{up_ports['grpc']}", spans, logs=logs)
        wait_until(
            lambda: all_arrived(out, expected_spans(spans), expected_logs(logs)),
            what="every span and record downstream",
        )
        # The downstream may have written the file before the upstream saw its answer.
        sent = f'otelcol_exporter_sent_spans_total{{exporter="{exporter}"}} 400.0'
        wait_until(lambda: sent in scrape(up.ports["metrics"]), what="the upstream's sent count")
        failed = [
            line
            for line in scrape(up.ports["metrics"]).splitlines()
            if line.startswith("otelcol_exporter_send_failed_spans_total{")
            and not line.endswith(" 0.0")  # every reason is exported from zero
        ]
        assert not failed


@pytest.mark.parametrize("exporter", ["otlp", "otlphttp"])
def test_data_waits_for_a_stopped_downstream(exporter: str, tmp_path: Path) -> None:
    out = tmp_path / "downstream.jsonl"
    down_ports, up_ports = allocate_ports("grpc", "http"), allocate_ports("grpc")
    before, after, logs = make_spans(20, tag="before"), make_spans(60, tag="after"), make_logs(30)
    target = f"127.0.0.1:{up_ports['grpc']}"
    downstream = DOWNSTREAM.replace("OUT", str(out))
    with collector(
        upstream_config(exporter, down_ports), tmp_path, ports=up_ports, name="up"
    ) as up:
        with collector(downstream, tmp_path, ports=down_ports, name="down-1") as down:
            send_all("grpc", target, before)
            wait_until(lambda: span_keys(read_output(out)) == expected_spans(before))
            assert down.stop() == 0
        send_all("grpc", target, after, logs=logs)
        wait_until(
            lambda: "send failed" in up.log(), what="a failed send to the stopped downstream"
        )
        assert span_keys(read_output(out)) == expected_spans(before)
        with collector(downstream, tmp_path, ports=down_ports, name="down-2"):
            want_spans = expected_spans(before) + expected_spans(after)
            wait_until(
                lambda: all_arrived(out, want_spans, expected_logs(logs)),
                what="everything, once the downstream is back",
            )
        assert up.stop() == 0


def test_persistent_queue_survives_a_restart_of_the_upstream(tmp_path: Path) -> None:
    out = tmp_path / "downstream.jsonl"
    storage = tmp_path / "queue"
    down_ports, up_ports = allocate_ports("grpc", "http"), allocate_ports("grpc")
    spans, logs = make_spans(80), make_logs(40)
    config = upstream_config("otlp", down_ports, storage)
    with collector(config, tmp_path, ports=up_ports, name="up-1") as first:
        send_all("grpc", f"127.0.0.1:{up_ports['grpc']}", spans, logs=logs)
        assert first.stop() == 0  # SIGTERM while the downstream is down
    assert list(storage.rglob("*.pb")), "nothing was persisted"
    assert read_output(out) == []
    with (
        collector(config, tmp_path, ports=up_ports, name="up-2"),
        collector(DOWNSTREAM.replace("OUT", str(out)), tmp_path, ports=down_ports, name="down"),
    ):
        want_spans, want_logs = expected_spans(spans), expected_logs(logs)
        wait_until(lambda: all_arrived(out, want_spans, want_logs), what="everything after restart")
        wait_until(lambda: not list(storage.rglob("*.pb")), what="the disk queue to empty")
    got = read_output(out)
    assert set(span_keys(got).values()) == {1}  # exactly once
    assert set(log_keys(got).values()) == {1}


DEFAULTS_UPSTREAM = """
receivers:
  otlp:
    protocols:
      http: {endpoint: "127.0.0.1:{http}"}
processors:
  batch: {}
exporters:
  otlp:
    endpoint: 127.0.0.1:DOWN
    tls: {insecure: true}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}
"""


def test_two_default_collectors_chained_lose_nothing_with_batches_over_4_mib(
    tmp_path: Path,
) -> None:
    """The batch processor's default 8,192-span batches of realistic spans pass the
    downstream receiver's default 4 MiB gRPC limit; the exporter cuts them to fit."""
    out = tmp_path / "downstream.jsonl"
    down_ports, up_ports = allocate_ports("grpc"), allocate_ports("http")
    spans = make_spans(5500, realistic=True)  # 11,000 spans, about 4.8 MB encoded
    want = expected_spans(spans)
    downstream = downstream_config(["traces"], out)
    upstream = DEFAULTS_UPSTREAM.replace("DOWN", str(down_ports["grpc"]))
    with (
        collector(downstream, tmp_path, ports=down_ports, name="down"),
        collector(upstream, tmp_path, ports=up_ports, name="up") as up,
    ):
        # One large HTTP request (20 MiB is its limit): the batch leaves at 8,192+ spans.
        send_all("http", f"127.0.0.1:{up_ports['http']}", spans, batch=11000, timeout=30)
        wait_until(lambda: span_keys(read_output(out)) == want, timeout=60,
                   what="every span downstream")  # fmt: skip
        text = scrape(up.ports["metrics"])
        assert metric_total(text, "otelcol_processor_batch_batch_size_trigger_send_total") >= 1
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == 11000
        assert metric_total(text, "otelcol_exporter_send_failed_spans_total") == 0
    assert sum(request.ByteSize() for request in read_output(out)) > 4 * 1024 * 1024


def test_sigterm_with_storage_and_the_downstream_down_closes_promptly(tmp_path: Path) -> None:
    """Everything waiting is on disk, so shutdown does not wait out a 60 s drain_timeout
    for a downstream that is down; the next start sends it all."""
    out = tmp_path / "downstream.jsonl"
    storage = tmp_path / "queue"
    down_ports, up_ports = allocate_ports("grpc", "http"), allocate_ports("grpc")
    spans = make_spans(50)
    config = upstream_config("otlp", down_ports, storage).replace("drain_timeout: 1s",
                                                                   "drain_timeout: 60s")  # fmt: skip
    with collector(config, tmp_path, ports=up_ports, name="up-1") as first:
        send_all("grpc", f"127.0.0.1:{up_ports['grpc']}", spans)
        wait_until(lambda: "send failed" in first.log(), what="a failed send")
        started = time.monotonic()
        assert first.stop(timeout=30) == 0
        took = time.monotonic() - started
    assert took < 15, f"SIGTERM took {took:.1f}s"
    assert list(storage.rglob("*.pb"))
    with (
        collector(config, tmp_path, ports=up_ports, name="up-2"),
        collector(DOWNSTREAM.replace("OUT", str(out)), tmp_path, ports=down_ports, name="down"),
    ):
        wait_until(lambda: span_keys(read_output(out)) == expected_spans(spans),
                   what="everything after the restart")  # fmt: skip
