"""OTLP -> Prometheus names and labels, case by case from the specification."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelkit.collector.exporters.prometheus.translation import (
    HistogramPoint,
    NumberPoint,
    Rejected,
    TranslationOptions,
    label_name,
    metric_name,
    resource_labels,
    translate,
)
from tests.prometheus.payloads import (
    gauge_metric,
    histogram_metric,
    kvs,
    metrics_request,
    sum_metric,
)

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


def rejected_and_kept(*metrics: Metric) -> tuple[dict[str, int], list[str]]:
    """What ``translate`` refused (by reason) and the names of the series it kept."""
    rejected = Rejected()
    records = list(translate(metrics_request(*metrics), TranslationOptions(), rejected))
    return rejected.by_reason, [r.family.name for r in records]


def labelled(metric: Metric, **attrs: Any) -> Metric:
    kind = metric.WhichOneof("data")
    assert kind is not None
    getattr(metric, kind).data_points[0].attributes.extend(kvs(attrs))
    return metric


@pytest.mark.parametrize("key", ["", "__name__", "__reserved", "__"])
def test_a_point_whose_attribute_key_is_no_label_name_is_left_out_alone(key: str) -> None:
    """``{="v"}`` or a second ``__name__`` make the whole scrape unparseable; upstream's
    registry drops such a point and serves the rest."""
    reasons, kept = rejected_and_kept(labelled(gauge_metric("bad", 1.0), **{key: "v"}),
                                      gauge_metric("good", 2.0))  # fmt: skip
    assert kept == ["good"]
    assert sum(reasons.values()) == 1
    assert "is no Prometheus label name" in next(iter(reasons))


def test_keys_made_of_characters_a_label_cannot_hold_get_the_key_prefix() -> None:
    """Sanitising ``日本`` gives ``__``, which is no reserved name the sender chose."""
    assert [label_name(k) for k in ("日本", "ключ", "_", "__x")] == ["key__", "key____",
                                                                     "key_", "__x"]  # fmt: skip
    (record,) = translate(metrics_request(labelled(gauge_metric("g", 1.0), 日本="a", ü="b")),
                          TranslationOptions())  # fmt: skip
    assert {"key__": "a", "key_": "b"}.items() <= dict(record.labels).items()


def test_le_on_a_histogram_and_quantile_on_a_summary_are_refused_but_fine_elsewhere() -> None:
    summary = Metric(name="rpc")
    summary.summary.data_points.add(count=1, sum=1.0).quantile_values.add(quantile=0.5, value=1)
    reasons, kept = rejected_and_kept(
        labelled(histogram_metric("h", [1.0], [1, 0], 0.5), le="5"),
        labelled(summary, quantile="x"),
        labelled(gauge_metric("g", 1.0), le="5", quantile="x"),
    )
    assert kept == ["g"]
    assert sum(reasons.values()) == 2


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_a_counter_that_is_nan_or_negative_is_left_out_but_a_gauge_or_updown_is_not(
    value: float,
) -> None:
    reasons, kept = rejected_and_kept(sum_metric("c", value), gauge_metric("g", value),
                                      sum_metric("u", value, monotonic=False))  # fmt: skip
    assert kept == ["g", "u"]
    assert reasons == {"counter value that is NaN or negative": 1}


@pytest.mark.parametrize(("counts", "count"), [([1, 1], 7), ([5, 5], 1), ([2**64 - 1, 1], 0)])
def test_a_histogram_whose_count_is_not_its_buckets_sum_is_left_out(
    counts: list[int], count: int
) -> None:
    """Its ``+Inf`` bucket and ``_count`` would differ: OpenMetrics refuses the scrape."""
    metric = histogram_metric("h", [1.0], [0, 0], 1.0)
    metric.histogram.data_points[0].bucket_counts[:] = counts
    metric.histogram.data_points[0].count = count
    reasons, kept = rejected_and_kept(metric, gauge_metric("g", 1.0))
    assert kept == ["g"]
    assert reasons == {"histogram count is not the sum of its bucket counts": 1}


def test_a_histogram_without_buckets_keeps_its_count_in_the_inf_bucket() -> None:
    metric = histogram_metric("h", [], [], 4.0)
    metric.histogram.data_points[0].count = 5
    (record,) = translate(metrics_request(metric), TranslationOptions())
    assert isinstance(record.point, HistogramPoint)
    assert (record.point.bounds, record.point.counts, record.point.count) == ((), (5,), 5)


def test_an_exponential_histogram_at_scale_minus_10_converts() -> None:
    """Its base, 2 ** 1024, overflows a double, but its bounds need not."""
    metric = Metric(name="latency", unit="s")
    dp = metric.exponential_histogram.data_points.add(scale=-10, count=3, sum=1.0, zero_count=1)
    dp.positive.offset = -1  # the bucket (2 ** -1024, 1]
    dp.positive.bucket_counts.extend([2])
    reasons, _ = rejected_and_kept(metric)
    assert reasons == {}
    (record,) = translate(metrics_request(metric), TranslationOptions())
    assert isinstance(record.point, HistogramPoint)
    assert record.point.bounds == (0.0, 1.0) and record.point.counts == (1, 2, 0)


def test_an_exponential_histogram_whose_count_is_not_its_buckets_sum_is_left_out() -> None:
    metric = Metric(name="latency", unit="s")
    dp = metric.exponential_histogram.data_points.add(scale=0, count=99, sum=1.0, zero_count=1)
    dp.positive.bucket_counts.extend([2])
    reasons, kept = rejected_and_kept(metric)
    assert kept == [] and reasons == {
        "exponential histogram count is not the sum of its bucket counts": 1}  # fmt: skip


def test_exemplar_and_target_info_labels_that_are_no_label_names_are_left_out() -> None:
    """They are extras of other series: the series stays, without the odd label."""
    metric = sum_metric("c", 1.0)
    exemplar = metric.sum.data_points[0].exemplars.add(as_double=1.0, trace_id=b"\x01" * 16)
    exemplar.filtered_attributes.extend(kvs({"": "x", "__name__": "y", "user": "u"}))
    request = metrics_request(metric, resource={"service.name": "s", "": "x", "__name__": "y",
                                                "host.name": "h"})  # fmt: skip
    counter, info = translate(request, TranslationOptions())
    assert isinstance(counter.point, NumberPoint) and counter.point.exemplar is not None
    assert dict(counter.point.exemplar.labels) == {"trace_id": "01" * 16, "user": "u"}
    assert dict(info.labels) == {"host_name": "h", "job": "s"}
