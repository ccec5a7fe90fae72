"""No planted secret leaves the collector through Sentry, whatever path it takes."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.runtime.scrub import FILTERED, Scrubber
from tests.support.secrets import (
    AUTHORIZATION_VALUES,
    leaked,
    planted_logs,
    planted_traces,
)

from .standin import sentry_standin
from .support import random_id, raw_span, run, trace_request


def test_every_planted_secret_is_filtered_from_every_payload() -> None:
    config = {"logs": True, "scrub": {"extra_keys": ["internal.id"], "extra_patterns": []}}
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, **config}, [planted_traces(), planted_logs()])
        bodies = [r.body.decode() for r in standin.received]
        kinds = sorted(kind for r in standin.accepted() for kind, _ in r.items())
    assert kinds == ["event", "event", "log", "transaction"]
    everything = "\n".join(bodies)
    assert not leaked(everything)
    assert "order 7 shipped" in everything and FILTERED in everything


@pytest.mark.parametrize("value", AUTHORIZATION_VALUES)
@pytest.mark.parametrize(
    "key",
    ["http.request.header.authorization", "http.request.header.proxy-authorization",
     "authorization", "proxy_authorization", "rpc.metadata.authorization"],
)  # fmt: skip
def test_authorization_values_of_every_scheme_are_filtered_by_key(key: str, value: str) -> None:
    scrubber = Scrubber()
    assert scrubber.pair(key, value) == FILTERED
    assert scrubber.pair(key, [value]) == [FILTERED]


def test_sql_in_db_span_descriptions_loses_sensitive_literals() -> None:
    tid, root = random_id(16), random_id(8)
    spans = [
        raw_span(tid, root, name="GET /users", kind=Span.SPAN_KIND_SERVER,
                 attrs={"http.request.method": "GET", "http.route": "/users"}),
        raw_span(tid, random_id(8), root, name="UPDATE", kind=Span.SPAN_KIND_CLIENT,
                 attrs={"db.system.name": "postgresql",
                        "db.query.text": "UPDATE users SET pw='sentry-sql-secret' WHERE id=1"}),
    ]  # fmt: skip
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request(spans)])
        (transaction,) = standin.items("transaction")
    (child,) = transaction["spans"]
    assert child["description"] == f"UPDATE users SET pw='{FILTERED}' WHERE id=1"
    assert "sentry-sql-secret" not in str(transaction)


def _pii_payloads(send_default_pii: bool) -> str:
    tid, root = random_id(16), random_id(8)
    attrs: dict[str, Any] = {
        "http.request.method": "POST", "http.route": "/pay", "url.full": "https://shop.example/pay",
        "client.address": "203.0.113.77", "user.email": "ann@example.org", "user.name": "ann",
        "http.request.header.x-forwarded-for": ["198.51.100.23"], "enduser.id": "u-1",
    }  # fmt: skip
    exception = {"exception.type": "ValueError", "exception.message": "declined"}
    spans = [
        raw_span(tid, root, name="POST /pay", kind=Span.SPAN_KIND_SERVER, error=True,
                 attrs=attrs, exception=exception),
        raw_span(tid, random_id(8), root, name="child", attrs={"client.address": "203.0.113.77"}),
    ]  # fmt: skip
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, "send_default_pii": send_default_pii}, [trace_request(spans)])
        return "\n".join(r.body.decode() for r in standin.accepted())


def test_client_address_and_user_data_follow_send_default_pii() -> None:
    personal = ("203.0.113.77", "ann@example.org", '"ann"', "198.51.100.23")
    without = _pii_payloads(False)
    assert not [value for value in personal if value in without]
    assert "u-1" in without  # the user ID is not personal data to Sentry
    with_pii = _pii_payloads(True)
    assert all(value in with_pii for value in personal[:3])


def test_extra_patterns_filter_matching_text() -> None:
    scrubber = Scrubber(extra_patterns=[r"EMP-\d{6}"])
    assert scrubber.value("employee EMP-123456 left") == f"employee {FILTERED} left"
    assert scrubber.pair("note", "nothing here") == "nothing here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order 1234567890123 shipped", "order 1234567890123 shipped"),  # not a card: Luhn fails
        # An access line: a Luhn-valid run of 17 digits across path, status and duration.
        ("GET /orders/999622830388 200 31.2ms", "GET /orders/999622830388 200 31.2ms"),
        (
            "call 555 0199 8765 4321 9",
            "call 555 0199 8765 4321 9",
        ),  # Luhn-valid, not a card's groups
        ("trace 4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c", "trace 4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c"),
        ("https://example.com/docs", "https://example.com/docs"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: {FILTERED}"),
    ],
)
def test_value_patterns_leave_ordinary_text_alone(text: str, expected: str) -> None:
    assert Scrubber().value(text) == expected


@pytest.mark.parametrize(
    "card",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005",
     "378282246310005", "6011 0009 9013 9424"],
)  # fmt: skip
def test_card_numbers_as_they_are_written_are_masked(card: str) -> None:
    assert Scrubber().value(f"paid with {card} today") == f"paid with {FILTERED} today"
    assert Scrubber().value(f"GET /pay/{card.replace(' ', '')} 200 3.1ms").count(FILTERED) == 1
