"""Metrics no app should send, through the shipped collector/otelkit.yaml: each kind in a
request beside a normal gauge, counter and histogram, with span-derived metrics on the
same scrape endpoint. A scrape either parses or loses every series, so what a user sees
is checked as their tools see it: the scrape must parse as text 0.0.4 and as OpenMetrics,
``promtool check metrics`` must read it, a real Prometheus must ingest every neighbour,
the points left out must be counted, and the collector must log no traceback.

Before the fixes beside this test, an attribute key that is empty or ``__name__`` (on a
point, an exemplar or a resource), ``le`` on a histogram, a sanitised unicode key, or two
metric types sharing a name made the scrape unparseable: Prometheus marked the target
down and stored none of the neighbours. OpenMetrics parsers also refused NaN or negative
counters and sums, a histogram whose count is not its buckets' sum, and negative bucket
bounds beside a sum; a gauge ``x_total`` replaced every series of a counter ``x``."""

from __future__ import annotations

import math
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from tests.collector.e2e.clients import metric_total, scrape, wait_until
from tests.collector.e2e.test_redaction import post
from tests.logstore.requests import to_any
from tests.prometheus.promserver import prometheus
from tests.support.collector import SHIPPED_CONFIG, shipped_collector
from tests.support.services import require_binary

NOW = 1_764_900_000_000_000_000
START = NOW - 60_000_000_000
NAN, INF = float("nan"), float("inf")
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
U64 = 2**64 - 1
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


# Building metrics ----------------------------------------------------------------------
def attributes(target: Any, attrs: dict[str, Any] | None) -> None:
    target.extend(KeyValue(key=k, value=to_any(v)) for k, v in (attrs or {}).items())


def gauge(name: str, value: Any = 1.0, unit: str = "", attrs: dict[str, Any] | None = None,
          **fields: Any) -> Metric:  # fmt: skip
    metric = Metric(name=name, unit=unit, description=fields.pop("description", ""))
    point = metric.gauge.data_points.add(time_unix_nano=fields.pop("time", NOW), **fields)
    if value is not None:
        setattr(point, "as_int" if isinstance(value, int) else "as_double", value)
    attributes(point.attributes, attrs)
    return metric


def counter(name: str, *values: float, unit: str = "", attrs: dict[str, Any] | None = None,
            monotonic: bool = True, temporality: int = CUMULATIVE, **fields: Any) -> Metric:  # fmt: skip
    """A sum with one point per value, a second apart."""
    metric = Metric(name=name, unit=unit)
    metric.sum.is_monotonic, metric.sum.aggregation_temporality = monotonic, temporality  # type: ignore[assignment]
    for i, value in enumerate(values):
        point = metric.sum.data_points.add(start_time_unix_nano=fields.get("start", START),
                                           time_unix_nano=fields.get("time", NOW + i), as_double=value)  # fmt: skip
        attributes(point.attributes, attrs)
    return metric


def histogram(name: str, bounds: Iterable[float], counts: Iterable[int], count: int | None = None,
              total: float | None = 1.0, unit: str = "s", attrs: dict[str, Any] | None = None,
              temporality: int = CUMULATIVE, **fields: Any) -> Metric:  # fmt: skip
    metric = Metric(name=name, unit=unit)
    metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    counts = list(counts)
    point = metric.histogram.data_points.add(
        start_time_unix_nano=START, time_unix_nano=NOW, explicit_bounds=list(bounds),
        bucket_counts=counts, count=sum(counts) % 2**64 if count is None else count, **fields)  # fmt: skip
    if total is not None:
        point.sum = total
    attributes(point.attributes, attrs)
    return metric


def exponential(scale: int, positive: tuple[int, list[int]] = (0, [1]),
                negative: tuple[int, list[int]] = (0, []), zero_threshold: float = 0.0,
                count: int | None = None, name: str = "hostile.exp") -> Metric:  # fmt: skip
    metric = Metric(name=name, unit="s")
    metric.exponential_histogram.aggregation_temporality = CUMULATIVE
    point = metric.exponential_histogram.data_points.add(
        start_time_unix_nano=START, time_unix_nano=NOW, scale=scale, zero_count=1,
        zero_threshold=zero_threshold, sum=2.0)  # fmt: skip
    point.positive.offset, point.negative.offset = positive[0], negative[0]
    point.positive.bucket_counts.extend(positive[1])
    point.negative.bucket_counts.extend(negative[1])
    point.count = 1 + sum(positive[1]) + sum(negative[1]) if count is None else count
    return metric


def summary(quantiles: Iterable[tuple[float, float]], total: float = 3.0, count: int = 3,
            name: str = "hostile.summary", attrs: dict[str, Any] | None = None) -> Metric:  # fmt: skip
    metric = Metric(name=name, unit="s")
    point = metric.summary.data_points.add(start_time_unix_nano=START, time_unix_nano=NOW,
                                           sum=total, count=count)  # fmt: skip
    for quantile, value in quantiles:
        point.quantile_values.add(quantile=quantile, value=value)
    attributes(point.attributes, attrs)
    return metric


def with_exemplar(metric: Metric, attrs: dict[str, Any] | None = None, **fields: Any) -> Metric:
    kind = metric.WhichOneof("data")
    assert kind is not None
    exemplar = getattr(metric, kind).data_points[0].exemplars.add(**fields)
    attributes(exemplar.filtered_attributes, attrs)
    return metric


def no_data(name: str) -> Metric:
    return Metric(name=name, unit="s", description="a metric of no kind")


# What no app should send ---------------------------------------------------------------
Build = Callable[[], list[Metric]]
HOSTILE: dict[str, Build] = {
    # values
    "NaN counter": lambda: [counter("hostile.nan", NAN)],
    "infinite counter": lambda: [counter("hostile.inf", INF)],
    "negative counter": lambda: [counter("hostile.negative", -5.0)],
    "counter going down": lambda: [counter("hostile.down", 10.0, 2.0)],
    "up-down sum of NaN and -Inf": lambda: [counter("hostile.updown", NAN, -INF, monotonic=False)],
    "delta counter with a gap": lambda: [counter("hostile.delta", 1.0, 2.0, temporality=DELTA)],
    "gauges of NaN, +Inf, -Inf": lambda: [gauge("hostile.g", v, attrs={"v": str(v)}) for v in (NAN, INF, -INF)],
    "a point with no value": lambda: [gauge("hostile.novalue", None)],
    "a metric of no kind": lambda: [no_data("hostile.nokind")],
    # times
    "start after time": lambda: [counter("hostile.start", 1.0, start=NOW + 10**12)],
    "time 0": lambda: [gauge("hostile.t0", 1.0, time=0), counter("hostile.t0c", 1.0, start=0, time=0)],
    "time at the end of time": lambda: [gauge("hostile.tmax", 1.0, time=U64),
                                        counter("hostile.tmaxc", 1.0, start=U64, time=U64)],
    # explicit histograms
    "more bucket counts than bounds": lambda: [histogram("hostile.h.long", [1.0], [1, 2, 3])],
    "fewer bucket counts than bounds": lambda: [histogram("hostile.h.short", [1.0, 2.0, 3.0], [1])],
    "no buckets, a count": lambda: [histogram("hostile.h.none", [], [], count=5)],
    "unsorted bounds": lambda: [histogram("hostile.h.unsorted", [5.0, 1.0, 3.0], [1, 1, 1, 1])],
    "duplicate bounds": lambda: [histogram("hostile.h.dup", [1.0, 1.0], [1, 1, 1])],
    "NaN bound": lambda: [histogram("hostile.h.nanb", [NAN], [1, 1])],
    "infinite bounds": lambda: [histogram("hostile.h.infb", [-INF, INF], [1, 1, 1])],
    "count above its buckets": lambda: [histogram("hostile.h.more", [1.0], [1, 1], count=7)],
    "count below its buckets": lambda: [histogram("hostile.h.less", [1.0], [5, 5], count=1)],
    "bucket counts of 2**64-1": lambda: [histogram("hostile.h.huge", [1.0], [U64, 0])],
    "bucket counts that wrap": lambda: [histogram("hostile.h.wrap", [1.0], [U64, 1])],
    "NaN sum": lambda: [histogram("hostile.h.nansum", [1.0], [1, 1], total=NAN)],
    "negative sum": lambda: [histogram("hostile.h.negsum", [1.0], [1, 1], total=-4.0)],
    "negative bounds": lambda: [histogram("hostile.h.negb", [-5.0, 0.0, 5.0], [1, 1, 1, 1], total=-3.0)],
    "no sum": lambda: [histogram("hostile.h.nosum", [1.0], [1, 1], total=None)],
    "delta histograms whose bounds change": lambda: [
        histogram("hostile.h.delta", [1.0], [1, 1], temporality=DELTA),
        histogram("hostile.h.delta", [1.0, 2.0, 3.0], [1, 1, 1, 1], temporality=DELTA)],
    # exponential histograms
    "exponential scale -10": lambda: [exponential(-10, name="hostile.exp.m10")],
    "exponential scale 20": lambda: [exponential(20, name="hostile.exp.20")],
    "exponential scale 127": lambda: [exponential(127)],
    "exponential scale -128": lambda: [exponential(-128)],
    "exponential offset 2**31-1": lambda: [exponential(20, positive=(2**31 - 1, [1, 1]))],
    "exponential offset -2**31": lambda: [exponential(0, positive=(-(2**31), [1, 1]))],
    "exponential negative buckets": lambda: [exponential(0, negative=(0, [1, 2]), name="hostile.exp.neg")],
    "exponential zero threshold NaN": lambda: [exponential(0, zero_threshold=NAN)],
    "exponential zero threshold -Inf": lambda: [exponential(0, zero_threshold=-INF)],
    "exponential count mismatch": lambda: [exponential(0, count=99, name="hostile.exp.count")],
    # summaries
    "quantile above 1": lambda: [summary([(1.5, 1.0)])],
    "quantile below 0": lambda: [summary([(-0.1, 1.0)])],
    "quantile NaN": lambda: [summary([(NAN, 1.0)])],
    "quantile values NaN and negative": lambda: [summary([(0.5, NAN), (0.9, -2.0)], name="hostile.sq")],
    "summary sum NaN": lambda: [summary([(0.5, 1.0)], total=NAN, name="hostile.ssum")],
    "summary sum negative": lambda: [summary([(0.5, 1.0)], total=-1.0, name="hostile.sneg")],
    "duplicate quantiles": lambda: [summary([(0.5, 1.0), (0.5, 2.0)], name="hostile.sdup")],
    # names
    "empty name": lambda: [gauge(""), counter("", 1.0), gauge("", unit="s")],
    "all punctuation": lambda: [gauge("...--//"), counter("_", 1.0), gauge(":"), gauge("__")],
    "10 kB name": lambda: [gauge("n" * 10_000)],
    "unicode names": lambda: [gauge("延迟"), gauge("延迟.ms"), counter("💥.count", 1.0)],
    "names with newline and quote": lambda: [gauge('a\nb"c\\d')],
    "gauge a.b, counter a_b": lambda: [gauge("a.b"), counter("a_b", 1.0)],
    "counter x, gauge x_total": lambda: [counter("x", 1.0), gauge("x_total")],
    "histogram hh, gauges hh_bucket, hh_sum, hh_count": lambda: [
        histogram("hh", [1.0], [1, 1], unit=""), gauge("hh_bucket"), gauge("hh.sum"), gauge("hh_count")],
    "summary ss, gauge ss_count": lambda: [summary([(0.5, 1.0)], name="ss"), gauge("ss_seconds_count")],
    "gauge ok.requests beside the counter": lambda: [gauge("ok.requests")],
    "gauge ok_requests_total": lambda: [gauge("ok_requests_total")],
    "counter ok.gauge": lambda: [counter("ok.gauge", 1.0)],
    "summary ok.gauge": lambda: [summary([(0.5, 1.0)], name="ok.gauge")],
    "gauge ok.latency.seconds.count": lambda: [gauge("ok.latency.seconds.count")],
    "gauge ok.latency.seconds.bucket": lambda: [gauge("ok_latency_seconds_bucket", attrs={"le": "1"})],
    "counter target.info": lambda: [counter("target.info", 1.0)],
    "gauge target_info": lambda: [gauge("target_info", 2.0, attrs={"x": "y"})],
    "metric shape shift 1: gauge": lambda: [gauge("shape.shift", unit="s")],
    "metric shape shift 2: counter": lambda: [counter("shape.shift", 1.0, unit="s")],
    "metric shape shift 3: histogram in ms": lambda: [histogram("shape.shift", [1.0], [1, 1], unit="ms")],
    "metric shape shift 4: gauge in s again": lambda: [gauge("shape.shift", 3.0, unit="s")],
    # attributes
    "empty key": lambda: [gauge("hostile.attr.empty", attrs={"": "v"})],
    "unicode keys": lambda: [gauge("hostile.attr.uni", attrs={"ключ": "a", "ü": "b", "日本": "c"})],
    "keys a.b and a_b": lambda: [gauge("hostile.attr.collide", attrs={"a.b": "1", "a_b": "2"})],
    "key __name__": lambda: [gauge("hostile.attr.name", attrs={"__name__": "other"})],
    "key __reserved": lambda: [gauge("hostile.attr.reserved", attrs={"__reserved": "x"})],
    "key le on a histogram": lambda: [histogram("hostile.attr.le", [1.0], [1, 1], attrs={"le": "5"})],
    "key quantile on a summary": lambda: [summary([(0.5, 1.0)], name="hostile.attr.q", attrs={"quantile": "x"})],
    "keys job and instance": lambda: [gauge("hostile.attr.job", attrs={"job": "other", "instance": "i"})],
    "keys that are digits or _": lambda: [gauge("hostile.attr.digit", attrs={"1": "a", "_": "b", "_1": "c"})],
    "values with newline, quote, backslash": lambda: [
        gauge("hostile.attr.escape", attrs={"v": 'a\nb"c\\d\\n\re\x00f\u2028g'})],
    "bytes values": lambda: [gauge("hostile.attr.bytes", attrs={"b": b"\xff\xfe\x00"})],
    "list and map values": lambda: [gauge("hostile.attr.any", attrs={"l": [1, "x\n"], "m": {"k": [b"\xff"]}})],
    "2000 attributes": lambda: [gauge("hostile.attr.many", attrs={f"k{i}": f"v{i}" for i in range(2000)})],
    "a 100 kB value": lambda: [gauge("hostile.attr.big", attrs={"v": "x" * 100_000})],
    # units and descriptions
    "odd units": lambda: [gauge(f"hostile.unit.{i}", unit=unit) for i, unit in enumerate(
        ["{", "}", "s/", "/s", "\n", "µs", "%/%", '"', "{a}/{b}", "By/", "1/s", " s ", "\\", "m/s/s"])],
    "descriptions with newline, backslash, quote": lambda: [
        gauge("hostile.help", description='line\nnext\\n "q" \r\x00' + "d" * 10_000)],
    # exemplars
    "exemplar with a 3-byte trace ID": lambda: [with_exemplar(counter("hostile.ex.short", 1.0),
                                                               trace_id=b"\x01\x02\x03", as_double=1.0)],
    "exemplar with a 100-byte trace ID": lambda: [with_exemplar(counter("hostile.ex.long", 1.0),
                                                                 trace_id=b"\xab" * 100, span_id=b"\x01" * 40)],
    "exemplar with odd labels": lambda: [with_exemplar(
        counter("hostile.ex.labels", 1.0), attrs={"": "x", "__name__": "y", "a\nb": 'q"\n', "le": "1"},
        trace_id=b"\x01" * 16, as_double=NAN, time_unix_nano=U64)],
    "exemplars on a histogram of NaN": lambda: [with_exemplar(
        histogram("hostile.ex.hist", [1.0], [1, 1]), attrs={"": "x"}, as_double=NAN, time_unix_nano=U64)],
    "exemplar on a gauge": lambda: [with_exemplar(gauge("hostile.ex.gauge"), trace_id=b"\x01" * 16)],
}  # fmt: skip

# Resources no app should send: their attributes label target_info and job/instance.
HOSTILE_RESOURCES: dict[str, dict[str, Any]] = {
    "resource with an empty key": {"": "x", "host.name": "h"},
    "resource with key __name__": {"__name__": "y", "host.name": "h"},
    "resource with escapes": {"host.name": 'a\n"b\\', "service.instance.id": "i\n\"2"},
    "resource keys colliding": {"a.b": "1", "a_b": "2"},
    "resource with a service.name of newlines": {"service.name": "\n\n", "service.namespace": '"'},
}  # fmt: skip


def neighbours(case: int) -> list[Metric]:
    """The normal metrics sent beside case number ``case``."""
    attrs = {"case": str(case)}
    return [
        gauge("ok.gauge", case + 0.25, attrs=attrs),
        counter("ok.requests", float(case + 1), attrs=attrs),
        histogram("ok.latency", [0.1, 1.0], [case, 1, 0], total=0.5, attrs=attrs),
    ]


def metrics_request(hostile: list[Metric], resource: dict[str, Any], case: int) -> ExportMetricsServiceRequest:  # fmt: skip
    """The hostile metrics, then the neighbours (of service ``shop``) in a resource of their own."""
    request = ExportMetricsServiceRequest()
    for attrs, metrics in ((resource, hostile), ({"service.name": "shop"}, neighbours(case))):
        rm = request.resource_metrics.add()
        attributes(rm.resource.attributes, attrs)
        sm = rm.scope_metrics.add()
        sm.scope.name, sm.scope.version = "hostile", "1"
        sm.metrics.extend(metrics)
    return request


def spans() -> ExportTraceServiceRequest:
    """Server spans whose dimensions are hostile label values, and one normal one."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attributes(rs.resource.attributes, {"service.name": "shop"})
    routes = ["/normal", 'a\n"b\\', "\x00", "r" * 5000, "/ü"]
    for number, route in enumerate(routes, 1):
        span = rs.scope_spans.add().spans.add(
            trace_id=number.to_bytes(16, "big"), span_id=number.to_bytes(8, "big"),
            kind=Span.SPAN_KIND_SERVER, name=f"GET {route}",
            start_time_unix_nano=NOW, end_time_unix_nano=NOW + 5_000_000)  # fmt: skip
        attributes(span.attributes, {"http.route": route, "http.request.method": route,
                                     "http.response.status_code": 200})  # fmt: skip
    return request


def refused_as_invalid_utf8(port: int, case: int) -> int:
    """The status of a request whose label value is no UTF-8 (protobuf strings must be):
    it cannot be parsed, so the sender must be told, not asked to retry."""
    request = metrics_request(
        [gauge("hostile.utf8", attrs={"v": "@@BAD@@"})], {"service.name": "shop"}, case
    )
    data = request.SerializeToString().replace(b"@@BAD@@", b"\xff\xfe\xc3BA\xed\xa0")
    http = urllib.request.Request(f"http://127.0.0.1:{port}/v1/metrics", data=data, method="POST",
                                  headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    try:
        with urllib.request.urlopen(http, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# Reading the scrape ----------------------------------------------------------------------
def get(port: int, accept: str = "") -> str:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def samples(text: str, openmetrics: bool = False) -> list[Sample]:
    parse = parse_openmetrics if openmetrics else parse_text
    return [sample for family in parse(text) for sample in family.samples]


def neighbour_values(found: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["case"]): s.value for s in found
            if s.name.startswith("ok_") and not s.name.endswith("_sum")
            and s.labels.get("job") == "shop" and "case" in s.labels
            and s.labels.get("le") in (None, "0.1")}  # fmt: skip


def expected_neighbours(cases: int) -> dict[tuple[str, str], float]:
    expected: dict[tuple[str, str], float] = {}
    for case in range(cases):
        expected[("ok_gauge", str(case))] = case + 0.25
        expected[("ok_requests_total", str(case))] = case + 1
        expected[("ok_latency_seconds_count", str(case))] = case + 1
        expected[("ok_latency_seconds_bucket", str(case))] = case
    return expected


def promtool_problems(text: str) -> tuple[int, str]:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60, check=False)  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).decode()[-3000:]


def shipped_with_quick_span_metrics() -> str:
    """The shipped file with span metrics flushed each second instead of every 15."""
    text = SHIPPED_CONFIG.read_text()
    assert "  spanmetrics:\n" in text
    return text.replace("  spanmetrics:\n", "  spanmetrics:\n    metrics_flush_interval: 1s\n", 1)


def test_no_hostile_metric_costs_a_scrape_or_a_neighbour(tmp_path: Path) -> None:
    builds = [(name, build, {"service.name": "shop"}) for name, build in HOSTILE.items()]
    builds += [(name, lambda: [], {"service.name": "shop", **resource})
               for name, resource in HOSTILE_RESOURCES.items()]  # fmt: skip
    expected = expected_neighbours(len(builds))
    with shipped_collector(tmp_path, config_text=shipped_with_quick_span_metrics()) as running:
        port = running.ports["prometheus"]
        with prometheus(tmp_path, [port]) as server:
            post(running.ports["http"], spans())
            for case, (_, build, resource) in enumerate(builds):
                post(running.ports["http"], metrics_request(build(), resource, case))
            assert refused_as_invalid_utf8(running.ports["http"], len(builds)) == 400

            def complete() -> bool:
                text = get(port)
                return "traces_span_metrics_calls_total" in text and all(
                    f'case="{case}"' in text for case in range(len(builds)))  # fmt: skip

            wait_until(complete, timeout=20, what="every request's series on the scrape")
            text, openmetrics = get(port), get(port, OPENMETRICS)
            assert openmetrics.endswith("# EOF\n")
            assert neighbour_values(samples(text)) == expected
            assert neighbour_values(samples(openmetrics, openmetrics=True)) == expected
            code, problems = promtool_problems(text)
            assert code in (0, 3), problems  # 3: lint advice only; 1 is a parse error
            calls = [s for s in samples(text) if s.name == "traces_span_metrics_calls_total"]
            assert {s.labels["http_route"] for s in calls} >= {"/normal", 'a\n"b\\'}

            ingested = server.wait_for("ok_gauge", lambda r: len(r) == len(builds), timeout=20)
            stored = {row["metric"]["case"]: float(row["value"][1]) for row in ingested}
            assert stored == {str(case): case + 0.25 for case in range(len(builds))}
            assert math.isclose(float(server.query("sum(ok_requests_total)")[0]["value"][1]),
                                sum(case + 1 for case in range(len(builds))))  # fmt: skip
            (target,) = server.api("targets")["activeTargets"]
            assert target["health"] == "up" and not target["lastError"], target
        telemetry = scrape(running.ports["telemetry"])
        invalid = metric_total(telemetry, "otelcol_exporter_send_failed_metric_points_total",
                               exporter="prometheus", reason="invalid")  # fmt: skip
        assert invalid > 0, "the points left out are counted"
        assert "dropped" in running.log(), "and the first drop of a minute is logged"
        assert "Traceback" not in running.log()
