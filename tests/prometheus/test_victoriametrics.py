"""prometheusremotewrite into a real VictoriaMetrics (Debian package ``victoria-metrics``),
read back through its Prometheus query API and raw export, as a user would."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from tests.collector.e2e.clients import metric_total, scrape, send_all
from tests.prometheus.payloads import (
    JOB,
    SECOND,
    gauge_metric,
    histogram_metric,
    metrics_request,
    send_sdk_traffic,
    sum_metric,
)
from tests.prometheus.promserver import VictoriaMetrics, remote_write, victoria_metrics
from tests.support.collector import SHIPPED_CONFIG, RunningCollector, shipped_collector
from tests.support.services import free_port

RESOURCE = {"service.name": "shop", "service.instance.id": "i-1", "host.name": "node-1"}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path) as server:
        yield server


def one(series: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(series) == 1, series
    return series[0]


def equals(expected: float) -> Any:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


def test_series_values_labels_and_timestamps_read_back(vm: VictoriaMetrics) -> None:
    at = time.time_ns() - 2 * SECOND
    request = metrics_request(
        sum_metric("orders", 42, start=at - SECOND, end=at, attrs={"region": "eu"}),
        histogram_metric("latency", [0.1, 1], [1, 2, 3], 9.0, start=at - SECOND, end=at),
        resource=RESOURCE,
    )
    telemetry = remote_write(vm, request, namespace="rw", external_labels={"cluster": "eu-1"})
    assert telemetry.total("otelcol_exporter_sent_metric_points_total") == 2
    counter = one(vm.wait_for("rw_orders_total"))
    assert counter["metric"] == {"__name__": "rw_orders_total", "region": "eu", "job": "shop",
                                 "instance": "i-1", "cluster": "eu-1",
                                 "otel_scope_name": "test.scope"}  # fmt: skip
    assert counter["value"][1] == "42"
    exported = one(vm.export("rw_orders_total"))
    assert exported["values"] == [42] and exported["timestamps"] == [at // 1_000_000]
    buckets = {s["metric"]["le"]: s["values"] for s in vm.export("rw_latency_seconds_bucket")}
    assert buckets == {"0.1": [1], "1.0": [3], "+Inf": [6]}
    assert one(vm.export("rw_latency_seconds_sum"))["values"] == [9]
    assert one(vm.export("rw_latency_seconds_count"))["values"] == [6]
    p50 = one(vm.query("histogram_quantile(0.5, rw_latency_seconds_bucket)"))
    assert 0.1 < float(p50["value"][1]) <= 1
    info = one(vm.wait_for("target_info"))["metric"]
    assert info == {"__name__": "target_info", "job": "shop", "instance": "i-1",
                    "host_name": "node-1", "cluster": "eu-1"}  # fmt: skip


def test_a_stale_marker_ends_the_series_and_a_nan_is_not_stored(vm: VictoriaMetrics) -> None:
    """A point flagged "no recorded value" becomes Prometheus' stale marker: the series
    stops answering from that instant. VictoriaMetrics drops a plain NaN sample (where
    Prometheus would store it) without refusing the rest of the request."""
    at = time.time_ns() - 3 * SECOND
    first = metrics_request(
        sum_metric("jobs", 5, start=at - SECOND, end=at),
        gauge_metric("ratio", math.nan, end=at),
        gauge_metric("depth", 7, end=at),
    )
    gone = metrics_request(sum_metric("jobs", 0, start=at - SECOND, end=at + 2 * SECOND, flags=1))
    telemetry = remote_write(vm, first, gone)
    assert telemetry.total("otelcol_exporter_sent_metric_points_total") == 4
    assert not telemetry.total("otelcol_exporter_send_failed_metric_points_total")
    one(vm.wait_for("depth", equals(7)))
    jobs = one(vm.wait_for_export("jobs_total"))
    assert jobs["values"] == [5, None], "null is how the export shows a stale marker"
    between = (at + SECOND) / SECOND
    assert one(vm.query("jobs_total", time=between))["value"][1] == "5"
    assert vm.query("jobs_total") == [], "stale: the series has ended"
    assert vm.export("ratio") == []


def shipped_config_writing_to(url: str, **settings: str) -> str:
    """collector/otelkit.yaml as a user edits it to remote-write its metrics too."""
    text = SHIPPED_CONFIG.read_text()
    exporter = f"  prometheusremotewrite:\n    endpoint: {url}\n" + "".join(
        f"    {key}: {value}\n" for key, value in settings.items()
    )
    edited = text.replace("exporters:\n  sentry:", f"exporters:\n{exporter}  sentry:")
    edited = edited.replace(
        "exporters: [prometheus]", "exporters: [prometheus, prometheusremotewrite]"
    )
    assert edited.count("prometheusremotewrite") == 2, "the shipped config changed shape"
    return edited


def test_the_shipped_config_remote_writes_red_metrics_sdk_metrics_and_the_resource(
    tmp_path: Path, vm: VictoriaMetrics
) -> None:
    text = shipped_config_writing_to(f"{vm.url}/api/v1/write")
    with shipped_collector(tmp_path, config_text=text) as running:
        send_sdk_traffic(running.ports["grpc"])
        job = f'job="{JOB}"'
        # Span metrics flush every 15 s (the connector's default).
        vm.wait_for(f"sum(traces_span_metrics_calls_total{{{job}}})", equals(13), timeout=90)
        get = f'{job},span_name="GET /orders/{{id}}",span_kind="SPAN_KIND_SERVER"'
        errors = one(vm.wait_for(
            f'traces_span_metrics_calls_total{{{get},status_code="STATUS_CODE_ERROR"}}', equals(3)
        ))  # fmt: skip
        assert errors["metric"]["http_route"] == "/orders/{id}"
        assert errors["metric"]["instance"] == "pod-1"
        vm.wait_for(f"sum(traces_span_metrics_duration_milliseconds_count{{{job}}})", equals(13))
        vm.wait_for(
            f'sum(traces_span_metrics_duration_milliseconds_bucket{{{job},le="+Inf"}})', equals(13)
        )
        counter = one(vm.wait_for(f"orders_placed_total{{{job}}}", equals(5)))
        assert counter["metric"]["payment"] == "card"
        vm.wait_for(f"queue_depth{{{job}}}", equals(17))
        vm.wait_for(f"checkout_duration_seconds_count{{{job}}}", equals(1))
        vm.wait_for(f"checkout_duration_seconds_sum{{{job}}}", equals(0.25))
        vm.wait_for(f"carts_open{{{job}}}", equals(3))
        info = one(vm.wait_for(f"target_info{{{job}}}"))["metric"]
        assert info["deployment_environment"] == "e2e" and info["instance"] == "pod-1"
        assert running.stop() == 0, running.log()
    labels = {name for series in vm.export("traces_span_metrics_calls_total")
              for name in series["metric"]}  # fmt: skip
    assert not any("url" in name for name in labels), labels


SEQUENCE_RESOURCE = Resource.create({"service.name": "worker", "service.instance.id": "w-1"})


def sequence(values: range) -> list[MetricsData]:
    """One SDK export per value of a ``sequence`` gauge, each at its own millisecond."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=SEQUENCE_RESOURCE, metric_readers=[reader])
    gauge = provider.get_meter("worker").create_gauge("sequence")
    batches = []
    for value in values:
        gauge.set(value)
        data = reader.get_metrics_data()
        assert data is not None
        batches.append(data)
        time.sleep(0.002)
    provider.shutdown()
    return batches


def send_acknowledged(running: RunningCollector, values: range) -> None:
    for data in sequence(values):
        send_all("grpc", f"127.0.0.1:{running.ports['grpc']}", metrics=data)


def all_of(values: range) -> Any:
    return lambda series: len(series) == 1 and series[0]["values"] == list(values)


def test_nothing_acknowledged_is_lost_while_victoriametrics_is_down_then_back(
    tmp_path: Path,
) -> None:
    """The collector acknowledges points while VictoriaMetrics is not there yet, and
    while it restarts; every one of them is stored, in order, once it answers again."""
    port = free_port()
    text = shipped_config_writing_to(
        f"http://127.0.0.1:{port}/api/v1/write",
        retry_on_failure="{initial_interval: 100ms, max_interval: 1s}",
    )
    with shipped_collector(tmp_path, config_text=text) as running:
        send_acknowledged(running, range(0, 10))  # nothing listens on the port yet
        with victoria_metrics(tmp_path, port=port) as vm:
            vm.wait_for_export("sequence", all_of(range(0, 10)), timeout=60)
        send_acknowledged(running, range(10, 20))  # stopped, same storage, same port
        with victoria_metrics(tmp_path, port=port) as vm:
            vm.wait_for_export("sequence", all_of(range(0, 20)), timeout=60)
            series = one(vm.export("sequence"))
        own = scrape(running.ports["telemetry"])
        assert running.stop() == 0, running.log()
    exporter = {"exporter": "prometheusremotewrite"}
    assert metric_total(own, "otelcol_exporter_sent_metric_points_total", **exporter) == 20
    assert metric_total(own, "otelcol_exporter_send_failed_metric_points_total", **exporter) == 0
    assert series["metric"] == {"__name__": "sequence", "job": "worker", "instance": "w-1",
                                "otel_scope_name": "worker"}  # fmt: skip
    assert series["timestamps"] == sorted(set(series["timestamps"]))
