"""The spanmetrics connector: what reaches the metrics pipeline for the spans it sees."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from otelkit.collector.connectors.spanmetrics import (
    SpanMetricsConfig,
    SpanMetricsConnector,
    safe_span_name,
)
from otelkit.collector.pdata.signals import Payload
from otelkit.collector.pdata.tracestate import MalformedThresholdError, adjusted_count
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.prometheus.payloads import span, traces_request
from tests.support.collector import shipped_collector
from tests.support.head_sampling import SeededIds, head_sampler


class Sink:
    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.refuse = False

    async def consume(self, payload: Payload) -> None:
        if self.refuse:
            raise RetryableError("full")
        assert isinstance(payload, ExportMetricsServiceRequest)
        self.requests.append(payload)


def connector(**config: Any) -> tuple[SpanMetricsConnector, Sink, SelfTelemetry]:
    telemetry = SelfTelemetry()
    settings = CreateSettings(ComponentID("spanmetrics"), Kind.CONNECTOR, telemetry)
    sink = Sink()
    return (
        SpanMetricsConnector(settings, SpanMetricsConfig.model_validate(config), sink),
        sink,
        telemetry,
    )


def points(request: ExportMetricsServiceRequest, metric: str) -> list[tuple[dict[str, str], Any]]:
    found = []
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == metric:
                    data = m.sum if m.HasField("sum") else m.histogram
                    for dp in data.data_points:
                        found.append(
                            ({kv.key: any_value_text(kv.value) for kv in dp.attributes}, dp)
                        )
    return found


def flush(conn: SpanMetricsConnector, *requests: Any) -> ExportMetricsServiceRequest:
    for request in requests:
        asyncio.run(conn.consume(request))
    return conn.build_request()


def test_calls_and_durations_per_service_name_kind_and_status() -> None:
    conn, _, _ = connector()
    request = flush(conn, traces_request(
        span("GET /users/{id}", 3), span("GET /users/{id}", 120),
        span("GET /users/{id}", 7, status=Status.STATUS_CODE_ERROR),
        span("SELECT", 1, kind=Span.SPAN_KIND_CLIENT),
    ))  # fmt: skip
    calls = {(a["span.name"], a["span.kind"], a["status.code"]): dp.as_int
             for a, dp in points(request, "traces.span.metrics.calls")}  # fmt: skip
    assert calls == {
        ("GET /users/{id}", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 2,
        ("GET /users/{id}", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"): 1,
        ("SELECT", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"): 1,
    }
    (attrs, hist), *_ = [p for p in points(request, "traces.span.metrics.duration")
                         if p[0]["status.code"] == "STATUS_CODE_UNSET" and p[0]["span.kind"] == "SPAN_KIND_SERVER"]  # fmt: skip
    assert attrs["service.name"] == "shop"
    assert list(hist.explicit_bounds) == [2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400,
                                          2000, 5000, 10000, 15000]  # fmt: skip
    assert hist.bucket_counts[1] == 1 and hist.bucket_counts[7] == 1  # 3ms <= 4, 120ms <= 200
    assert hist.count == 2 and hist.sum == pytest.approx(123)
    metric = request.resource_metrics[0].scope_metrics[0].metrics[1]
    assert metric.unit == "ms"
    assert metric.histogram.aggregation_temporality == 2  # cumulative


def test_counts_stay_cumulative_across_flushes() -> None:
    conn, _, _ = connector()
    flush(conn, traces_request(span("op", 1)))
    request = flush(conn, traces_request(span("op", 1), span("op", 1)))
    ((_, dp),) = points(request, "traces.span.metrics.calls")
    assert dp.as_int == 3


def test_delta_temporality_resets_after_each_flush() -> None:
    conn, _, _ = connector(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
    flush(conn, traces_request(span("op", 1)))
    request = flush(conn, traces_request(span("op", 1), span("op", 1)))
    ((_, dp),) = points(request, "traces.span.metrics.calls")
    assert dp.as_int == 2
    assert not flush(conn).resource_metrics, "nothing new, nothing sent"


def test_dimensions_from_span_then_resource_then_default() -> None:
    conn, _, _ = connector(dimensions=[
        {"name": "http.route"}, {"name": "deployment.environment"},
        {"name": "http.request.method", "default": "GET"}, {"name": "http.response.status_code"},
    ])  # fmt: skip
    request = flush(conn, traces_request(
        span("r", 1, attrs={"http.route": "/a", "http.response.status_code": 200,
                            "deployment.environment": "span-wins"}),
        span("r", 1, attrs={"http.route": "/b", "http.request.method": "POST"}),
        resource={"service.name": "shop", "deployment.environment": "prod"},
    ))  # fmt: skip
    attrs = sorted((a for a, _ in points(request, "traces.span.metrics.calls")),
                   key=lambda a: a["http.route"])  # fmt: skip
    assert attrs[0]["deployment.environment"] == "span-wins"
    assert attrs[0]["http.request.method"] == "GET"
    assert attrs[0]["http.response.status_code"] == "200"
    assert attrs[1]["deployment.environment"] == "prod"
    assert attrs[1]["http.request.method"] == "POST"
    assert "http.response.status_code" not in attrs[1], "no value and no default: left out"


@pytest.mark.parametrize("dimension", ["url.full", "http.url", "http.target", "db.statement",
                                       "db.query.text", "http.request.header.cookie"])  # fmt: skip
def test_raw_urls_and_query_text_are_refused_as_dimensions(dimension: str) -> None:
    with pytest.raises(ValidationError, match="cannot be a dimension"):
        SpanMetricsConfig.model_validate({"dimensions": [{"name": dimension}]})


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("GET /users/{id}", "GET /users/{id}"),
        ("GET /search?q=secret", "GET /search"),
        ("GET https://api.example.com/v1/items?token=abc", "GET /v1/items"),
        ("https://api.example.com", "/"),
        ("SELECT shop", "SELECT shop"),
    ],
)
def test_span_names_lose_query_strings_and_hosts(raw: str, safe: str) -> None:
    assert safe_span_name(raw) == safe


def test_urls_in_span_names_never_reach_a_label() -> None:
    conn, _, _ = connector()
    request = flush(conn, traces_request(span("GET https://x.test/a?token=1", 1),
                                         span("GET https://x.test/a?token=2", 1)))  # fmt: skip
    ((attrs, dp),) = points(request, "traces.span.metrics.calls")
    assert attrs["span.name"] == "GET /a" and dp.as_int == 2


def test_cardinality_limit_folds_new_series_into_one_overflow_series() -> None:
    conn, _, telemetry = connector(aggregation_cardinality_limit=3)
    request = flush(conn, traces_request(*(span(f"op{i}", 1) for i in range(10)), span("op0", 1)))
    calls = {a.get("span.name", "overflow"): (a, dp.as_int)
             for a, dp in points(request, "traces.span.metrics.calls")}  # fmt: skip
    assert set(calls) == {"op0", "op1", "op2", "overflow"}
    assert calls["op0"][1] == 2, "existing series keep counting past the limit"
    overflow_attrs, overflow_calls = calls["overflow"]
    assert overflow_attrs == {"service.name": "shop", "otel.metric.overflow": "true"}
    assert overflow_calls == 7
    assert telemetry.value("otelcol_connector_spanmetrics_overflow_spans_total",
                           {"connector": "spanmetrics"}) == 7  # fmt: skip


def test_quiet_series_expire() -> None:
    conn, _, _ = connector(metrics_expiration="1ms")
    flush(conn, traces_request(span("quiet", 1), span("busy", 1)))
    import time

    time.sleep(0.01)
    flush(conn, traces_request(span("busy", 1)))  # busy moved; quiet did not
    time.sleep(0.01)
    request = flush(conn, traces_request(span("busy", 1)))
    names = [a["span.name"] for a, _ in points(request, "traces.span.metrics.calls")]
    assert names == ["busy"]


def test_exemplars_carry_trace_and_span_ids_and_are_cleared_at_flush() -> None:
    conn, _, _ = connector(exemplars={"enabled": True, "max_per_data_point": 2})
    spans = [span("op", 5, trace_id=bytes([i]) * 16, span_id=bytes([i]) * 8) for i in range(1, 5)]
    request = flush(conn, traces_request(*spans))
    ((_, hist),) = points(request, "traces.span.metrics.duration")
    assert [ex.trace_id for ex in hist.exemplars] == [b"\x01" * 16, b"\x02" * 16]
    assert hist.exemplars[0].span_id == b"\x01" * 8 and hist.exemplars[0].as_double == 5.0
    ((_, hist),) = points(flush(conn), "traces.span.metrics.duration")
    assert not hist.exemplars


def test_seconds_unit_and_custom_buckets() -> None:
    conn, _, _ = connector(histogram={"unit": "s", "explicit": {"buckets": ["100ms", "1s"]}})
    ((_, hist),) = points(
        flush(conn, traces_request(span("op", 250))), "traces.span.metrics.duration"
    )
    assert list(hist.explicit_bounds) == [0.1, 1.0]
    assert list(hist.bucket_counts) == [0, 1, 0]
    assert hist.sum == pytest.approx(0.25)


def test_flush_sends_downstream_and_survives_a_refusal() -> None:
    conn, sink, _ = connector()

    async def run() -> None:
        await conn.consume(traces_request(span("op", 1)))
        sink.refuse = True
        await conn.flush()
        sink.refuse = False
        await conn.consume(traces_request(span("op", 1)))
        await conn.shutdown()  # final flush

    asyncio.run(run())
    ((_, dp),) = points(sink.requests[-1], "traces.span.metrics.calls")
    assert dp.as_int == 2, "counts refused at one flush arrive with the next"


def test_each_resource_keeps_its_own_series() -> None:
    conn, _, _ = connector()
    request = flush(conn, traces_request(span("op", 1), resource={"service.name": "a"}),
                    traces_request(span("op", 1), resource={"service.name": "b"}))  # fmt: skip
    services = sorted(a["service.name"] for a, _ in points(request, "traces.span.metrics.calls"))
    assert services == ["a", "b"]
    assert len(request.resource_metrics) == 2


def test_the_same_dimension_value_in_any_encoding_is_one_series() -> None:
    conn, _, _ = connector(dimensions=[{"name": "http.response.status_code"}])
    request = flush(conn, traces_request(
        span("op", 1, attrs={"http.response.status_code": 200}),
        span("op", 1, attrs={"http.response.status_code": "200"}),
    ))  # fmt: skip
    ((attrs, dp),) = points(request, "traces.span.metrics.calls")
    assert attrs["http.response.status_code"] == "200" and dp.as_int == 2


def test_long_values_and_attributes_of_events_are_told_apart() -> None:
    long_route = "/" + "x" * 300
    conn, _, _ = connector(dimensions=[{"name": "http.route"}])
    with_event = span("op", 1)
    event = with_event.events.add(name="exception")
    event.attributes.extend(span("e", 1, attrs={"http.route": "/from-event"}).attributes)
    request = flush(
        conn, traces_request(span("op", 1, attrs={"http.route": long_route}), with_event)
    )
    routes = sorted(
        a.get("http.route", "(none)") for a, _ in points(request, "traces.span.metrics.calls")
    )
    assert routes == ["(none)", long_route], "an event's attribute is not the span's"


def test_values_that_look_like_attribute_framing_do_not_confuse_the_lookup() -> None:
    conn, _, _ = connector(dimensions=[{"name": "http.route"}])
    sneaky = "\x0a\x0ahttp.route\x12\x05\x0a\x03bad"
    request = flush(
        conn, traces_request(span("op", 1, attrs={"note": sneaky, "http.route": "/ok"}))
    )
    ((attrs, _),) = points(request, "traces.span.metrics.calls")
    assert attrs["http.route"] == "/ok"


def test_a_value_ending_in_what_looks_like_a_dimension_key_counts_the_span() -> None:
    conn, _, _ = connector(dimensions=[{"name": "http.route"}])
    tail = span("op", 1, attrs={"note": "\x0a\x0ahttp.route\x12"})
    tail.ClearField("status")  # the look-alike is the last thing in the span's bytes
    request = flush(conn, traces_request(tail, span("op", 1, attrs={"http.route": "/ok"})))
    routes = sorted(
        (a.get("http.route", "(none)"), dp.as_int)
        for a, dp in points(request, "traces.span.metrics.calls")
    )
    assert routes == [("(none)", 1), ("/ok", 1)]


def test_spans_that_leave_fields_at_their_defaults_are_counted_beside_the_others() -> None:
    conn, _, _ = connector(dimensions=[{"name": "http.route"}])
    bare = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)  # no name, kind, times or status
    no_status = span("GET /a", 5, attrs={"http.route": "/a"})
    no_status.ClearField("status")
    request = flush(conn, traces_request(
        span("GET /a", 3, attrs={"http.route": "/a"}), bare, no_status,
        span("GET /a", 7, status=Status.STATUS_CODE_ERROR, attrs={"http.route": "/a"}),
    ))  # fmt: skip
    calls = {(a["span.name"], a["span.kind"], a["status.code"], a.get("http.route")): dp.as_int
             for a, dp in points(request, "traces.span.metrics.calls")}  # fmt: skip
    assert calls == {
        ("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "/a"): 2,
        ("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR", "/a"): 1,
        ("", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET", None): 1,
    }
    sums = {(a["span.name"], a["status.code"]): dp.sum
            for a, dp in points(request, "traces.span.metrics.duration")}  # fmt: skip
    assert sums == {("GET /a", "STATUS_CODE_UNSET"): pytest.approx(8),
                    ("GET /a", "STATUS_CODE_ERROR"): pytest.approx(7), ("", "STATUS_CODE_UNSET"): 0}  # fmt: skip


# Head-sampled spans: each counts as 1/p spans (its adjusted count) ----------------------
def sampled(name: str, ms: float, trace_state: str, **kw: Any) -> Span:
    out = span(name, ms, **kw)
    out.trace_state = trace_state
    return out


@pytest.mark.parametrize(
    ("trace_state", "count"),
    [
        ("ot=th:c", 4.0),  # p = 1 - 0xc/0x10 = 0.25
        ("ot=th:8", 2.0),
        ("ot=th:0", 1.0),
        ("ot=th:fffffffffffff", 2.0**56 / 0x10),  # 13 digits, p = 2^-52
        ("vendor=a:b, ot=rv:0123456789abcd;th:c;x:y ,other=1", 4.0),
        ("ot=rv:0123456789abcd", 1.0),  # no threshold: not sampled away
        ("vendor=th:c", 1.0),  # someone else's entry
        ("", 1.0),
    ],
)
def test_the_adjusted_count_of_a_trace_state(trace_state: str, count: float) -> None:
    assert adjusted_count(trace_state) == pytest.approx(count, rel=1e-12)


@pytest.mark.parametrize("th", ["", "C", "xyz", "0123456789abcde", "c-", " c"])
def test_a_malformed_threshold_is_refused(th: str) -> None:
    with pytest.raises(MalformedThresholdError):
        adjusted_count(f"ot=th:{th}")


@pytest.mark.parametrize("dimensions", [[], [{"name": "http.route"}]])
def test_a_sampled_span_counts_as_many_spans_as_it_stands_for(
    dimensions: list[dict[str, str]],
) -> None:
    """Both ways the hot path reads the trace state: from the span's bytes (with
    dimensions) and from the field (without)."""
    conn, _, _ = connector(dimensions=dimensions)
    request = flush(conn, traces_request(
        sampled("GET /a", 3, "ot=th:c"), sampled("GET /a", 3, "ot=th:c"),
        sampled("GET /a", 120, "ot=th:8"), span("GET /a", 120),
    ))  # fmt: skip
    ((_, calls),) = points(request, "traces.span.metrics.calls")
    ((_, hist),) = points(request, "traces.span.metrics.duration")
    assert calls.as_int == 4 + 4 + 2 + 1
    assert hist.count == 11 and sum(hist.bucket_counts) == 11
    assert hist.bucket_counts[1] == 8 and hist.bucket_counts[7] == 3  # 3ms <= 4, 120ms <= 200
    assert hist.sum == pytest.approx(3 * 8 + 120 * 3)


def test_fractional_adjusted_counts_are_rounded_consistently_and_never_drift() -> None:
    """p = 0.3 gives 3.33 spans per span: OTLP histogram counts are integers, so counts
    are rounded per bucket; calls always equal the histogram's count, and cumulative
    counts stay within one of the true total however many flushes there are."""
    th = f"{(1 << 56) - round(0.3 * (1 << 56)):014x}".rstrip("0")
    for temporality in ("AGGREGATION_TEMPORALITY_CUMULATIVE", "AGGREGATION_TEMPORALITY_DELTA"):
        conn, _, _ = connector(aggregation_temporality=temporality)
        reported = 0
        for _ in range(30):
            request = flush(conn, traces_request(sampled("op", 5, f"ot=th:{th}")))
            ((_, calls),) = points(request, "traces.span.metrics.calls")
            ((_, hist),) = points(request, "traces.span.metrics.duration")
            assert calls.as_int == hist.count == sum(hist.bucket_counts)
            reported = (
                calls.as_int if temporality.endswith("CUMULATIVE") else reported + calls.as_int
            )
        assert abs(reported - 30 / 0.3) <= 1, temporality


def test_a_malformed_threshold_counts_once_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn, _, telemetry = connector(dimensions=[{"name": "http.route"}])
    with caplog.at_level("WARNING", logger="otelkit.spanmetrics"):
        request = flush(conn, traces_request(
            *(sampled("op", 1, f"ot=th:{bad}") for bad in ("BAD", "123456789012345", "")),
            sampled("op", 1, "ot=th:" + "z" * 10_000),
        ))  # fmt: skip
    ((_, calls),) = points(request, "traces.span.metrics.calls")
    assert calls.as_int == 4
    assert (
        telemetry.value(
            "otelcol_connector_spanmetrics_malformed_threshold_spans_total",
            {"connector": "spanmetrics"},
        )
        == 4
    )
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1 and len(warnings[0].getMessage()) < 400


def sdk_spans(ratio: float, requests: int, seed: int = 3) -> ExportTraceServiceRequest:
    """``requests`` server spans, each with a client child, from the real SDK sampling
    with :func:`head_sampler`."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}),
        sampler=head_sampler(ratio),
        id_generator=SeededIds(seed),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    for _ in range(requests):
        with (
            tracer.start_as_current_span("GET /a", kind=SpanKind.SERVER),
            tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT),
        ):
            pass
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


@pytest.mark.parametrize("dimensions", [[], [{"name": "http.route"}]])
def test_sdk_spans_with_a_threshold_in_their_trace_state_estimate_the_true_count(
    dimensions: list[dict[str, str]],
) -> None:
    request = sdk_spans(0.25, 400)
    kept = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert kept and all(s.trace_state == "ot=th:c" for s in kept)  # children inherit it
    assert len(kept) < 0.5 * 800
    conn, _, _ = connector(dimensions=dimensions)
    counts = {a["span.kind"]: dp.as_int
              for a, dp in points(flush(conn, request), "traces.span.metrics.calls")}  # fmt: skip
    assert counts["SPAN_KIND_SERVER"] == counts["SPAN_KIND_CLIENT"] == len(kept) // 2 * 4
    assert abs(counts["SPAN_KIND_SERVER"] - 400) <= 0.2 * 400


def scraped_calls(port: int) -> dict[str, float]:
    """Span-metric calls per service, as Prometheus scrapes them."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    calls: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "traces_span_metrics_calls_total":
                service = sample.labels["service_name"]
                calls[service] = calls.get(service, 0.0) + sample.value
    return calls


def send_requests(grpc_port: int, service: str, ratio: float, requests: int) -> None:
    """An app's server spans through the SDK's OTLP exporter, head-sampled at ``ratio``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=head_sampler(ratio),
        id_generator=SeededIds(11),
    )
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=requests))
    tracer = provider.get_tracer("shop")
    for _ in range(requests):
        tracer.start_span("GET /items", kind=SpanKind.SERVER,
                          attributes={"http.route": "/items"}).end()  # fmt: skip
    provider.shutdown()


def test_head_sampled_requests_are_counted_within_ten_percent_by_the_default_collector(
    tmp_path: Path,
) -> None:
    """2,000 requests of an app sampling 1 in 4 (the SDK writes ot=th:c) and of one
    sampling nothing, through collector/otelkit.yaml, read where Prometheus scrapes."""
    with shipped_collector(tmp_path) as running:
        send_requests(running.ports["grpc"], "shop-sampled", 0.25, 2000)
        send_requests(running.ports["grpc"], "shop-all", 1.0, 2000)
        deadline = time.monotonic() + 60  # the default flush interval is 15 s
        calls = scraped_calls(running.ports["prometheus"])
        while calls.get("shop-all") != 2000 and time.monotonic() < deadline:
            time.sleep(0.5)
            calls = scraped_calls(running.ports["prometheus"])
    assert calls["shop-all"] == 2000, running.log()[-2000:]
    assert abs(calls["shop-sampled"] / 2000 - 1) <= 0.10, calls
    assert calls["shop-sampled"] % 4 == 0  # every kept request stands for four
