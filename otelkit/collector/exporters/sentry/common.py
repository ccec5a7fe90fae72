"""OTLP reading shared by events, transactions and logs: attributes, resources, semconv.

Only the fields a Sentry payload needs are read. Attribute names follow the stable
semantic conventions first and fall back to the older names older SDKs still send.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelkit import __version__
from otelkit.collector.pdata.semconv import (
    DB_QUERY,
    DB_SYSTEM,
    DEPLOYMENT_ENVIRONMENT,
    HTTP_METHOD,
    HTTP_STATUS_CODE,
    URL_FULL,
    URL_PATH,
    USER_AGENT,
)
from otelkit.collector.runtime.scrub import Scrubber

MAX_STRING = 4096
SDK_INFO = {
    "name": "otelkit.collector",
    "version": __version__,
    "integrations": ["opentelemetry"],
    "packages": [{"name": "pypi:otelkit", "version": __version__}],
}

_PLATFORMS = {
    "python": "python", "java": "java", "nodejs": "node", "go": "go", "dotnet": "csharp",
    "ruby": "ruby", "php": "php", "cpp": "native", "rust": "native", "erlang": "elixir",
    "swift": "cocoa", "webjs": "javascript", "javascript": "javascript",
}  # fmt: skip

# Span kinds (OTLP numbers) and their names, for tags.
KIND_NAMES = {
    0: "unspecified",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5

GRPC_STATUS = (
    "ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal_error", "unavailable", "data_loss",
    "unauthenticated",
)  # fmt: skip
HTTP_STATUS = {
    400: "failed_precondition", 401: "unauthenticated", 403: "permission_denied",
    404: "not_found", 409: "aborted", 429: "resource_exhausted", 499: "cancelled", 500: "internal_error",
    501: "unimplemented", 503: "unavailable", 504: "deadline_exceeded",
}  # fmt: skip


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as plain JSON-able Python (long strings trimmed).

    ``ListFields`` is the cheapest way into a upb message: one call instead of
    ``WhichOneof`` plus ``getattr`` (attribute reading is most of the per-span cost).
    """
    fields = value.ListFields()
    if not fields:
        return None
    field, raw = fields[0]
    kind = type(raw)
    if kind is str:
        return raw if len(raw) <= MAX_STRING else clip(raw)
    if kind is float:
        return raw if math.isfinite(raw) else str(raw)  # JSON has no NaN or Infinity
    if kind in _SCALARS:
        return raw
    if kind is bytes:
        return raw.hex()
    if field.name == "array_value":
        return [any_value(v) for v in raw.values]
    return {kv.key: any_value(kv.value) for kv in raw.values}


_SCALARS = (int, bool)


def clip(text: str, limit: int = MAX_STRING) -> str:
    """At most ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def first(attrs: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first key present (stable name first, then older names)."""
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


#: The log data model's severity numbers are 1-24 (0: unspecified).
MAX_SEVERITY = 24
_SEVERITY_TEXT = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13, "error": 17,
                  "critical": 21, "fatal": 21}  # fmt: skip


def severity_of(record: LogRecord) -> int:
    """The record's severity number, 1-24, or 0 when it has none.

    A number outside the data model's range is a sender's bug, read as unspecified (as the
    log store stores it): it must not make an error event, nor a log item when log items
    are off, nor reach Sentry as a severity it does not know. An unspecified number falls
    back to the severity text (``ERROR``, ``warning``...)."""
    number = record.severity_number
    if 0 < number <= MAX_SEVERITY:
        return number
    return _SEVERITY_TEXT.get(record.severity_text.lower(), 0)


def new_event_id() -> str:
    return uuid.uuid4().hex


def seconds(nanos: int) -> float:
    return nanos / 1e9


#: The resource attribute whose value becomes the event's ``dist`` (Sentry's own name for
#: it), which tells uploaded source maps of one release's builds apart.
DIST_ATTRIBUTE = "sentry.dist"


@dataclass(frozen=True)
class ResourceInfo:
    """What every event from one resource shares, computed once per resource."""

    attributes: dict[str, Any]
    service: str
    environment: str | None
    release: str | None
    server_name: str | None
    platform: str
    dist: str | None = None
    user_agent: str | None = None  # a browser's, from the web SDK's browser detector

    @classmethod
    def of(
        cls,
        resource: Resource,
        scrubber: Scrubber,
        environment: str | None = None,
        release: str | None = None,
    ) -> ResourceInfo:
        attrs = scrubber.mapping(attributes(resource.attributes))
        env = environment or first(attrs, *DEPLOYMENT_ENVIRONMENT)
        rel = release or first(attrs, "service.version")
        if rel is not None and first(attrs, "service.name") and "@" not in str(rel):
            rel = f"{attrs['service.name']}@{rel}"
        user_agent = first(attrs, *USER_AGENT)
        return cls(
            attributes=attrs,
            service=str(attrs.get("service.name") or "unknown_service"),
            environment=_sentry_name(env, 64),
            release=_sentry_name(rel, 200),
            server_name=_short(first(attrs, "host.name", "k8s.pod.name", "service.instance.id")),
            platform=_platform(attrs),
            dist=_dist(attrs.get(DIST_ATTRIBUTE)),
            user_agent=str(user_agent) if user_agent is not None else None,
        )


def _platform(attrs: Mapping[str, Any]) -> str:
    """Sentry's platform from the SDK language; a web page's SDK may only say "browser"."""
    language = str(attrs.get("telemetry.sdk.language", "")).lower()
    if language:
        return _PLATFORMS.get(language, "other")
    return "javascript" if any(key.startswith("browser.") for key in attrs) else "other"


def _dist(value: Any) -> str | None:
    """A dist Sentry accepts: at most 64 characters, no whitespace or slashes."""
    if value is None:
        return None
    text = "-".join(str(value).split()).replace("/", "-").replace("\\", "-")[:64]
    return text or None


def _sentry_name(value: Any, limit: int) -> str | None:
    """A release or environment Sentry accepts: one line, no ``/``, within its length."""
    if value is None:
        return None
    text = " ".join(str(value).split()).replace("/", "-")[:limit].strip()
    return None if text in ("", ".", "..", "latest") else text


def _short(value: Any) -> str | None:
    """Sentry caps environment/release at 64/200 chars; keep tag-sized text."""
    if value is None:
        return None
    return str(value)[:200]


@dataclass(frozen=True)
class SpanShape:
    """How Sentry shows a span: operation, description, status, transaction source."""

    op: str
    description: str
    status: str
    source: str


def span_shape(span: Span, attrs: Mapping[str, Any], scrubber: Scrubber) -> SpanShape:
    kind, name = span.kind, scrubber.value(clip(span.name))
    method = first(attrs, *HTTP_METHOD)
    status = span_status(span.status, attrs)
    if method is not None:
        return _http_shape(span, name, attrs, str(method), status, scrubber)
    db_system = first(attrs, *DB_SYSTEM)
    if db_system is not None:
        query = first(attrs, *DB_QUERY, "db.query.summary", "db.operation.name", "db.operation")  # fmt: skip
        text = scrubber.string(DB_QUERY[0], str(query)) if query is not None else name
        return SpanShape("db", text, status, "task")
    if first(attrs, "rpc.system", "rpc.service") is not None:
        service, rpc_method = attrs.get("rpc.service", ""), attrs.get("rpc.method", "")
        op = "grpc.server" if kind == SERVER else "grpc.client" if kind == CLIENT else "rpc"
        if attrs.get("rpc.system") not in (None, "grpc"):
            op = "rpc"
        text = f"{service}/{rpc_method}" if service and rpc_method else name
        return SpanShape(op, text, status, "route" if kind == SERVER else "task")
    if first(attrs, "messaging.system") is not None:
        op = {PRODUCER: "queue.publish", CONSUMER: "queue.process"}.get(kind, "message")
        return SpanShape(op, name, status, "task")
    trigger = attrs.get("faas.trigger")
    if trigger is not None:
        return SpanShape(str(trigger), name, status, "task")
    return SpanShape("default", name, status, "custom")


def _http_shape(
    span: Span, name: str, attrs: Mapping[str, Any], method: str, status: str, scrubber: Scrubber
) -> SpanShape:
    if span.kind == CLIENT:
        url = first(attrs, *URL_FULL)
        target = scrubber.url(str(url)) if url is not None else name
        return SpanShape("http.client", f"{method} {target}", status, "url")
    route = first(attrs, "http.route")
    if route is not None:
        return SpanShape("http.server", f"{method} {route}", status, "route")
    path = first(attrs, *URL_PATH)
    if path is not None:
        return SpanShape("http.server", f"{method} {str(path).split('?', 1)[0]}", status, "url")
    return SpanShape("http.server", name, status, "custom")


def span_status(status: Status, attrs: Mapping[str, Any]) -> str:
    """Sentry span status from the OTel status, then HTTP status, then gRPC code."""
    if status.code != Status.STATUS_CODE_ERROR:
        return "ok"
    http = first(attrs, *HTTP_STATUS_CODE)
    if isinstance(http, int | str) and str(http).isdigit():
        code = int(http)
        if code in HTTP_STATUS:
            return HTTP_STATUS[code]
        if 400 <= code < 500:
            return "invalid_argument"
        if code >= 500:
            return "internal_error"
    grpc = first(attrs, "rpc.grpc.status_code")
    if isinstance(grpc, int) and 0 <= grpc < len(GRPC_STATUS):
        return GRPC_STATUS[grpc]
    return "unknown"


def has_error(span: Span) -> bool:
    if span.status.code == Status.STATUS_CODE_ERROR:
        return True
    return any(event.name == "exception" for event in span.events)
