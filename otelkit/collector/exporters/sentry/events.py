"""Span events named ``exception`` and error log records -> Sentry error events.

Each event links to its trace and span (``contexts.trace``) so Sentry shows it inside the
transaction, carries the request of the HTTP server span it happened in, the user
(``enduser.id``), the host (``server_name``), tags for filtering, and frames parsed
from ``exception.stacktrace``. Everything user-supplied passes the scrubber.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelkit.collector.exporters.sentry import stacktrace
from otelkit.collector.exporters.sentry.common import (
    CLIENT,
    KIND_NAMES,
    SDK_INFO,
    SERVER,
    ResourceInfo,
    SpanShape,
    any_value,
    attributes,
    clip,
    first,
    new_event_id,
    seconds,
    severity_of,
)
from otelkit.collector.pdata.semconv import (
    CLIENT_ADDRESS,
    DB_SYSTEM,
    HTTP_METHOD,
    HTTP_STATUS_CODE,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    URL_PATH,
    URL_SCHEME,
    USER_AGENT,
)
from otelkit.collector.runtime.scrub import FILTERED, Scrubber

Event = dict[str, Any]
_HEADER_PREFIX = "http.request.header."
_MAX_TAG = 200


@dataclass(frozen=True)
class EventContext:
    """Exporter-wide settings every event builder needs."""

    scrubber: Scrubber
    send_default_pii: bool
    now: Any  # () -> float, injectable for tests


def tag_value(value: Any) -> str:
    """Sentry tag values are one line of at most 200 characters."""
    return " ".join(str(value).split())[:_MAX_TAG] or "-"


def level_of(severity_number: int) -> str:
    """Sentry event level for an OTel severity number (1-24)."""
    if severity_number >= 21:
        return "fatal"
    if severity_number >= 17:
        return "error"
    if severity_number >= 13:
        return "warning"
    if severity_number >= 9:
        return "info"
    return "debug"


def span_error_events(
    span: Span,
    attrs: Mapping[str, Any],
    shape: SpanShape,
    resource: ResourceInfo,
    scope_name: str,
    ctx: EventContext,
    server: tuple[Mapping[str, Any], SpanShape] | None = None,
) -> list[Event]:
    """One error event per ``exception`` span event; ``server`` is the attributes and
    shape of the SERVER span the error happened under (the request and transaction)."""
    events: list[Event] = []
    for span_event in span.events:
        if span_event.name != "exception":
            continue
        exc = exception_attributes(span_event.attributes)
        handled = not _unhandled(span, exc.get("exception.escaped"))
        parsed = stacktrace.parse(
            str(exc.get("exception.stacktrace") or ""),
            str(exc.get("exception.type") or ""),
            str(exc.get("exception.message") or ""),
            handled,
        )
        when = span_event.time_unix_nano or span.end_time_unix_nano
        event = _base(resource, parsed.platform, "error", scope_name, when, ctx)
        event["exception"] = {"values": _scrub_values(parsed.values, ctx.scrubber)}
        event["contexts"] = {
            "trace": _trace_context(span.trace_id, span.span_id, span.parent_span_id, shape),
            "otel": _otel_context(attrs, resource, ctx.scrubber),
        }
        event["tags"] = _tags(resource, span.kind, attrs, ctx.scrubber)
        if server is not None:
            server_attrs, server_shape = server
            event["transaction"] = server_shape.description
            route = server_attrs.get("http.route")
            if route is not None:
                event["tags"].setdefault("http.route", tag_value(route))
            request = request_of(server_attrs, ctx)
            if request:
                event["request"] = request
        if "request" not in event and event["platform"] == "javascript":
            _add_browser_request(event, attrs, resource, ctx, page=span.kind != CLIENT)
        user = user_of(attrs, ctx) or (user_of(server[0], ctx) if server else {})
        if user:
            event["user"] = user
        events.append(event)
    return events


def log_error_event(
    record: LogRecord, resource: ResourceInfo, scope_name: str, ctx: EventContext
) -> Event:
    """An error event for one log record (a message, and an exception when it has one)."""
    attrs = attributes(record.attributes)
    level = level_of(severity_of(record) or 17)
    when = record.time_unix_nano or record.observed_time_unix_nano
    logger = str(attrs.get("logger.name") or scope_name or "")
    event = _base(resource, None, level, logger, when, ctx)
    body = body_text(record, ctx.scrubber)
    if body:
        event["logentry"] = {"formatted": clean_text(body, ctx.scrubber)}
    if "exception.type" in attrs or "exception.stacktrace" in attrs:
        exc = exception_attributes(record.attributes)
        attrs.pop("exception.stacktrace", None)  # it becomes frames; no need to send it twice
        parsed = stacktrace.parse(
            str(exc.get("exception.stacktrace") or ""),
            str(exc.get("exception.type") or ""),
            str(exc.get("exception.message") or ""),
            handled=True,
        )
        event["exception"] = {"values": _scrub_values(parsed.values, ctx.scrubber)}
        if event["platform"] == "other" and parsed.platform:
            event["platform"] = parsed.platform
    contexts: dict[str, Any] = {"otel": _otel_context(attrs, resource, ctx.scrubber)}
    if any(record.trace_id) and len(record.trace_id) == 16:
        trace: dict[str, Any] = {"type": "trace", "trace_id": record.trace_id.hex()}
        if any(record.span_id) and len(record.span_id) == 8:
            trace["span_id"] = record.span_id.hex()
        contexts["trace"] = trace
    event["contexts"] = contexts
    if event["platform"] == "javascript":
        _add_browser_request(event, attrs, resource, ctx, page=True)
    tags = _tags(resource, None, attrs, ctx.scrubber)
    event["tags"] = tags
    user = user_of(attrs, ctx)
    if user:
        event["user"] = user
    if is_finding(record):
        _as_finding(event, attrs)
    return event


FINDING = "otelkit.finding"


def is_finding(record: LogRecord) -> bool:
    """A budget breach or performance issue from the ``findings`` connector."""
    if record.event_name == FINDING:
        return True
    return any(
        kv.key == "event.name" and kv.value.string_value == FINDING for kv in record.attributes
    )


def _as_finding(event: Event, attrs: dict[str, Any]) -> None:
    """One Sentry issue per finding fingerprint: grouped by it, titled and tagged by it."""
    kind = str(attrs.get("otelkit.finding.kind") or "finding")
    fingerprint = attrs.get("otelkit.finding.fingerprint")
    if fingerprint:
        event["fingerprint"] = ["otelkit", kind, str(fingerprint)]
    title = attrs.get("otelkit.finding.title")
    if title:
        event["logentry"] = {"formatted": str(title)}
    culprit = attrs.get("otelkit.finding.culprit")
    if culprit:
        event["culprit"] = str(culprit)[:_MAX_TAG]
    event["level"] = "warning"
    tags = event["tags"]
    tags["otelkit.finding.kind"] = kind
    for key in ("otelkit.finding.type", "otelkit.budget.name"):
        if attrs.get(key) is not None:
            tags[key] = tag_value(attrs[key])


def _unhandled(span: Span, escaped: Any) -> bool:
    """Sentry's ``handled: false``: the exception escaped its span, or it failed the
    request a SERVER span served (instrumentations record those with ``escaped`` unset
    or "False", and Sentry's own web integrations report them as unhandled)."""
    if escaped is True or str(escaped).lower() == "true":
        return True
    return span.kind == SERVER and span.status.code == Status.STATUS_CODE_ERROR


def exception_attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    """``exception.*`` attributes, strings untrimmed: a stack trace is parsed whole."""
    out: dict[str, Any] = {}
    for kv in kvs:
        if kv.key.startswith("exception."):
            value = kv.value
            out[kv.key] = value.string_value if value.HasField("string_value") else any_value(value)
    return out


def clean_text(text: str, scrubber: Scrubber, limit: int = stacktrace.MAX_VALUE) -> str:
    """Free text as it may leave: scrubbed and cut to ``limit``; only a little more than
    ``limit`` is scanned, whatever the text's size (a secret cut there is cut anyway)."""
    return clip(scrubber.value(text[: limit + _SCAN_MARGIN]), limit)


_SCAN_MARGIN = 256


def body_text(record: LogRecord, scrubber: Scrubber) -> str:
    """A log body as text; a structured body is scrubbed by its keys first, then JSON."""
    body = record.body
    kind = body.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return body.string_value
    value = any_value(body)
    return value if isinstance(value, str) else dumps_text(scrubber.pair("body", value))


def dumps_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _base(
    resource: ResourceInfo,
    parsed_platform: str | None,
    level: str,
    logger: str,
    when_nanos: int,
    ctx: EventContext,
) -> Event:
    platform = resource.platform
    if platform == "other" and parsed_platform:
        platform = parsed_platform
    event: Event = {
        "event_id": new_event_id(),
        "timestamp": seconds(when_nanos) if when_nanos else ctx.now(),
        "platform": platform,
        "level": level,
        "sdk": SDK_INFO,
    }
    if logger:
        event["logger"] = logger[:64]
    if resource.environment:
        event["environment"] = resource.environment
    if resource.release:
        event["release"] = resource.release
        if resource.dist:
            event["dist"] = resource.dist
    if resource.server_name:
        event["server_name"] = resource.server_name
    return event


def _scrub_values(values: list[dict[str, Any]], scrubber: Scrubber) -> list[dict[str, Any]]:
    for value in values:
        if value.get("value"):
            value["value"] = scrubber.value(value["value"])
        for frame in value.get("stacktrace", {}).get("frames", ()):
            if "context_line" in frame:
                frame["context_line"] = scrubber.value(frame["context_line"])
    return values


def _trace_context(trace_id: bytes, span_id: bytes, parent: bytes, shape: SpanShape) -> Event:
    context: Event = {
        "type": "trace",
        "trace_id": trace_id.hex(),
        "span_id": span_id.hex(),
        "op": shape.op,
        "status": shape.status,
    }
    if parent:
        context["parent_span_id"] = parent.hex()
    return context


def _otel_context(attrs: Mapping[str, Any], resource: ResourceInfo, scrubber: Scrubber) -> Event:
    return {
        "type": "otel",
        "attributes": scrubber.mapping(dict(attrs)),
        "resource": resource.attributes,
    }


def _tags(
    resource: ResourceInfo, kind: int | None, attrs: Mapping[str, Any], scrubber: Scrubber
) -> dict[str, str]:
    tags = {"service": tag_value(resource.service)}
    if kind is not None:
        tags["otel.kind"] = KIND_NAMES.get(kind, "unspecified")
    for tag, keys in _TAG_SOURCES:
        value = first(attrs, *keys)
        if value is not None:
            tags[tag] = tag_value(scrubber.pair(keys[0], str(value)))
    return tags


_TAG_SOURCES = (
    ("http.route", ("http.route",)),
    ("http.method", HTTP_METHOD),
    ("http.status_code", HTTP_STATUS_CODE),
    ("db.system", DB_SYSTEM),
    ("messaging.system", ("messaging.system",)),
    ("rpc.service", ("rpc.service",)),
)


def request_of(attrs: Mapping[str, Any], ctx: EventContext) -> Event:
    """The HTTP request a server span handled, without credentials or secrets."""
    request: Event = {}
    method = first(attrs, *HTTP_METHOD)
    if method is not None:
        request["method"] = str(method)
    url = _full_url(attrs)
    if url:
        request.update(_url_fields(url, ctx))
    headers = _headers(attrs, ctx)
    if headers:
        request["headers"] = headers
    if ctx.send_default_pii:
        client = first(attrs, *CLIENT_ADDRESS)
        if client is not None:
            request["env"] = {"REMOTE_ADDR": str(client)}
    return request


def _url_fields(url: str, ctx: EventContext) -> Event:
    """``url`` and ``query_string`` of Sentry's request, without credentials or secrets."""
    base, _, query = ctx.scrubber.url(url).partition("?")
    return {"url": base, "query_string": query} if query else {"url": base}


def _add_browser_request(
    event: Event, attrs: Mapping[str, Any], resource: ResourceInfo, ctx: EventContext, page: bool
) -> None:
    """The page and browser an error happened in, as Sentry's JavaScript SDK reports them
    (``request.url`` and the ``User-Agent`` header, from which Sentry derives
    ``contexts.browser``). A CLIENT span's URL is what it fetched, not the page."""
    request: Event = {}
    url = first(attrs, *URL_FULL) if page else None
    if url is not None:
        request.update(_url_fields(str(url), ctx))
    agent = first(attrs, *USER_AGENT) or resource.user_agent
    if agent is not None:
        request["headers"] = {"User-Agent": ctx.scrubber.value(clip(str(agent)))}
    if request:
        event["request"] = request


def _full_url(attrs: Mapping[str, Any]) -> str | None:
    full = first(attrs, *URL_FULL)
    if full is not None:
        return str(full)
    path = first(attrs, *URL_PATH)
    if path is None:
        return None
    query = attrs.get("url.query")
    target = f"{path}?{query}" if query else str(path)
    host = first(attrs, *SERVER_ADDRESS)
    if host is None:
        return target
    scheme = first(attrs, *URL_SCHEME) or "http"
    port = first(attrs, *SERVER_PORT)
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    netloc = f"{host}:{port}" if port and not default and ":" not in str(host) else str(host)
    return f"{scheme}://{netloc}{target}"


def _headers(attrs: Mapping[str, Any], ctx: EventContext) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in attrs.items():
        if not key.startswith(_HEADER_PREFIX):
            continue
        name = key[len(_HEADER_PREFIX) :].replace("_", "-")
        if name in ("cookie", "set-cookie") and not ctx.send_default_pii:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        cleaned = ctx.scrubber.pair(key, text)
        headers["-".join(part.capitalize() for part in name.split("-"))] = cleaned
    return headers


def user_of(attrs: Mapping[str, Any], ctx: EventContext) -> Event:
    user: Event = {}
    user_id = first(attrs, "enduser.id", "user.id")
    if user_id is not None:
        user["id"] = str(ctx.scrubber.pair("enduser.id", str(user_id)))
    if ctx.send_default_pii:
        for field, keys in (
            ("email", ("user.email",)),
            ("username", ("user.name",)),
            ("ip_address", ("client.address", "http.client_ip")),
        ):
            value = first(attrs, *keys)
            if value is not None and value != FILTERED:
                user[field] = str(value)
    return user
