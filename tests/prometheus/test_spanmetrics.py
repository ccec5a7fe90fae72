"""The spanmetrics connector: what reaches the metrics pipeline for the spans it sees."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import ValidationError

from otelkit.collector.connectors.spanmetrics import (
    SpanMetricsConfig,
    SpanMetricsConnector,
    safe_span_name,
)
from otelkit.collector.pdata.signals import Payload
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.prometheus.payloads import span, traces_request


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
