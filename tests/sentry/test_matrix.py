"""A broad matrix of real and synthetic OTLP, every payload checked by Relay itself."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .app import APP_FILE, exercise, find_line
from .standin import SentryStandIn, sentry_standin
from .support import (
    PATIENT,
    random_id,
    raw_span,
    relay_check,
    run,
    sdk_tracer,
    to_request,
    trace_request,
)
from .test_stacktrace import GO, JAVA, NODE, _caught, _raise_chain, _raise_group, _text


def _all_items(standin: SentryStandIn) -> list[tuple[str, dict[str, Any]]]:
    items = [pair for r in standin.accepted() for pair in r.items()]
    for kind, payload in items:
        if kind in ("event", "transaction"):
            relay_check(payload)
    return items


@pytest.fixture(scope="module")
def app_items() -> list[tuple[str, dict[str, Any]]]:
    _, memory, provider = sdk_tracer("shop-api")
    exercise(provider)
    request = to_request(memory.get_finished_spans())
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [request])
        return _all_items(standin)


def test_real_app_requests_become_transactions_with_db_and_http_spans(app_items: Any) -> None:
    transactions = {p["transaction"]: p for kind, p in app_items if kind == "transaction"}
    assert set(transactions) == {"GET /items/{item_id}", "GET /orders/{order_id}/pay"}
    item = transactions["GET /items/{item_id}"]
    assert item["transaction_info"] == {"source": "route"}
    assert item["contexts"]["trace"]["op"] == "http.server"
    assert item["contexts"]["trace"]["status"] == "ok"
    assert (item["environment"], item["release"], item["server_name"]) == (
        "test",
        "shop-api@1.2.3",
        "web-1",
    )
    ops = {s["op"]: s for s in item["spans"]}
    assert ops["db"]["description"] == "SELECT name FROM items WHERE id = ?"
    assert ops["http.client"]["description"] == (
        "GET http://[Filtered]@inventory.internal/stock/7?api_key=[Filtered]"
    )
    assert (
        transactions["GET /orders/{order_id}/pay"]["contexts"]["trace"]["status"]
        == "internal_error"
    )
    assert item["request"]["url"] == "http://testserver/items/7"
    assert item["request"]["headers"] == {"Authorization": "[Filtered]", "X-Request-Id": "req-1"}


def test_real_exception_frames_name_the_right_files_functions_and_lines(app_items: Any) -> None:
    (event,) = [p for kind, p in app_items if kind == "event"]
    (value,) = event["exception"]["values"]
    assert (value["type"], value["value"]) == ("PaymentDeclinedError", "card declined for order 12")
    assert value["mechanism"]["handled"] is False
    frames = value["stacktrace"]["frames"]
    assert [(f["abs_path"], f["function"], f["lineno"]) for f in frames[-2:]] == [
        (APP_FILE, "pay", find_line("call-line")),
        (APP_FILE, "charge_card", find_line("raise-line")),
    ]
    assert frames[-1]["context_line"].startswith("raise PaymentDeclinedError(")
    assert frames[-1]["in_app"] is True
    library = [f for f in frames if "site-packages" in f["abs_path"]]
    assert library and all(f["in_app"] is False for f in library)
    assert any(f.get("module", "").startswith("starlette.") for f in library)


def test_error_events_link_to_their_transaction_and_carry_the_request(app_items: Any) -> None:
    (event,) = [p for kind, p in app_items if kind == "event"]
    (transaction,) = [
        p for kind, p in app_items if kind == "transaction" and "pay" in p["transaction"]
    ]
    trace = event["contexts"]["trace"]
    assert trace["trace_id"] == transaction["contexts"]["trace"]["trace_id"]
    assert trace["span_id"] == transaction["contexts"]["trace"]["span_id"]
    assert event["transaction"] == "GET /orders/{order_id}/pay"
    assert event["request"]["method"] == "GET"
    assert event["request"]["url"] == "http://testserver/orders/12/pay"
    assert event["request"]["query_string"] == "session=[Filtered]"
    assert event["request"]["headers"] == {"Authorization": "[Filtered]", "X-Request-Id": "req-1"}
    assert event["tags"] == {
        "service": "shop-api", "otel.kind": "server", "http.route": "/orders/{order_id}/pay",
        "http.method": "GET", "http.status_code": "500",
    }  # fmt: skip
    assert event["sdk"]["name"] == "otelkit.collector"
    assert event["level"] == "error" and event["platform"] == "python"


def _exception(text: str, type_: str = "Error", message: str = "failed") -> dict[str, Any]:
    return {"exception.type": type_, "exception.message": message, "exception.stacktrace": text}


def test_synthetic_matrix_passes_relay() -> None:
    tid = random_id(16)
    root = random_id(8)
    huge = "€" * 300_000
    spans = [
        raw_span(tid, root, name="GET /ünïcödé/{id}", kind=Span.SPAN_KIND_SERVER,
                 attrs={"http.method": "GET", "http.route": "/ünïcödé/{id}", "http.status_code": 500,
                        "http.url": "http://h/ünïcödé/1", "enduser.id": "用户-7"},
                 error=True, exception=_exception(_text(_caught(_raise_chain)), "KeyError", "'outer'")),
        raw_span(tid, random_id(8), root, name="huge", attrs={"blob": huge, "list": ["a", 1, 2.5, True]},
                 exception=_exception(_text(_caught(_raise_group)), "ExceptionGroup", huge)),
        raw_span(tid, random_id(8), root, name="java", exception=_exception(JAVA)),
        raw_span(tid, random_id(8), root, name="node", exception=_exception(NODE)),
        raw_span(tid, random_id(8), root, name="go", exception=_exception(GO)),
        raw_span(tid, random_id(8), root, name="no trace text", exception={"exception.type": "Boom"}),
        raw_span(tid, random_id(8), root, name="empty exception", exception={}),
        raw_span(tid, random_id(8), root, name="syntax", exception=_exception(_text(_caught(lambda: compile("(", "f.py", "exec"))))),
        raw_span(tid, random_id(8), root, name="rpc", kind=Span.SPAN_KIND_CLIENT,
                 attrs={"rpc.system": "grpc", "rpc.service": "S", "rpc.method": "M", "rpc.grpc.status_code": 14}, error=True),
        raw_span(tid, random_id(8), root, name="backwards clock", start=1_790_000_001.0, duration=-0.5),
    ]  # fmt: skip
    java = trace_request([raw_span(random_id(16), random_id(8), name="java svc", exception=_exception(JAVA))],
                         service="orders-java", **{"telemetry.sdk.language": "java"})  # fmt: skip
    node = trace_request([raw_span(random_id(16), random_id(8), name="node svc", exception=_exception(NODE))],
                         service="web", **{"telemetry.sdk.language": "nodejs"})  # fmt: skip
    odd = trace_request(
        [raw_span(random_id(16), random_id(8), name="odd", kind=Span.SPAN_KIND_SERVER, error=True,
                  attrs={"http.request.method": "GET", "http.route": "/a\nb/" + "x" * 300},
                  exception={"exception.type": "E", "exception.message": "m"})],
        service="multi\nline service " + "s" * 300,
    )  # fmt: skip
    with sentry_standin() as standin:
        # Megabytes of text to convert and check: give slow machines time to send it all.
        run({"dsn": standin.dsn, **PATIENT}, [trace_request(spans), java, node, odd])
        items = _all_items(standin)
    events = [p for kind, p in items if kind == "event"]
    assert len(events) == 11
    assert {e["platform"] for e in events} == {"python", "java", "node"}
    assert all(len(e["exception"]["values"][-1]["value"]) <= 8192 for e in events)
    transactions = [p for kind, p in items if kind == "transaction"]
    assert len(transactions) == 4
    main = next(t for t in transactions if t["transaction"] == "GET /ünïcödé/{id}")
    assert len(main["spans"]) == 9
    assert all(len(s["data"].get("blob", "")) <= 4096 for s in main["spans"])


def test_an_error_deep_in_a_request_names_the_request_it_happened_in() -> None:
    tid, root, mid, db = random_id(16), random_id(8), random_id(8), random_id(8)
    server_attrs = {"http.request.method": "POST", "http.route": "/orders", "url.path": "/orders",
                    "url.query": "password=letmein", "enduser.id": "u-42"}  # fmt: skip
    spans = [
        raw_span(tid, root, name="POST /orders", kind=Span.SPAN_KIND_SERVER, attrs=server_attrs),
        raw_span(tid, mid, root, name="place order"),
        raw_span(tid, db, mid, name="INSERT", kind=Span.SPAN_KIND_CLIENT,
                 attrs={"db.system.name": "postgresql", "db.query.text": "INSERT INTO orders"},
                 error=True, exception=_exception("", "IntegrityError", "duplicate key")),
    ]  # fmt: skip
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request(spans)])
        (event,) = [p for kind, p in _all_items(standin) if kind == "event"]
    assert event["transaction"] == "POST /orders"
    assert (
        event["request"]["url"] == "/orders"
        and event["request"]["query_string"] == "password=[Filtered]"
    )
    assert event["user"] == {"id": "u-42"}
    assert event["tags"]["http.route"] == "/orders" and event["tags"]["otel.kind"] == "client"
    assert event["contexts"]["trace"]["span_id"] == db.hex()
    assert event["contexts"]["trace"]["op"] == "db"


def test_long_stack_traces_are_parsed_whole() -> None:
    frames = "".join(
        f'  File "/srv/app/layer{i}.py", line {i + 1}, in call_{i}\n    next_layer()\n'
        for i in range(150)
    )
    text = f"Traceback (most recent call last):\n{frames}ValueError: deep\n"
    assert len(text) > 2 * 4096
    span = raw_span(
        random_id(16), random_id(8), name="deep", exception=_exception(text, "ValueError", "deep")
    )
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([span])])
        (event,) = [p for kind, p in _all_items(standin) if kind == "event"]
    got = event["exception"]["values"][0]["stacktrace"]["frames"]
    assert len(got) == 150
    assert (got[0]["function"], got[-1]["function"], got[-1]["lineno"]) == (
        "call_0",
        "call_149",
        150,
    )
    assert "exception.stacktrace" not in event["contexts"]["otel"]["attributes"]


def test_odd_attribute_values_still_make_valid_payloads() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    tid, root = random_id(16), random_id(8)
    span = raw_span(tid, root, name="odd values", kind=Span.SPAN_KIND_SERVER, error=True,
                    exception={"exception.type": "E\u0000vil", "exception.message": "nul \u0000 and bell \u0007"})  # fmt: skip
    nested = AnyValue()
    inner = nested.kvlist_value.values.add(key="inner")
    inner.value.array_value.values.add(double_value=float("nan"))
    span.attributes.extend([
        KeyValue(key="nan", value=AnyValue(double_value=float("nan"))),
        KeyValue(key="inf", value=AnyValue(double_value=float("-inf"))),
        KeyValue(key="max", value=AnyValue(int_value=2**63 - 1)),
        KeyValue(key="min", value=AnyValue(int_value=-(2**63))),
        KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00\xff")),
        KeyValue(key="empty", value=AnyValue()),
        KeyValue(key="nested", value=nested),
        KeyValue(key="", value=AnyValue(string_value="no key")),
        KeyValue(key="emoji 🎉", value=AnyValue(string_value="\U0001f389" * 10)),
    ])  # fmt: skip
    child = raw_span(tid, random_id(8), root, name="child")
    child.attributes.extend(span.attributes)
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([span, child])])
        items = dict(_all_items(standin))
    assert sorted(items) == ["event", "transaction"]
    data = items["transaction"]["spans"][0]["data"]
    assert (data["nan"], data["inf"], data["max"], data["bytes"]) == (
        "nan",
        "-inf",
        2**63 - 1,
        "00ff",
    )
