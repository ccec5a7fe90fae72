"""Secrets planted in every place telemetry carries text, and the markers that must not leak.

Every secret value contains a marker from :data:`SECRETS`; a destination's output leaks
when any marker appears in it. Authorization values come in every scheme, including
ones only the key rule can catch (a raw token has no shape to match).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.logstore.requests import to_any

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretkeymaterial\n"
    "-----END RSA PRIVATE KEY-----"
)
DIGEST = 'Digest username="bob", realm="api", nonce="n1", response="digest-response-secret"'
AWS4 = (
    "AWS4-HMAC-SHA256 Credential=AKIAZZSECRETCRED01/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=aws-signature-secret"
)
#: Authorization values of every scheme, as they appear in request headers.
AUTHORIZATION_VALUES = [
    "Bearer eyJhbGciOiJIUzI1NiJ9.bearer-token-secret",
    "Basic dXNlcjpiYXNpYy1zZWNyZXQ=",
    DIGEST,
    AWS4,
    "raw-header-token-without-scheme",
]
#: Key -> value of span, log record and data point attributes.
PLANTED: dict[str, Any] = {
    "db.password": "hunter2-password",
    "api_key": "sk_live_api_key_value",
    "http.request.header.authorization": AUTHORIZATION_VALUES,
    "http.request.header.proxy-authorization": ["raw-proxy-token-in-header"],
    "http.request.header.x-api-key": ["x-api-key-value"],
    "http.request.header.cookie": ["sid=cookie-session-value"],
    "authorization": "raw-authorization-attribute-token",
    "proxy_authorization": "raw-proxy-authorization-attribute",
    "upstream.request.authorization": DIGEST.replace("digest-response-secret", "digest-attr-sec"),
    "aws.authorization": AWS4.replace("aws-signature-secret", "aws-attr-signature"),
    "payment.note": "paid with 4111 1111 1111 1111 today",
    "payment.other": "card 5500-0000-0000-0004",
    "payout.account": "GB82WEST12345698765432",
    "db.connection": "postgresql://app:url-pass-w0rd@db:5432/shop",
    "tls.key": PEM,
    "url.full": "https://shop.example/search?q=tea&access_token=query-token-value",
    "MYSQL_PWD": "mysql-pwd-value",
    "form.csrf_token": "csrf-token-value",
    "db.statement": "UPDATE users SET pw='sql-pw-literal' WHERE id = 7",
    "db.query.text": "INSERT INTO accounts (name, password) VALUES ('bob', 'sql-insert-literal')",
    "message": "order 7 shipped",
    "gen_ai.usage.input_tokens": 1234,
}
#: Free text: log bodies, exception messages, span names.
PLANTED_TEXT = (
    "login failed for bob (password=body-password-value) "
    "Authorization: Digest username=bob, response=body-digest-secret "
    "then retried with Bearer eyJhbGciOiJIUzI1NiJ9.body-bearer-secret "
    "and SQL UPDATE users SET password = 'body-sql-secret' WHERE id = 1"
)
SECRETS = frozenset(
    {
        "hunter2-password", "sk_live_api_key_value", "bearer-token-secret",
        "dXNlcjpiYXNpYy1zZWNyZXQ=", "digest-response-secret", "AKIAZZSECRETCRED01",
        "aws-signature-secret", "raw-header-token-without-scheme", "raw-proxy-token-in-header",
        "x-api-key-value", "cookie-session-value", "raw-authorization-attribute-token",
        "raw-proxy-authorization-attribute", "digest-attr-sec", "aws-attr-signature",
        "4111 1111 1111 1111", "5500-0000-0000-0004", "GB82WEST12345698765432", "url-pass-w0rd",
        "MIIEowIBAAKCAQEAsecretkeymaterial", "query-token-value", "mysql-pwd-value",
        "csrf-token-value", "sql-pw-literal", "sql-insert-literal", "body-password-value",
        "body-digest-secret", "body-bearer-secret", "body-sql-secret", "span-name-token",
        "resource-cred-value",
    }
)  # fmt: skip
#: Text that must still arrive (redaction is not deletion).
SAFE = ("order 7 shipped", "login failed for bob", "UPDATE users SET pw=")


def leaked(text: str) -> set[str]:
    """The planted secrets found in ``text`` (also JSON-escaped forms of them)."""
    return {
        secret for secret in SECRETS if secret in text or secret.replace("=", "\\u003d") in text
    }


def attributes(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=to_any(value)) for key, value in values.items()]


def _resource(target: Any, service: str) -> None:
    target.attributes.extend(
        attributes({"service.name": service, "service.version": "1.0.0",
                    "deployment.credentials": "resource-cred-value"})
    )  # fmt: skip


def planted_traces(trace_id: bytes = b"\x01" * 16) -> ExportTraceServiceRequest:
    """A SERVER span with every planted attribute, an exception event carrying secrets in
    its message, stack trace and attributes, and a child DB span."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    _resource(rs.resource, "shop")
    ss = rs.scope_spans.add()
    ss.scope.name = "tests.secrets"
    span = ss.spans.add(
        trace_id=trace_id, span_id=b"\x02" * 8, name="GET /reset?token=span-name-token",
        kind=2, start_time_unix_nano=1_790_000_000_000_000_000,
        end_time_unix_nano=1_790_000_000_050_000_000,
    )  # fmt: skip
    span.attributes.extend(attributes({"http.request.method": "GET", **PLANTED}))
    span.status.code = 2
    event = span.events.add(name="exception", time_unix_nano=1_790_000_000_040_000_000)
    event.attributes.extend(
        attributes({
            "exception.type": "ConnectionError",
            "exception.message": PLANTED_TEXT,
            "exception.stacktrace": 'Traceback (most recent call last):\n  File "/app/db.py", '
            'line 3, in connect\n    login(password="hunter2-password")\n'
            f"ConnectionError: {PLANTED_TEXT}\n",
            "request.authorization": "raw-authorization-attribute-token",
        })
    )  # fmt: skip
    child = ss.spans.add(
        trace_id=trace_id, span_id=b"\x03" * 8, parent_span_id=b"\x02" * 8,
        name="UPDATE users", kind=3, start_time_unix_nano=1_790_000_000_010_000_000,
        end_time_unix_nano=1_790_000_000_020_000_000,
    )  # fmt: skip
    child.attributes.extend(attributes({"db.system.name": "postgresql", **PLANTED}))
    return request


def planted_logs(trace_id: bytes = b"\x01" * 16) -> ExportLogsServiceRequest:
    """An ERROR record (becomes a Sentry issue) and an INFO record, both with every planted
    attribute and free-text secrets in the body; and a record with a map body."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    _resource(rl.resource, "shop")
    sl = rl.scope_logs.add()
    sl.scope.name = "tests.secrets"
    for severity in (17, 9):
        record = sl.log_records.add(
            time_unix_nano=1_790_000_000_000_000_000 + severity, severity_number=severity,  # type: ignore[arg-type]
            severity_text="ERROR" if severity == 17 else "INFO", trace_id=trace_id,
            span_id=b"\x02" * 8,
        )  # fmt: skip
        record.body.string_value = PLANTED_TEXT
        record.attributes.extend(attributes(PLANTED))
    structured = sl.log_records.add(time_unix_nano=1_790_000_000_000_000_100, severity_number=9)  # type: ignore[arg-type]
    structured.body.kvlist_value.values.extend(
        attributes({"event": "login", "password": "body-password-value",
                    "headers.authorization": "raw-authorization-attribute-token"})
    )  # fmt: skip
    return request


def planted_metrics() -> ExportMetricsServiceRequest:
    """A sum whose data point attributes carry every planted string (as labels would)."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    _resource(rm.resource, "shop")
    sm = rm.scope_metrics.add()
    sm.scope.name = "tests.secrets"
    metric = sm.metrics.add(name="db.client.operations", unit="{operation}")
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = 2
    point = metric.sum.data_points.add(
        as_int=3, start_time_unix_nano=1_790_000_000_000_000_000,
        time_unix_nano=1_790_000_001_000_000_000,
    )  # fmt: skip
    strings = {k: v for k, v in PLANTED.items() if isinstance(v, str)}
    point.attributes.extend(attributes(strings))
    return request
