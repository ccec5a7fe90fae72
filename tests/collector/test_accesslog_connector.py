"""The ``accesslog`` connector: the access record of each HTTP server span, as the presets'
``otelkit.access`` logger writes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelkit.collector.connectors.accesslog import (
    EXPORTED_BY_APP,
    AccessLogConfig,
    AccessLogConnector,
    AccessRecords,
)
from otelkit.collector.connectors.accesslog import factory as accesslog_factory
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.presets import access
from tests.presets.sink import Log, Received, attributes

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")
START = 1_764_900_000_000_000_000
STABLE = {
    "http.request.method": "GET",
    "url.path": "/orders/5",
    "url.scheme": "http",
    "http.route": "/orders/{order_id}",
    "http.response.status_code": 200,
    "server.address": "shop.internal",
    "user_agent.original": "curl/8.4.0",
    "client.address": "10.0.0.7",
    "request_id": "3f0c",
    "http.response.body.size": 14,
}
OLD = {
    "http.method": "GET",
    "http.target": "/orders/5?token=hunter2",
    "http.scheme": "http",
    "http.route": "/orders/{order_id}",
    "http.status_code": 200,
    "net.peer.ip": "10.0.0.7",
    "request_id": "3f0c",
    "http.response.body.size": 14,
}
EXPECTED = {
    "http.request.method": "GET",
    "url.path": "/orders/5",
    "http.response.status_code": 200,
    "duration_ms": 31.204,
    "http.route": "/orders/{order_id}",
    "request_id": "3f0c",
    "http.response.body.size": 14,
}


def key_value(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(
    attrs: dict[str, Any],
    kind: Span.SpanKind.ValueType = Span.SPAN_KIND_SERVER,
    status: Status.StatusCode.ValueType = Status.STATUS_CODE_UNSET,
    span_id: bytes = SPAN_ID,
) -> Span:
    made = Span(
        trace_id=TRACE_ID,
        span_id=span_id,
        name="GET /orders/{order_id}",
        kind=kind,
        start_time_unix_nano=START,
        end_time_unix_nano=START + 31_204_000,
        flags=0x301,
    )
    made.attributes.extend(key_value(key, value) for key, value in attrs.items())
    made.status.code = status
    return made


def request(*spans: Span, service: str = "shop") -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    rs.resource.attributes.append(key_value("service.name", service))
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.fastapi"
    ss.spans.extend(spans)
    return out


def records(*spans: Span, **config: Any) -> list[Log]:
    logs = AccessRecords(AccessLogConfig(**config)).logs(request(*spans))
    return Received.of([logs]).logs()


def test_a_server_span_becomes_the_presets_access_record() -> None:
    logs = AccessRecords(AccessLogConfig()).logs(request(span(STABLE)))
    (rl,) = logs.resource_logs
    assert attributes(rl.resource.attributes) == {"service.name": "shop"}
    assert rl.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    (sl,) = rl.scope_logs
    assert sl.scope.name == access.ACCESS_LOGGER.name == "otelkit.access"
    (record,) = sl.log_records
    assert record.body.string_value == "GET /orders/5 200 31.2ms"
    assert (record.severity_number, record.severity_text) == (9, "INFO")
    assert (record.trace_id, record.span_id, record.flags) == (TRACE_ID, SPAN_ID, 0x01)
    assert record.time_unix_nano == START + 31_204_000
    assert record.observed_time_unix_nano >= record.time_unix_nano
    assert attributes(record.attributes) == EXPECTED


def test_the_older_conventions_give_the_same_record_without_the_query_string() -> None:
    (old,) = records(span(OLD))
    (stable,) = records(span(STABLE))
    assert old == stable
    assert "hunter2" not in str(old)


def test_with_both_conventions_the_stable_names_are_read() -> None:
    both = {**OLD, **STABLE, "http.target": "/old?x=1", "http.status_code": 999}
    (record,) = records(span(both))
    assert record.attributes == EXPECTED


def test_a_path_is_read_from_the_full_url_when_the_span_has_nothing_else() -> None:
    attrs = {**STABLE, "url.full": "https://shop.example.com/orders/5?token=hunter2"}
    del attrs["url.path"]
    (record,) = records(span(attrs))
    assert record.attributes["url.path"] == "/orders/5"
    assert record.body == "GET /orders/5 200 31.2ms"


def test_only_http_server_spans_have_records() -> None:
    spans = [
        span(STABLE, kind=Span.SPAN_KIND_CLIENT, span_id=b"\x01" * 8),
        span(STABLE, kind=Span.SPAN_KIND_INTERNAL, span_id=b"\x02" * 8),
        span(STABLE, kind=Span.SPAN_KIND_UNSPECIFIED, span_id=b"\x03" * 8),
        span({"rpc.system": "grpc", "rpc.method": "Get"}, span_id=b"\x04" * 8),
        span({"db.system": "postgresql"}, kind=Span.SPAN_KIND_CLIENT, span_id=b"\x05" * 8),
    ]
    assert records(*spans) == []
    assert [log.span_id for log in records(*spans, span(STABLE))] == [SPAN_ID.hex()]
    assert not AccessRecords(AccessLogConfig()).logs(request(*spans)).resource_logs


def test_attributes_of_a_spans_events_are_not_the_spans() -> None:
    attrs = {k: v for k, v in STABLE.items() if k != "http.request.method"}
    server = span(attrs)
    event = server.events.add(name="exception")
    event.attributes.append(key_value("http.request.method", "GET"))
    assert records(server) == []


@pytest.mark.parametrize(
    ("status", "severity"),
    [(200, "INFO"), (204, "INFO"), (302, "INFO"), (404, "WARN"), (422, "WARN"),
     (500, "ERROR"), (503, "ERROR")],
)  # fmt: skip
def test_severity_follows_the_status(status: int, severity: str) -> None:
    (record,) = records(span({**STABLE, "http.response.status_code": status}))
    assert record.severity_text == severity
    assert record.attributes["http.response.status_code"] == status


def test_an_error_span_without_a_status_is_the_servers_500() -> None:
    attrs = {k: v for k, v in STABLE.items() if k not in ("http.response.status_code",
                                                           "http.response.body.size")}  # fmt: skip
    (record,) = records(span(attrs, status=Status.STATUS_CODE_ERROR))
    assert (record.severity_text, record.attributes["http.response.status_code"]) == ("ERROR", 500)
    assert "http.response.body.size" not in record.attributes
    assert records(span(attrs)) == []  # no response, no error: no record, as in the app


@pytest.mark.parametrize(
    "status", ["99999999999999999999999", -5, 0, 1000, 70000, "1.5e400", "inf", "two hundred"]
)
def test_a_status_that_is_no_http_status_counts_as_none(status: object) -> None:
    """A number too large for an OTLP integer once broke the whole batch's records (the
    logs request did not parse); now such a span is one without a status, and the other
    spans of the batch keep theirs."""
    bad = {**STABLE, "http.response.status_code": status}
    batch = [span(bad, span_id=b"\x01" * 8), span(STABLE)]
    assert [log.body for log in records(*batch)] == ["GET /orders/5 200 31.2ms"]
    (failed,) = records(span(bad, status=Status.STATUS_CODE_ERROR))
    assert failed.attributes["http.response.status_code"] == 500


def test_health_probes_and_excluded_paths_have_none() -> None:
    probes = [span({**STABLE, "url.path": path}) for path in ("/health/live", "/health/ready")]
    assert records(*probes) == []
    assert records(span(STABLE), exclude_paths=["/orders/5"]) == []
    assert len(records(*probes, exclude_paths=[])) == 2


def test_a_span_whose_app_exports_its_own_record_has_none() -> None:
    assert EXPORTED_BY_APP == access.EXPORTED_ATTRIBUTE
    assert records(span({**STABLE, EXPORTED_BY_APP: True})) == []


def test_the_user_is_copied_and_the_client_address_only_when_configured() -> None:
    attrs = {**STABLE, "enduser.id": "42", "enduser.plan": "pro", "user.email": "a@b.c"}
    (record,) = records(span(attrs))
    assert record.attributes == {
        **EXPECTED, "enduser.id": "42", "enduser.plan": "pro", "user.email": "a@b.c"
    }  # fmt: skip
    (record,) = records(span(attrs), client_address=True)
    assert record.attributes["client.address"] == "10.0.0.7"


def test_the_connector_reads_the_batch_and_sends_records_only_when_there_are_some() -> None:
    got: list[ExportLogsServiceRequest] = []

    class Sink:
        async def consume(self, payload: Any) -> None:
            got.append(payload)

    settings = CreateSettings(ComponentID("accesslog"), Kind.CONNECTOR, SelfTelemetry())
    config = accesslog_factory.config_class.model_validate({"exclude_paths": ["/ping"]})
    connector = accesslog_factory.create(settings, config, Signal.TRACES, Signal.LOGS, Sink())
    assert isinstance(connector, AccessLogConnector) and connector.mutates_data is False
    spans = request(span(STABLE, kind=Span.SPAN_KIND_CLIENT))
    asyncio.run(connector.consume(spans))
    assert got == []
    batch = request(span(STABLE), span({**STABLE, "url.path": "/ping"}, span_id=b"\x09" * 8))
    before = batch.SerializeToString()
    asyncio.run(connector.consume(batch))
    assert batch.SerializeToString() == before
    assert [log.body for log in Received.of(got).logs()] == ["GET /orders/5 200 31.2ms"]


def test_each_record_has_its_own_method_and_route_however_many_there_are() -> None:
    """Methods and routes repeat, so their attributes are made once per value; a sender
    of thousands of distinct (or long) ones still gets each record right."""
    methods = [f"M{n % 1500}" for n in range(3000)]
    routes = [f"/r/{n}" * (n % 3 * 40 + 1) for n in range(3000)]
    made = records(
        *(
            span({**STABLE, "http.request.method": m, "http.route": r})
            for m, r in zip(methods, routes, strict=True)
        )
    )
    assert [r.attributes["http.request.method"] for r in made] == methods
    assert [r.attributes["http.route"] for r in made] == routes
    assert [str(r.body).split()[0] for r in made] == methods


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://shop.example.com/orders/5?token=hunter2#top", "/orders/5"),
        ("https://shop.example.com/a#frag?x", "/a"),
        ("https://shop.example.com/p?next=http://x/y", "/p"),
        ("https://shop.example.com", ""),
        ("https://shop.example.com?x=1", ""),
        ("http://shop.example.com:8080/a/b?c=1#d", "/a/b"),
    ],
)
def test_the_path_of_a_full_url_stops_at_its_query_or_fragment(url: str, path: str) -> None:
    attrs = {**STABLE, "url.full": url}
    del attrs["url.path"]
    (record,) = records(span(attrs))
    assert record.attributes["url.path"] == path
    assert str(record.body) == f"GET {path} 200 31.2ms"
