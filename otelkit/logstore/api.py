"""``GET /api/logs``: the search engine over HTTP, with cursor pagination.

Parameters are those of ``otelkit logs query`` (``service``, ``severity``, ``since``,
``from``, ``until``, ``trace_id``, ``grep``, ``attr`` (repeatable ``key=value``),
``limit`` up to 1000, ``order`` newest|oldest) plus ``cursor``, the ``next_cursor`` of the
previous page. Answers ``{"records": [...], "next_cursor": "..." | null}``; a bad input
is a 400 with ``{"error": "...", "parameter": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

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
