"""otelkit's ASGI server-span middleware for FastAPI: the instrumentation package's spans,
for a fraction of its CPU.

It writes what ``opentelemetry-instrumentation-fastapi`` (with otelkit's options: no
``receive``/``send`` spans) writes: the same span name, kind, attributes (stable HTTP
conventions, the old ones or both, as ``OTEL_SEMCONV_STABILITY_OPT_IN`` says), status
rules, exception events, context extraction (trace context and baggage through the global
propagator), excluded URLs, captured and redacted headers, server request hook, response
propagator, instrumentation scope, and ``BackgroundTask`` spans; the golden tests compare
the two field by field. It is wrapped into the app exactly where the instrumentation
package puts its middleware, so exception handlers see the same span.

What it leaves out is the per-request cost that buys nothing when the collector derives
request metrics from spans: the ``http.server.*`` metric measurements (ask for them with
``OTELKIT_HTTP_SERVER_METRICS=true``, which uses the instrumentation package), a second
setting of every attribute, and header scans repeated once per header looked up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

from opentelemetry import context, trace
from opentelemetry.instrumentation._semconv import (
    _get_schema_url,
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _report_new,
    _report_old,
    _StabilityMode,
)
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.instrumentation.utils import (
    http_status_to_status_code,
    is_http_instrumentation_enabled,
)
from opentelemetry.metrics import NoOpMeter
from opentelemetry.propagate import extract
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import (
    ExcludeList,
    SanitizeValue,
    detect_synthetic_user_agent,
    normalise_request_header_name,
    normalise_response_header_name,
    redact_url,
    sanitize_method,
)

_logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Any]
Headers = dict[str, list[str]]


def _decode(value: bytes) -> str:
    """As the instrumentation package decodes header names and values."""
    try:
        return value.decode("utf-8")
    except ValueError:
        return value.decode("unicode_escape")


def decoded_headers(scope: Mapping[str, Any]) -> Headers:
    """Every header, decoded once: name (lower case) -> values in order."""
    headers: Headers = {}
    for name, value in scope.get("headers") or ():
        key = _decode(name).lower()
        values = headers.get(key)
        if values is None:
            headers[key] = [_decode(value)]
        else:
            values.append(_decode(value))
    return headers


class _HeadersGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: Headers) -> list[str]:
        return list(carrier)


_GETTER = _HeadersGetter()
# What ``sanitize_method`` returns for these is the name itself, whatever the environment says.
_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY")
)


def _sanitized_method(method: str) -> str:
    """``sanitize_method``, without its environment lookup for the common methods."""
    upper = method.upper()
    return upper if upper in _KNOWN_METHODS else sanitize_method(method)


class Semconv:
    """Which attribute names a stability mode writes (old, stable or both)."""

    def __init__(self, mode: _StabilityMode) -> None:
        self.mode = mode
        self.old = _report_old(mode)
        self.new = _report_new(mode)


def _host_and_port(server: Any) -> tuple[str, Any]:
    port = server[1]
    return server[0] + (":" + str(port) if str(port) != "80" else ""), port


def _set_int(result: dict[str, Any], key: str, value: Any) -> None:
    if value:
        with contextlib.suppress(ValueError, TypeError):
            result[key] = int(value)


def request_attributes(
    scope: Mapping[str, Any], headers: Headers, semconv: Semconv
) -> dict[str, Any]:
    """The server span's request attributes, as the instrumentation package collects them."""
    old, new = semconv.old, semconv.new
    server_host, port = _host_and_port(scope.get("server") or ["0.0.0.0", 80])
    host_values = headers.get("host")
    url_host = host_values[0] if host_values else server_host
    path = scope.get("path")
    http_url = scope.get("scheme", "http") + "://" + url_host + scope.get("path", "")
    query = scope.get("query_string")
    if query:
        if isinstance(query, bytes):
            query = query.decode("utf8")
        http_url += "?" + unquote(query)
    result: dict[str, Any] = {}
    scheme = scope.get("scheme")
    if scheme:
        if old:
            result["http.scheme"] = scheme
        if new:
            result["url.scheme"] = scheme
    if server_host:
        if old:
            result["http.host"] = server_host
        if new:
            result["server.address"] = server_host
    if port:
        if old:
            _set_int(result, "net.host.port", port)
        if new:
            _set_int(result, "server.port", port)
    flavor = scope.get("http_version")
    if flavor:
        if old:
            result["http.flavor"] = flavor
        if new:
            result["network.protocol.version"] = flavor
    if path:
        if old:
            result["http.target"] = path
        if new:
            result["url.path"] = path
            if query:
                result["url.query"] = query
    if old:
        result["http.url"] = redact_url(http_url)
    method = scope.get("method", "")
    if method:
        original, normalized = method.strip(), _sanitized_method(method).strip()
        if original != normalized and new and original:
            result["http.request.method_original"] = original
        if normalized:
            if old:
                result["http.method"] = normalized
            if new:
                result["http.request.method"] = normalized
    if host_values and old:
        result["http.server_name"] = ",".join(host_values)
    agents = headers.get("user-agent")
    if agents:
        agent = agents[0]
        if agent:
            if old:
                result["http.user_agent"] = agent
            if new:
                result["user_agent.original"] = agent
        synthetic = detect_synthetic_user_agent(agent)
        if synthetic:
            result["user_agent.synthetic.type"] = synthetic
    client = scope.get("client")
    if client is not None:
        if client[0]:
            if old:
                result["net.peer.ip"] = client[0]
            if new:
                result["client.address"] = client[0]
        if old:
            _set_int(result, "net.peer.port", client[1])
        if new:
            _set_int(result, "client.port", client[1])
    return result


def _captured(
    headers: Headers, sanitize: SanitizeValue, patterns: list[str], normalize: Callable[[str], str]
) -> dict[str, list[str]]:
    return sanitize.sanitize_header_values(headers, patterns, normalize)


def set_response_status(span: Any, status_code: Any, semconv: Semconv) -> None:
    """Status code attributes and span status by the HTTP server span rules (5xx is an
    error, 4xx is not; a status that is not an integer is an error)."""
    text = str(status_code)
    try:
        code = int(status_code)
    except ValueError:
        code = -1
    if not span.is_recording():
        return
    if code < 0:
        if semconv.new:
            span.set_attribute("error.type", text)
        span.set_status(Status(StatusCode.ERROR, "Non-integer HTTP status: " + text))
        return
    status = http_status_to_status_code(code, server_span=True)
    # One attribute at a time: the SDK cleans a mapping as a whole (a copy) before setting it.
    if semconv.old:
        span.set_attribute("http.status_code", code)
    if semconv.new:
        span.set_attribute("http.response.status_code", code)
        if status is StatusCode.ERROR:
            span.set_attribute("error.type", text)
    span.set_status(Status(status))


def _failsafe(hook: Callable[..., Any] | None) -> Callable[..., Any] | None:
    if hook is None:
        return None

    @functools.wraps(hook)
    def wrapper(span: Any, *args: Any) -> None:
        try:
            hook(span, *args)
        except Exception as exc:
            span.record_exception(exc)

    return wrapper


class ServerSpanMiddleware:
    """One server span per HTTP request (websocket connections go to the instrumentation
    package's middleware, configured the same way)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer: Any,
        span_details: Callable[[Scope], tuple[str, dict[str, Any]]],
        semconv: Semconv,
        excluded_urls: ExcludeList | None = None,
        server_request_hook: Callable[..., Any] | None = None,
        capture_request_headers: list[str] | None = None,
        capture_response_headers: list[str] | None = None,
        sanitize_fields: list[str] | None = None,
        websocket: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.span_details = span_details
        self.semconv = semconv
        self.excluded_urls = (
            excluded_urls if excluded_urls and excluded_urls._excluded_urls else None
        )
        self.server_request_hook = _failsafe(server_request_hook)
        self.capture_request_headers = capture_request_headers or None
        self.capture_response_headers = capture_response_headers or None
        self.sanitize = SanitizeValue(sanitize_fields or [])
        self.websocket = websocket or app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http":
            await (self.websocket if kind == "websocket" else self.app)(scope, receive, send)
            return
        if not is_http_instrumentation_enabled():
            await self.app(scope, receive, send)
            return
        headers = decoded_headers(scope)
        if self.excluded_urls is not None and self.excluded_urls.url_disabled(_url(scope, headers)):
            await self.app(scope, receive, send)
            return
        span_name, extra = self.span_details(scope)
        attributes = request_attributes(scope, headers, self.semconv)
        attributes.update(extra)
        if trace.get_current_span() is trace.INVALID_SPAN:
            parent = extract(headers, getter=_GETTER)
            span_kind = SpanKind.SERVER
        else:
            parent = context.get_current()
            span_kind = SpanKind.INTERNAL
        span = self.tracer.start_span(
            span_name, context=parent, kind=span_kind, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            server_span = span_kind is SpanKind.SERVER and span.is_recording()
            if server_span and self.capture_request_headers:
                found = _captured(
                    headers,
                    self.sanitize,
                    self.capture_request_headers,
                    normalise_request_header_name,
                )
                if found:
                    span.set_attributes(found)
            if self.server_request_hook is not None:
                self.server_request_hook(span, scope)
            await self.app(scope, receive, self._send(span, server_span, send))
        except Exception as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            context.detach(token)
            if span.is_recording():
                span.end()

    def _send(self, span: Any, server_span: bool, send: Any) -> Any:
        semconv = self.semconv
        capture = self.capture_response_headers if server_span else None

        async def send_and_end(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if capture and "headers" in message:
                    found = _captured(
                        decoded_headers(message),
                        self.sanitize,
                        capture,
                        normalise_response_header_name,
                    )
                    if found:
                        span.set_attributes(found)
                if message["status"]:
                    set_response_status(span, message["status"], semconv)
            propagator = get_global_response_propagator()  # type: ignore[no-untyped-call]
            if propagator:
                _inject_response(propagator, span, message)
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                span.end()

        return send_and_end


def _url(scope: Mapping[str, Any], headers: Headers) -> str:
    """The URL the instrumentation package matches excluded URLs against (no query)."""
    server_host, _ = _host_and_port(scope.get("server") or ["0.0.0.0", 80])
    host_values = headers.get("host")
    host = host_values[0] if host_values else server_host
    url: str = scope.get("scheme", "http") + "://" + host + scope.get("path", "")
    return url


def _inject_response(propagator: Any, span: Any, message: Message) -> None:
    from opentelemetry.instrumentation.asgi import asgi_setter

    propagator.inject(
        message, context=trace.set_span_in_context(span, context.Context()), setter=asgi_setter
    )


# --- the span name ---------------------------------------------------------------------


@functools.cache
def _path_only_routes() -> tuple[type, ...]:
    """Route types whose ``matches`` is a regular expression on the route path, then a
    method check: a path the expression rejects is ``Match.NONE`` without the call (which
    converts path parameters and builds a child scope). Exact types: a subclass may match
    differently."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    return (Route, APIRoute)


def _route_path(scope: Mapping[str, Any]) -> str:
    """The path routes match against (Starlette's ``get_route_path``)."""
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def route_template(scope: Scope) -> str | None:
    """The route the instrumentation package names an HTTP request's span after (its
    ``_get_route_details``: the first full match, else the last partial one), found
    without wrapping every route in a route context and matching it in full: a plain
    route whose path expression rejects the path is passed over; every other kind
    (included routers, mounts, hosts, subclasses) is matched the package's way, in order."""
    from opentelemetry.instrumentation.fastapi import _flatten_routes
    from starlette.routing import Match

    fastapi_scope = scope.get("fastapi")
    if fastapi_scope and fastapi_scope.get("effective_route_context") is not None:
        from opentelemetry.instrumentation.fastapi import _get_route_details

        return _get_route_details(scope)  # a route may match by its included router's context
    plain = _path_only_routes()
    route_path = _route_path(scope)
    route: str | None = None
    for candidate in scope["app"].routes:
        if type(candidate) in plain:
            if candidate.path_regex.match(route_path) is None:
                continue
            contexts: Any = (candidate,)
        else:
            contexts = _flatten_routes((candidate,))
        for matchable in contexts:
            match, _ = matchable.matches(scope)
            if match == Match.FULL:
                try:
                    return matchable.path  # type: ignore[no-any-return]
                except AttributeError:  # routes added by host routing have no path
                    return scope.get("path")
            if match == Match.PARTIAL:
                route = matchable.path
    return route


def http_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The span name and ``http.route`` of an HTTP request, as the instrumentation
    package's ``_get_default_span_details`` makes them."""
    route = route_template(scope)
    method = _sanitized_method(scope.get("method", "").strip())
    if method == "_OTHER":
        method = "HTTP"
    if not route:
        return method, {}
    return (f"{method} {route}" if method else route), {"http.route": route}


# --- wiring into a FastAPI app ---------------------------------------------------------


def semconv_mode() -> _StabilityMode:
    _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]
    return _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
        _OpenTelemetryStabilitySignalType.HTTP
    )


def fastapi_tracer(tracer_provider: Any, mode: _StabilityMode) -> Any:
    """The tracer the instrumentation package uses: its scope name, version and schema."""
    from opentelemetry.instrumentation.fastapi import __name__ as scope_name
    from opentelemetry.instrumentation.fastapi.version import __version__

    return trace.get_tracer(
        scope_name, __version__, tracer_provider, schema_url=_get_schema_url(mode)
    )


def instrument_app(
    app: Any,
    *,
    excluded_urls: str | None,
    capture_request_headers: list[str] | None,
    capture_response_headers: list[str] | None,
    sanitize_fields: list[str],
    server_request_hook: Callable[..., Any] | None = None,
    tracer_provider: Any = None,
) -> None:
    """Put :class:`ServerSpanMiddleware` where the instrumentation package puts its own:
    around the app's error middleware, with an exception-recording layer inside it."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.fastapi import _get_default_span_details
    from opentelemetry.util.http import get_custom_headers, parse_excluded_urls
    from starlette.middleware.errors import ServerErrorMiddleware

    mode = semconv_mode()
    tracer = fastapi_tracer(tracer_provider, mode)
    request_headers = capture_request_headers or get_custom_headers(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
    )
    response_headers = capture_response_headers or get_custom_headers(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
    )
    excluded = parse_excluded_urls(excluded_urls or "")
    original_build = app.build_middleware_stack

    def build_middleware_stack(self: Any) -> Any:
        inner = original_build()
        if not isinstance(inner, ServerErrorMiddleware):
            _logger.error("FastAPI's middleware stack is not the expected one; not traced")
            return inner
        errors = ServerErrorMiddleware(
            app=_RecordExceptions(inner.app), handler=inner.handler, debug=inner.debug
        )
        websocket = OpenTelemetryMiddleware(
            errors,
            excluded_urls=excluded,
            default_span_details=_get_default_span_details,
            server_request_hook=server_request_hook,
            tracer=tracer,
            meter=NoOpMeter("opentelemetry.instrumentation.fastapi"),  # spans only
            http_capture_headers_server_request=request_headers or None,
            http_capture_headers_server_response=response_headers or None,
            http_capture_headers_sanitize_fields=sanitize_fields,
            exclude_spans=["receive", "send"],
        )
        traced = ServerSpanMiddleware(
            errors,
            tracer=tracer,
            span_details=http_span_details,
            semconv=Semconv(mode),
            excluded_urls=excluded,
            server_request_hook=server_request_hook,
            capture_request_headers=request_headers,
            capture_response_headers=response_headers,
            sanitize_fields=sanitize_fields,
            websocket=websocket,
        )
        return ServerErrorMiddleware(app=traced)

    app._original_build_middleware_stack = original_build
    app.build_middleware_stack = types.MethodType(
        functools.wraps(original_build)(build_middleware_stack), app
    )
    app._is_instrumented_by_opentelemetry = True  # the instrumentation package stands down
    telemetry = getattr(app, "_telemetry", None)
    if isinstance(telemetry, dict):  # FastAPI 0.165+: its own telemetry stands down too
        telemetry.update(tracing=False, metrics=False, logs=False)
    _trace_background_tasks(tracer)


class _RecordExceptions:
    """Records an exception on the current span before the error middleware answers 500
    (which ends the span), as the instrumentation package's inner middleware does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            span = trace.get_current_span()
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def _trace_background_tasks(tracer: Any) -> None:
    """``BackgroundTask <name>`` spans, as the instrumentation package patches them (once)."""
    from starlette.background import BackgroundTask

    if hasattr(BackgroundTask, "_otel_original_call"):
        return
    original = BackgroundTask.__call__
    BackgroundTask._otel_original_call = original  # type: ignore[attr-defined]

    async def traced_call(self: BackgroundTask) -> None:
        name = getattr(self.func, "__name__", self.func.__class__.__name__)
        with tracer.start_as_current_span(f"BackgroundTask {name}"):
            return await original(self)

    BackgroundTask.__call__ = traced_call  # type: ignore[method-assign]
