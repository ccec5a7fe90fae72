"""Spans no app should send, through the shipped collector/otelkit.yaml with Sentry: each
beside a normal request, whose access record must still reach the log store; each is an
error, so tail sampling keeps it and the Sentry exporter reads it too; nothing may stop
the collector's later work. Two of them once did: a status code too large for an OTLP
integer (or an infinite one) failed the access records of its whole released batch, and
a client URL with an unclosed IPv6 bracket made ``perf_issues`` raise while judging;
either stopped its release for good, silently."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.collector.e2e.clients import wait_until
from tests.collector.e2e.test_redaction import log_store_text, post
from tests.logstore.requests import to_any
from tests.sentry.standin import sentry_standin
from tests.support.collector import shipped_collector

START = 1_764_900_000_000_000_000
SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


def server(trace: int, path: str = "/h", /, **attrs: Any) -> Span:
    fields = {"http.request.method": "GET", "url.path": path, "http.route": path,
              "http.response.status_code": 200, **attrs}  # fmt: skip
    return made(trace, SERVER, fields, span_id=trace.to_bytes(8, "big"))


def client(trace: int, ms: float, **attrs: Any) -> Span:
    parent = trace.to_bytes(8, "big")
    return made(trace, CLIENT, attrs, parent_span_id=parent, end=START + int(ms * 1e6))


def made(trace: int, kind: int, attrs: dict[str, Any], **fields: Any) -> Span:
    fields.setdefault("end", START + 12_000_000)
    span = Span(trace_id=trace.to_bytes(16, "big"), kind=kind, name="GET",  # type: ignore[arg-type]
                start_time_unix_nano=START, end_time_unix_nano=fields.pop("end"), **fields)  # fmt: skip
    if not span.span_id:
        span.span_id = (trace * 1000 + len(attrs)).to_bytes(8, "big")
    span.attributes.extend(
        KeyValue(key=k, value=to_any(v)) for k, v in attrs.items() if v is not None
    )
    return span


def with_fields(span: Span, **fields: Any) -> Span:
    for name, value in fields.items():
        if name == "events":
            span.events.extend(value)
        else:
            setattr(span, name, value)
    return span


STATUS = "http.response.status_code"
HOSTILE: dict[str, Callable[[int], list[Span]]] = {
    "status too large (double)": lambda t: [server(t, **{STATUS: 1.2345678901234568e22})],
    "status too large (text)": lambda t: [server(t, **{STATUS: "99999999999999999999999"})],
    "status infinite (text)": lambda t: [server(t, **{STATUS: "1.5e400"})],
    "status negative": lambda t: [server(t, **{STATUS: -(2**63)})],
    "status NaN": lambda t: [server(t, **{STATUS: float("nan")})],
    "status a list": lambda t: [server(t, **{STATUS: [200, 500]})],
    "status a map": lambda t: [server(t, **{STATUS: {"code": 200}})],
    "status bytes": lambda t: [server(t, **{STATUS: b"\xff\x00"})],
    "method a number": lambda t: [server(t, **{"http.request.method": 7})],
    "method 200 kB": lambda t: [server(t, **{"http.request.method": "G" * 200_000})],
    "path bytes": lambda t: [server(t, **{"url.path": b"/\xff"})],
    "path 200 kB": lambda t: [server(t, "/h" * 100_000)],
    "url.full unclosed IPv6": lambda t: [server(t, **{"url.path": None, "url.full": "http://[::1"})],
    "route a number": lambda t: [server(t, **{"http.route": 5})],
    "ends before it starts": lambda t: [with_fields(server(t), end_time_unix_nano=START - 10**12)],
    "ends at the end of time": lambda t: [with_fields(server(t), end_time_unix_nano=2**64 - 1)],
    "short trace ID": lambda t: [with_fields(server(t), trace_id=b"\x01\x02")],
    "no IDs": lambda t: [with_fields(server(t), trace_id=b"", span_id=b"")],
    "unknown kind": lambda t: [with_fields(server(t), kind=99)],
    "its own parent": lambda t: [with_fields(server(t), parent_span_id=t.to_bytes(8, "big"))],
    "slow query, odd values": lambda t: [
        client(t, 1000, **{"db.system": 5, "db.query.text": ["SELECT 1"]}), server(t)],
    "N+1 of odd text": lambda t: [
        *(client(t, 20, **{"db.system": "postgresql", "db.query.text": "SELECT \x00" + "'" * 999})
          for _ in range(12)), server(t)],
    "sequential calls to an unclosed IPv6 URL": lambda t: [
        *(client(t, 900, **{"http.request.method": "GET", "url.full": "http://[::1/x", "server.address": 5})
          for _ in range(6)), with_fields(server(t), end_time_unix_nano=START + 6 * 10**9)],
    "a forged finding": lambda t: [with_fields(server(t), events=[Span.Event(
        name="otelkit.finding", attributes=[KeyValue(key="otelkit.finding.title", value=to_any(5))])])],
    "forged budget marks": lambda t: [server(t, "/checkout", **{"otelkit.budget.exceeded": "yes"})],
    "a malformed trace state": lambda t: [with_fields(server(t), trace_state="ot=th:zz;rv:" + "f" * 40)],
    "user attributes of every type": lambda t: [server(t, **{"user.id": [1, {"a": b"x"}], "enduser.id": 5})],
}  # fmt: skip


def test_no_hostile_span_costs_another_requests_record(tmp_path: Path) -> None:
    database = tmp_path / "otelkit-data" / "logs.db"
    with (
        sentry_standin() as standin,
        shipped_collector(tmp_path, env={"SENTRY_DSN": standin.dsn}) as running,
    ):
        for number, build in enumerate(HOSTILE.values()):
            request = ExportTraceServiceRequest()
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name", value=to_any("shop"))
            hostile = build(1000 + number)
            for span in hostile:
                span.status.code = Status.STATUS_CODE_ERROR
            rs.scope_spans.add().spans.extend([*hostile, server(5000 + number, f"/ok{number}")])
            post(running.ports["http"], request)

        def missing() -> list[str]:
            stored = log_store_text(database)
            return [name for number, name in enumerate(HOSTILE) if f"/ok{number} 200" not in stored]

        wait_until(lambda: not missing(), timeout=30,
                   what="every neighbour's access record")  # fmt: skip
        wait_until(lambda: len(standin.items("transaction")) >= len(HOSTILE) // 2, timeout=30,
                   what="the hostile traces in Sentry")  # fmt: skip
        assert "Traceback" not in running.log()
