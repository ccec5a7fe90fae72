"""Real SDK traffic -> ``otelkit collector run`` -> a real Prometheus, scraping and
receiving remote writes, checked through Prometheus' own query API."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.prometheus.payloads import JOB, send_sdk_traffic
from tests.prometheus.promserver import Prometheus, prometheus
from tests.support.collector import allocate_ports, collector
from tests.support.services import require_binary

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
connectors:
  spanmetrics:
    metrics_flush_interval: 500ms
    exemplars: {enabled: true}
    dimensions:
      - name: http.route
      - name: http.request.method
        default: GET
exporters:
  prometheus:
    endpoint: "127.0.0.1:{scrape}"
  prometheusremotewrite:
    endpoint: "http://127.0.0.1:{prom}/api/v1/write"
    namespace: rw
    retry_on_failure: {initial_interval: 200ms, max_interval: 500ms}
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [spanmetrics]
    metrics:
      receivers: [otlp, spanmetrics]
      exporters: [prometheus, prometheusremotewrite]
"""


def value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def equals(expected: float) -> Any:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Prometheus, list[str], int]]:
    require_binary("prometheus")
    tmp_path: Path = tmp_path_factory.mktemp("e2e")
    ports = allocate_ports("grpc", "scrape", "prom")
    with (
        collector(CONFIG, tmp_path, ports=ports, wait_ports=("grpc", "scrape")) as running,
        prometheus(
            tmp_path, [ports["scrape"]], remote_write_receiver=True, port=ports["prom"]
        ) as prom,
    ):
        trace_ids = send_sdk_traffic(ports["grpc"])
        try:
            yield prom, trace_ids, ports["scrape"]
        finally:
            assert running.stop() == 0, running.log()


def test_span_metrics_are_scraped_with_the_expected_counts(
    pipeline: tuple[Prometheus, list[str], int],
) -> None:
    prom, _, _ = pipeline
    selector = f'job="{JOB}",span_name="GET /orders/{{id}}",span_kind="SPAN_KIND_SERVER"'
    ok = prom.wait_for(
        f'traces_span_metrics_calls_total{{{selector},status_code="STATUS_CODE_UNSET"}}', equals(9)
    )
    assert ok[0]["metric"]["http_route"] == "/orders/{id}"
    assert ok[0]["metric"]["http_request_method"] == "GET", "the configured default"
    assert ok[0]["metric"]["instance"] == "pod-1"
    prom.wait_for(
        f'traces_span_metrics_calls_total{{{selector},status_code="STATUS_CODE_ERROR"}}', equals(3)
    )
    prom.wait_for(
        'traces_span_metrics_calls_total{span_name="POST /orders",http_request_method="POST"}',
        equals(1),
    )
    prom.wait_for(f"sum(traces_span_metrics_duration_milliseconds_count{{{selector}}})", equals(12))
    prom.wait_for(
        f'traces_span_metrics_duration_milliseconds_bucket{{{selector},status_code="STATUS_CODE_UNSET",le="+Inf"}}',
        equals(9),
    )
    labels = {
        name
        for series in prom.api("series", **{"match[]": "traces_span_metrics_calls_total"})
        for name in series
    }
    assert not any("url" in name for name in labels), labels


def test_sdk_metrics_of_every_instrument_are_scraped(
    pipeline: tuple[Prometheus, list[str], int],
) -> None:
    prom, _, _ = pipeline
    counter = prom.wait_for(f'orders_placed_total{{job="{JOB}"}}', equals(5))
    assert counter[0]["metric"]["payment"] == "card"
    assert counter[0]["metric"]["otel_scope_name"] == "shop.orders"
    prom.wait_for(f'queue_depth{{job="{JOB}"}}', equals(17))
    prom.wait_for(f'checkout_duration_seconds_count{{job="{JOB}"}}', equals(1))
    prom.wait_for(f'checkout_duration_seconds_sum{{job="{JOB}"}}', equals(0.25))
    prom.wait_for(f'carts_open{{job="{JOB}"}}', equals(3))


def test_target_info_carries_the_resource(pipeline: tuple[Prometheus, list[str], int]) -> None:
    prom, _, _ = pipeline
    (info,) = prom.wait_for(f'target_info{{job="{JOB}"}}')
    assert info["metric"]["deployment_environment"] == "e2e"
    assert info["metric"]["instance"] == "pod-1"
    assert info["metric"]["telemetry_sdk_language"] == "python"


def test_exemplars_link_to_the_exported_traces(pipeline: tuple[Prometheus, list[str], int]) -> None:
    prom, trace_ids, _ = pipeline
    prom.wait_for("traces_span_metrics_duration_milliseconds_bucket")
    deadline = time.monotonic() + 20
    found: set[str] = set()
    while time.monotonic() < deadline and not found:
        now = time.time()
        data = prom.api("query_exemplars", query="traces_span_metrics_duration_milliseconds_bucket",
                        start=now - 300, end=now + 60)  # fmt: skip
        found = {ex["labels"]["trace_id"] for series in data for ex in series["exemplars"]}
        time.sleep(0.5)
    assert found, "no exemplars reached Prometheus"
    assert found <= set(trace_ids), found - set(trace_ids)


def test_the_same_series_arrive_by_remote_write(
    pipeline: tuple[Prometheus, list[str], int],
) -> None:
    prom, _, _ = pipeline
    prom.wait_for(f'rw_orders_placed_total{{job="{JOB}"}}', equals(5))
    prom.wait_for(f'sum(rw_traces_span_metrics_calls_total{{job="{JOB}"}})', equals(13))
    prom.wait_for(f'rw_carts_open{{job="{JOB}"}}', equals(3))


def test_the_collector_scrape_passes_promtool_and_both_parsers(
    pipeline: tuple[Prometheus, list[str], int],
) -> None:
    prom, _, scrape_port = pipeline
    prom.wait_for("traces_span_metrics_calls_total")
    url = f"http://127.0.0.1:{scrape_port}/metrics"
    text = httpx.get(url, timeout=10)
    openmetrics = httpx.get(url, headers={"Accept": "application/openmetrics-text"}, timeout=10)
    assert {f.name for f in parse_text(text.text)} >= {"traces_span_metrics_calls", "target_info"}
    families = {f.name: f for f in parse_openmetrics(openmetrics.text)}
    assert families["traces_span_metrics_calls"].type == "counter"
    result = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.content,
                            capture_output=True, timeout=30, check=False)  # fmt: skip
    problems = (result.stdout + result.stderr).decode().splitlines()
    # Span durations are in ms (the connector's default, as upstream): base-unit advice only.
    assert problems == [
        'traces_span_metrics_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
    ]
