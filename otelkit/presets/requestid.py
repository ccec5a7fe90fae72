"""Request IDs: a pure ASGI middleware (no BaseHTTPMiddleware: no extra task, no body buffering).

An incoming ``X-Request-ID`` (or ``request_id`` baggage from an upstream otelkit service)
is kept when it looks like an ID (1-128 characters of ``A-Za-z0-9._:-``), otherwise a
new one is generated. The ID goes on the server span, into the request context (so log
records carry it), into the ``baggage`` of outgoing httpx requests, and back on the response.
The server span also gets the response's body size, for the access record the collector
makes of it (see :mod:`otelkit.presets.access`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import baggage, context, trace

from otelkit.presets import access
from otelkit.presets.context import enter_request, exit_request
from otelkit.presets.logs import (
    drop_repeated_server_tracebacks,
    logged_in_this_request,
    mark_logged,
)

UNHANDLED_LOGGER = logging.getLogger("otelkit.requests")
BODY_SIZE = access.BODY_SIZE_ATTRIBUTE
EXPORTED = access.EXPORTED_ATTRIBUTE
REQUEST_ID_ATTRIBUTE = "request_id"
BAGGAGE_KEY = "request_id"
DEFAULT_HEADER = "X-Request-ID"
_random_bits = random.getrandbits
# Scope key of the list an exception's request ID waits in for the error response.
_ERROR_RESPONSE_ID = "otelkit.request_id.error_response"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID.fullmatch(value) is not None


def new_request_id() -> str:
    """32 random hex digits. ``random`` rather than ``uuid4``: an ID is not a secret, and
    ``os.urandom`` is a system call on every request."""
    return f"{_random_bits(128):032x}"


def _incoming_id(scope: Scope, header: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == header:
            text: str = value.decode("latin-1")
            return text if valid_request_id(text) else None
    from_baggage = baggage.get_baggage(BAGGAGE_KEY)
    if isinstance(from_baggage, str) and valid_request_id(from_baggage):
        return from_baggage
    return None


def _lifespan_steps(send: Send) -> Send:
    """Freeze the startup heap as startup completes (see :mod:`otelkit.presets.heap`);
    export buffered telemetry before the server's shutdown completes (the process may end
    by a re-raised signal right after, skipping ``atexit``)."""

    async def send_after_steps(message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            from otelkit.presets.heap import freeze_startup_heap

            freeze_startup_heap()
        elif kind == "lifespan.shutdown.complete":
            import asyncio

            from otelkit.presets import pipeline

            await asyncio.to_thread(pipeline.flush)
        await send(message)

    return send_after_steps


def log_unhandled(scope: Scope, exception: Exception) -> None:
    """One ERROR record per unhandled exception, written while the request's span and
    request ID are current, unless the application logged it at ERROR in this request.

    The server's own traceback of it (uvicorn's "Exception in ASGI application", logged
    after the request's context is gone) is dropped, and FastAPI's native telemetry is told
    the exception was seen, so it does not write a second record."""
    if not logged_in_this_request(exception):
        route = getattr(scope.get("route"), "path", None)
        method = scope.get("method", "")
        attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
        if route:
            attributes["http.route"] = route
        UNHANDLED_LOGGER.error(
            "Unhandled exception in %s %s",
            method,
            route or attributes["url.path"],
            exc_info=exception,
            extra=attributes,
        )
        if UNHANDLED_LOGGER.isEnabledFor(logging.ERROR):
            mark_logged(exception)
    seen = getattr(scope.get("fastapi.telemetry"), "_exceptions", None)
    if isinstance(seen, list) and not any(item is exception for item in seen):
        seen.append(exception)


class _Response:
    """What the access record needs to know about the response sent."""

    __slots__ = ("body_size", "finished_ns", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body_size = 0
        self.finished_ns = 0


class RequestIdMiddleware:
    """Accept, validate or generate the request ID and echo it on the response; log an
    unhandled exception once, in the request's context; write the request's access
    record; at lifespan startup, freeze the startup heap; at shutdown, flush telemetry."""

    def __init__(self, app: ASGIApp, header: str = DEFAULT_HEADER) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")
        drop_repeated_server_tracebacks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(
                scope,
                receive,
                _lifespan_steps(send) if scope["type"] == "lifespan" else send,
            )
            return
        started_ns = time.perf_counter_ns()
        request_id = _incoming_id(scope, self.header) or new_request_id()
        span = trace.get_current_span()
        recording = span.is_recording()
        if recording:
            if access.exported():
                span.set_attributes({REQUEST_ID_ATTRIBUTE: request_id, EXPORTED: True})
            else:
                span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        encoded = request_id.encode("latin-1")
        header = self.header
        response = _Response()

        async def send_with_id(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.status = message["status"]
                headers = [*message.get("headers", ()), (header, encoded)]
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                response.body_size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    # Before the last body is handed on: the server span ends after it.
                    response.finished_ns = time.perf_counter_ns()
                    if recording:  # for the access record the collector makes of the span
                        span.set_attribute(BODY_SIZE, response.body_size)
            await send(message)

        request_token = enter_request(request_id)
        # With no baggage in the context, the httpx hook writes the baggage header itself
        # (cheaper than a context copy per request); with baggage, the propagator writes
        # it, so the ID must be part of it.
        baggage_token = (
            context.attach(baggage.set_baggage(BAGGAGE_KEY, request_id))
            if baggage.get_all()
            else None
        )
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exception:
            log_unhandled(scope, exception)
            if not response.status:  # the server answers 500; its body size is not seen here
                response.status, response.body_size = 500, -1
                pending = scope.get(_ERROR_RESPONSE_ID)
                if pending is not None:
                    pending.append((header, encoded))
            raise
        finally:
            if response.status and access.enabled() and not access.is_quiet(scope["path"]):
                finished = response.finished_ns or time.perf_counter_ns()
                access.log_access(scope, response.status, response.body_size, finished - started_ns)
            if baggage_token is not None:
                context.detach(baggage_token)
            exit_request(request_token)


class ErrorResponseRequestId:
    """The outermost layer: the request ID on the response the error middleware sends
    for an exception that left :class:`RequestIdMiddleware` (Starlette answers 500 from
    outside the user middleware, through a ``send`` that middleware never wrapped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: list[tuple[bytes, bytes]] = []
        scope[_ERROR_RESPONSE_ID] = pending

        async def send_with_pending_id(message: Message) -> None:
            if pending and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *pending]}
            await send(message)

        await self.app(scope, receive, send_with_pending_id)


def answer_errors_with_request_id(app: Any) -> None:
    """Wrap the app's middleware stack, as built (instrumentation included), in
    :class:`ErrorResponseRequestId`."""
    build = app.build_middleware_stack

    def build_with_request_id() -> ASGIApp:
        return ErrorResponseRequestId(build())

    app.build_middleware_stack = build_with_request_id
