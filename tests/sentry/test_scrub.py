"""No planted secret leaves the collector, whatever path it takes."""

from __future__ import annotations

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.exporters.sentry.scrub import FILTERED, Scrubber

from .standin import sentry_standin
from .support import kv, logs_request, random_id, raw_span, run, trace_request

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretkeymaterial\n-----END RSA PRIVATE KEY-----"
SECRETS = {
    "hunter2-password", "sk_live_api_key_value", "eyJhbGciOiJIUzI1NiJ9.bearer", "4111 1111 1111 1111",
    "5500-0000-0000-0004", "GB82WEST12345698765432", "url-pass-w0rd", "MIIEowIBAAKCAQEAsecretkeymaterial",
    "query-token-value", "cookie-session-value", "custom-internal-id-9", "x-api-key-value",
    "mysql-pwd-value", "csrf-token-value",
}  # fmt: skip
SAFE = {"order 7 shipped", "gen_ai.usage.input_tokens"}


def _secret_attributes() -> dict[str, object]:
    return {
        "db.password": "hunter2-password",
        "api_key": "sk_live_api_key_value",
        "http.request.header.authorization": ["Bearer eyJhbGciOiJIUzI1NiJ9.bearer"],
        "http.request.header.x-api-key": ["x-api-key-value"],
        "http.request.header.cookie": ["sid=cookie-session-value"],
        "payment.note": "paid with 4111 1111 1111 1111 today",
        "payment.other": "card 5500-0000-0000-0004",
        "payout.account": "GB82WEST12345698765432",
        "db.connection": "postgresql://app:url-pass-w0rd@db:5432/shop",
        "tls.key": PEM,
        "url.full": "https://shop.example/search?q=tea&access_token=query-token-value",
        "MYSQL_PWD": "mysql-pwd-value",
        "form.csrf_token": "csrf-token-value",
        "internal.id": "custom-internal-id-9",
        "message": "order 7 shipped",
        "gen_ai.usage.input_tokens": 1234,
        "trace.count": 4111111111111111,  # numbers are not filtered by value patterns
    }


def test_every_planted_secret_is_filtered_from_every_payload() -> None:
    attrs = _secret_attributes()
    tid, root = random_id(16), random_id(8)
    exception = {
        "exception.type": "ConnectionError",
        "exception.message": "cannot connect to postgresql://app:url-pass-w0rd@db/shop with Bearer eyJhbGciOiJIUzI1NiJ9.bearer",
        "exception.stacktrace": 'Traceback (most recent call last):\n  File "/app/db.py", line 3, in connect\n    login(password="hunter2-password")\nConnectionError: failed for 4111 1111 1111 1111\n',
    }  # fmt: skip
    spans = [
        raw_span(tid, root, name="POST /pay", kind=Span.SPAN_KIND_SERVER, error=True,
                 attrs={"http.request.method": "POST", "http.route": "/pay", **attrs}, exception=exception),
        raw_span(tid, random_id(8), root, name="child", attrs=attrs),
    ]  # fmt: skip
    record = LogRecord(severity_number=17, trace_id=tid, span_id=root)
    record.body.string_value = (
        "payment failed for 4111 1111 1111 1111 (Bearer eyJhbGciOiJIUzI1NiJ9.bearer)"
    )
    record.attributes.extend(kv(k, v) for k, v in attrs.items())
    info = LogRecord(severity_number=9)
    info.body.string_value = "key follows " + PEM
    info.attributes.extend(kv(k, v) for k, v in attrs.items())
    config = {"logs": True, "scrub": {"extra_keys": ["internal.id"], "extra_patterns": []}}
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, **config}, [trace_request(spans), logs_request([record, info])])
        bodies = [r.body.decode() for r in standin.received]
        kinds = sorted(kind for r in standin.accepted() for kind, _ in r.items())
    assert kinds == ["event", "event", "log", "transaction"]
    everything = "\n".join(bodies)
    leaked = {secret for secret in SECRETS if secret in everything}
    assert not leaked
    assert all(text in everything for text in SAFE)
    assert FILTERED in everything


def test_extra_patterns_filter_matching_text() -> None:
    scrubber = Scrubber(extra_patterns=[r"EMP-\d{6}"])
    assert scrubber.value("employee EMP-123456 left") == f"employee {FILTERED} left"
    assert scrubber.pair("note", "nothing here") == "nothing here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order 1234567890123 shipped", "order 1234567890123 shipped"),  # not a card: Luhn fails
        ("trace 4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c", "trace 4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c"),
        ("https://example.com/docs", "https://example.com/docs"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: {FILTERED}"),
    ],
)
def test_value_patterns_leave_ordinary_text_alone(text: str, expected: str) -> None:
    assert Scrubber().value(text) == expected
