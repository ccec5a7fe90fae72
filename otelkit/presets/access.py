"""Access records: one structured log record per request, written by otelkit.

The request-ID middleware measures each request and logs one record on the
``otelkit.access`` logger: ``http.request.method``, ``http.route``, ``url.path`` (never
the query string, which can hold tokens), ``http.response.status_code``, ``duration_ms``,
``http.response.body.size``, ``client.address`` (only when PII may be captured), and
the request ID and trace context every record of the request carries. Severity follows
the status: 5xx ERROR, 4xx WARNING, else INFO. ``OTELKIT_ACCESS_LOG`` chooses where the
records go (``stdout``, the default, ``otlp``, ``both``, ``off``); health probes have none.

The otelkit collector's ``accesslog`` connector makes the same record from the request's
server span, so by default the log store has it without the application exporting a copy.
The server span carries ``http.response.body.size`` for it, and, when the application
exports its own records, ``otelkit.access.exported`` so that the connector makes none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

from otelkit.presets.logs import ACCESS_LOGGER_NAME, QuietPaths, write_access_line
from otelkit.presets.settings import DEFAULT_HEALTH_PATHS, Settings

ACCESS_LOGGER = logging.getLogger(ACCESS_LOGGER_NAME)
# On a server span: its access record is exported by the application, so the collector's
# ``accesslog`` connector makes none (it reads the same name).
EXPORTED_ATTRIBUTE = "otelkit.access.exported"
BODY_SIZE_ATTRIBUTE = "http.response.body.size"


class _State:
    """Set by ``configure()``: whether records are written, exported over OTLP, and may
    carry the client."""

    enabled = False
    exported = False
    capture_client = False
    quiet_paths: set[str] = set(DEFAULT_HEALTH_PATHS)


_state = _State()


def configure(settings: Settings) -> None:
    _state.enabled = settings.access_log != "off"
    _state.exported = settings.access_log in ("otlp", "both")
    _state.capture_client = settings.capture_pii


def enabled() -> bool:
    return _state.enabled


def exported() -> bool:
    return _state.exported


def quiet(paths: Iterable[str]) -> None:
    """Requests to these paths (health probes) get no access record, and stay out of
    uvicorn's access log where that is still written."""
    _state.quiet_paths.update(paths)
    server = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, QuietPaths) for existing in server.filters):
        server.addFilter(QuietPaths(is_quiet))


def is_quiet(path: str) -> bool:
    return path in _state.quiet_paths


def severity(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.INFO


def log_access(
    scope: MutableMapping[str, Any], status: int, body_size: int, duration_ns: int
) -> None:
    """Write the request's access record (in the request's context: its request ID and
    span are current). A negative ``body_size`` is unknown and left out."""
    level = severity(status)
    if not ACCESS_LOGGER.isEnabledFor(level):
        return
    method = scope.get("method", "")
    path = scope.get("path", "")
    duration_ms = round(duration_ns / 1e6, 3)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "http.response.status_code": status,
        "duration_ms": duration_ms,
    }
    if body_size >= 0:
        attributes[BODY_SIZE_ATTRIBUTE] = body_size
    route = getattr(scope.get("route"), "path", None)
    if route:
        attributes["http.route"] = route
    client = scope.get("client")
    if _state.capture_client and client:
        attributes["client.address"] = client[0]
    args = (method, path, status, duration_ms)
    if write_access_line(ACCESS_LOGGER, level, _MESSAGE % args, attributes):
        return
    # What ``Logger.log`` does, less the stack walk to find the caller, which is known.
    record = ACCESS_LOGGER.makeRecord(
        ACCESS_LOGGER_NAME,
        level,
        __file__,
        _LINE,
        _MESSAGE,
        args,
        None,
        "log_access",
        attributes,
    )
    ACCESS_LOGGER.handle(record)


_MESSAGE = "%s %s %s %.1fms"
_LINE = log_access.__code__.co_firstlineno


__all__ = [
    "ACCESS_LOGGER",
    "BODY_SIZE_ATTRIBUTE",
    "EXPORTED_ATTRIBUTE",
    "configure",
    "enabled",
    "exported",
    "is_quiet",
    "log_access",
    "quiet",
]
