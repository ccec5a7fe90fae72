"""OTLP -> Prometheus names and labels, case by case from the specification."""

from __future__ import annotations

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelkit.collector.exporters.prometheus.translation import (
    HistogramPoint,
    TranslationOptions,
    label_name,
    metric_name,
    resource_labels,
    translate,
)
from tests.prometheus.payloads import gauge_metric, kvs, metrics_request, sum_metric

NAME_CASES = [
    # (otlp name, unit, kind, monotonic, expected)
    (
        "http.server.request.duration",
        "s",
        "histogram",
        False,
        "http_server_request_duration_seconds",
    ),
    ("http.server.duration", "ms", "histogram", False, "http_server_duration_milliseconds"),
    ("process.memory.usage", "By", "gauge", False, "process_memory_usage_bytes"),
    ("system.disk.io", "KiBy", "sum", True, "system_disk_io_kibibytes_total"),
    ("cpu.utilization", "%", "gauge", False, "cpu_utilization_percent"),
    ("queue.utilization", "1", "gauge", False, "queue_utilization_ratio"),
    ("items.processed", "1", "sum", True, "items_processed_total"),
    ("network.speed", "m/s", "gauge", False, "network_speed_meters_per_second"),
    ("bytes.rate", "By/h", "gauge", False, "bytes_rate_per_hour"),
    ("orders.placed", "{order}", "sum", True, "orders_placed_total"),
    ("requests", "{request}/s", "gauge", False, "requests_per_second"),
    ("requests.total", "", "sum", True, "requests_total"),
    ("total.requests", "", "sum", True, "requests_total"),
    ("latency_seconds", "s", "histogram", False, "latency_seconds"),
    ("up.down", "", "sum", False, "up_down"),
    ("temp", "Cel", "gauge", False, "temp_celsius"),
    ("weird-name/with spaces", "", "gauge", False, "weird_name_with_spaces"),
    ("double__underscore", "", "gauge", False, "double_underscore"),
    ("9lives", "", "gauge", False, "_9lives"),
    ("ns:metric", "", "gauge", False, "ns:metric"),
    ("custom.unit", "widgets", "gauge", False, "custom_unit_widgets"),
    ("ratio.already", "1", "gauge", False, "already_ratio"),
]


@pytest.mark.parametrize(("name", "unit", "kind", "monotonic", "expected"), NAME_CASES)
def test_metric_names_follow_the_specification(
    name: str, unit: str, kind: str, monotonic: bool, expected: str
) -> None:
    assert metric_name(name, unit, kind, monotonic) == expected


def test_namespace_is_a_prefix_and_suffixes_can_be_turned_off() -> None:
    assert metric_name("http.requests", "", "sum", True, "shop") == "shop_http_requests_total"
    assert metric_name("http.requests", "s", "sum", True, "", False) == "http_requests"
    assert metric_name("9.x", "", "gauge", False, "", False) == "_9_x"


LABEL_CASES = [
    ("http.route", "http_route"),
    ("http.response.status_code", "http_response_status_code"),
    ("already_fine", "already_fine"),
    ("1st", "key_1st"),
    ("_private", "key_private"),
    ("__reserved", "__reserved"),
    ("with-dash and space", "with_dash_and_space"),
    ("ünïcode", "key_n_code"),
]


@pytest.mark.parametrize(("key", "expected"), LABEL_CASES)
def test_label_names_are_sanitised(key: str, expected: str) -> None:
    assert label_name(key) == expected


def test_colliding_attribute_keys_are_joined_in_key_order() -> None:
    request = metrics_request(gauge_metric("g", 1.0))
    dp = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    dp.attributes.extend(kvs({"b.x": "second", "a.x": "ignored-key", "b_x": "first"}))
    (record,) = list(translate(request, TranslationOptions()))
    labels = dict(record.labels)
    assert labels["b_x"] == "second;first"
    assert labels["a_x"] == "ignored-key"


def test_job_and_instance_come_from_the_service_attributes() -> None:
    resource = Resource(attributes=kvs({
        "service.name": "checkout", "service.namespace": "shop",
        "service.instance.id": "pod-7", "host.name": "node-1",
    }))  # fmt: skip
    result = resource_labels(resource, TranslationOptions())
    assert result.series == {"job": "shop/checkout", "instance": "pod-7"}
    assert dict(result.target_info or ()) == {
        "job": "shop/checkout", "instance": "pod-7", "host_name": "node-1",
    }  # fmt: skip


def test_resource_to_telemetry_conversion_puts_resource_attributes_on_every_series() -> None:
    request = metrics_request(
        gauge_metric("g", 1.0), resource={"service.name": "api", "deployment.environment": "prod"}
    )
    options = TranslationOptions(resource_to_telemetry_conversion=True)
    records = list(translate(request, options))
    assert dict(records[0].labels)["deployment_environment"] == "prod"
    assert records[-1].family.name == "target_info"


def test_const_labels_never_override_point_labels() -> None:
    request = metrics_request(sum_metric("c", 1.0, attrs={"env": "from-point"}))
    options = TranslationOptions(extra_labels={"env": "const", "region": "eu"})
    record = next(iter(translate(request, options)))
    assert dict(record.labels)["env"] == "from-point"
    assert dict(record.labels)["region"] == "eu"


def test_scope_name_and_version_become_labels() -> None:
    request = metrics_request(gauge_metric("g", 1.0), scope="my.lib")
    request.resource_metrics[0].scope_metrics[0].scope.version = "2.0"
    record = next(iter(translate(request, TranslationOptions())))
    assert ("otel_scope_name", "my.lib") in record.labels
    assert ("otel_scope_version", "2.0") in record.labels


def test_no_target_info_without_descriptive_resource_attributes() -> None:
    request = metrics_request(gauge_metric("g", 1.0), resource={"service.name": "only"})
    names = [r.family.name for r in translate(request, TranslationOptions())]
    assert names == ["g"]


def test_exponential_histogram_becomes_explicit_buckets() -> None:
    metric = Metric(name="latency", unit="s")
    dp = metric.exponential_histogram.data_points.add(
        time_unix_nano=10, scale=0, count=6, sum=9.0, zero_count=1
    )
    dp.positive.offset = 0  # buckets (1,2], (2,4]
    dp.positive.bucket_counts.extend([2, 2])
    dp.negative.offset = 0  # bucket [-2,-1)
    dp.negative.bucket_counts.extend([1])
    record = next(iter(translate(metrics_request(metric), TranslationOptions())))
    point = record.point
    assert isinstance(point, HistogramPoint)
    assert record.family.name == "latency_seconds"
    assert point.bounds == (-1.0, 0.0, 2.0, 4.0)
    assert point.counts == (1, 1, 2, 2, 0)
    assert point.count == 6
