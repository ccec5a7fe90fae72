"""``GET /api/logs``: the search engine over HTTP, with cursor pagination.

Parameters are those of ``otelkit logs query`` (``service``, ``severity``, ``since``,
``from``, ``until``, ``trace_id``, ``grep``, ``attr`` (repeatable ``key=value``, or a
number comparison ``key>=N``, ``>``, ``<``, ``<=``),
``limit`` up to 1000, ``order`` newest|oldest) plus ``cursor``, the ``next_cursor`` of the
previous page. Answers ``{"records": [...], "next_cursor": "..." | null}``; a bad input
is a 400 with ``{"error": "...", "parameter": "..."}``.

The API serves every stored record, so :func:`guarded` puts two checks in front of it:
the ``Host`` header must name an allowed host (a web page on another site cannot reach
the API through DNS rebinding), then the request must carry the credentials the
authenticator accepts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from otelkit.collector.runtime.auth import AuthGate, asgi_headers
from otelkit.collector.runtime.http import ASGIApp, Receive, Scope, Send, respond
from otelkit.logstore.query import QueryError, query_from_params
from otelkit.logstore.store import LogStore, StoreError, StoreUnavailableError

log = logging.getLogger("otelkit.logstore")

API_MAX_LIMIT = 1000
_JSON = "application/json"


def search_app(store: LogStore) -> ASGIApp:
    """An ASGI app serving ``GET /api/logs`` from ``store``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/api/logs":
            await _error(send, 404, "not found; the search API is GET /api/logs")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _error(send, 405, "only GET", [(b"allow", b"GET, HEAD")])
            return
        query_string = scope.get("query_string", b"").decode("utf-8", "replace")
        try:
            params = parse_qs(query_string, keep_blank_values=True, max_num_fields=100)
            query = query_from_params(params, max_limit=API_MAX_LIMIT)
        except QueryError as exc:
            await _error(send, 400, exc.message, parameter=exc.field)
            return
        except ValueError as exc:
            await _error(send, 400, str(exc))
            return
        try:
            page = await asyncio.to_thread(store.query, query)
        except StoreUnavailableError as exc:
            await _error(send, 503, f"log store unavailable: {exc}", [(b"retry-after", b"5")])
            return
        except StoreError as exc:
            await _error(send, 500, str(exc))
            return
        body = json.dumps(page.to_json(), ensure_ascii=False).encode()
        await respond(send, 200, body, _JSON)

    return app


def guarded(
    app: ASGIApp, gate: AuthGate, allowed_hosts: list[str], on_bad_host: Callable[[], None]
) -> ASGIApp:
    """``app`` behind the Host allow-list (400) and the authenticator (401)."""
    allowed = [host.lower() for host in allowed_hosts]

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = asgi_headers(scope)
        host = headers.get("host", "")
        if not host_allowed(host, allowed):
            on_bad_host()
            message = f"Host {host!r} is not allowed here; add it to api.allowed_hosts"
            await _error(send, 400, message)
            return
        if refused := await gate.refusal(headers):
            challenge = (
                [(b"www-authenticate", refused.challenge.encode())] if refused.challenge else []
            )
            await _error(send, 401, f"unauthenticated: {refused}", challenge)
            return
        await app(scope, receive, send)

    return guard


def host_allowed(host_header: str, allowed: list[str]) -> bool:
    """``host[:port]`` against names (``*`` any, ``.example.com`` or ``*.example.com`` a domain)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if not host:
        return False
    for entry in allowed:
        if entry == "*" or host == entry.strip("[]"):
            return True
        domain = entry.removeprefix("*")
        if domain.startswith(".") and host.endswith(domain):
            return True
    return False


async def _error(
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    parameter: str | None = None,
) -> None:
    payload: dict[str, Any] = {"error": message}
    if parameter is not None:
        payload["parameter"] = parameter
    await respond(send, status, json.dumps(payload).encode(), _JSON, headers)
