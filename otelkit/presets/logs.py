"""Logs: request/user context on records, a JSON formatter for production stdout and a
human one for development.

Trace and span IDs are read from the active span when the record is formatted (stdout
handlers format in the caller's context); OTLP-exported records carry the trace context
natively, so only ``request_id`` and ``enduser.*`` are added to the record itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from otelkit.presets.context import current_request
from otelkit.presets.settings import Settings

_HANDLER_MARK = "_otelkit_stdout"
_FACTORY_MARK = "_otelkit_factory"
_factory_installed = [False]


def install_record_factory() -> None:
    """Wrap the current LogRecord factory once to add ``request_id`` and ``enduser.*``."""
    if _factory_installed[0]:
        return
    _factory_installed[0] = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        request = current_request()
        if request is not None:
            record.request_id = request.request_id
            for key, value in request.user.items():
                setattr(record, key, value)
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


def _trace_ids(record: logging.LogRecord) -> tuple[str | None, str | None]:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
    return getattr(record, "otelTraceID", None), getattr(record, "otelSpanID", None)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, trace/span/request IDs,
    service, user and exception text."""

    def __init__(self, service: str | None = None, environment: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.environment = environment

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = _trace_ids(record)
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        optional = {
            "trace_id": trace_id,
            "span_id": span_id,
            "request_id": getattr(record, "request_id", None),
            "user_id": getattr(record, "enduser.id", None),
            "service": self.service,
            "environment": self.environment,
        }
        entry.update({key: value for key, value in optional.items() if value is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
            if record.exc_info[0] is not None:
                entry["exception_type"] = record.exc_info[0].__name__
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``12:00:00.123 INFO  app.items [req=ab12 trace=4bf9..] message`` for a terminal."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        trace_id, _ = _trace_ids(record)
        tags = []
        request_id = getattr(record, "request_id", None)
        if request_id:
            tags.append(f"req={request_id}")
        if trace_id:
            tags.append(f"trace={trace_id}")
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = f"{clock}.{int(record.msecs):03d} {record.levelname:<7} {record.name}"
        text = (
            f"{prefix} [{' '.join(tags)}] {record.getMessage()}"
            if tags
            else f"{prefix} {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


# Chatty at DEBUG (wire-level traces, exporter internals): kept at WARNING unless the user
# sets their level, so "debug in development" means the application's debug lines.
NOISY_LOGGERS = ("httpcore", "hpack", "urllib3", "asyncio", "grpc", "opentelemetry", "multipart")
EXPORT_THREAD_PREFIXES = ("OtelBatch", "OtelPeriodic", "otelkit-shutdown")


def not_from_export_threads(record: logging.LogRecord) -> bool:
    """Records logged by the exporters themselves are not exported (no feedback loop)."""
    return not (record.threadName or "").startswith(EXPORT_THREAD_PREFIXES)


# --- one record per unhandled exception ----------------------------------------------
# The request-ID middleware logs an unhandled exception unless the application already
# logged it at ERROR during the same request; the server's own traceback of it is dropped.
# Which request logged an exception is kept on the exception itself (the request context
# object), so an exception instance raised again in a later request is logged again.

_LOGGED_IN = "_otelkit_logged_in"
_OUTSIDE_REQUESTS = object()
SERVER_ERROR_LOGGERS = ("uvicorn.error",)


def _exception_of(record: logging.LogRecord) -> BaseException | None:
    return record.exc_info[1] if record.exc_info else None


def mark_logged(exception: BaseException) -> None:
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(exception, _LOGGED_IN, current_request() or _OUTSIDE_REQUESTS)


def logged_in_this_request(exception: BaseException) -> bool:
    return getattr(exception, _LOGGED_IN, None) is (current_request() or _OUTSIDE_REQUESTS)


def note_logged_exceptions(record: logging.LogRecord) -> bool:
    """Handler filter that never drops: remembers an exception shown at ERROR or worse."""
    exception = _exception_of(record)
    if exception is not None and record.levelno >= logging.ERROR:
        mark_logged(exception)
    return True


def not_logged_already(record: logging.LogRecord) -> bool:
    """Logger filter for servers (uvicorn's "Exception in ASGI application"): drops the
    traceback of an exception that a request already logged."""
    exception = _exception_of(record)
    return exception is None or getattr(exception, _LOGGED_IN, None) is None


def drop_repeated_server_tracebacks() -> None:
    for name in SERVER_ERROR_LOGGERS:
        server = logging.getLogger(name)
        if not_logged_already not in server.filters:
            server.addFilter(not_logged_already)


def setup_stdout(settings: Settings, service: str | None) -> None:
    """One stdout handler on the root logger and the root level. Not added twice, nor when
    the root logger already has a console handler (``logging.basicConfig`` ran)."""
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for name in NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET:
            noisy.setLevel(logging.WARNING)
    if settings.log_format == "none":
        return
    if any(
        getattr(handler, _HANDLER_MARK, False) or type(handler) is logging.StreamHandler
        for handler in root.handlers
    ):
        return  # ours is there, or the application already writes to a console
    handler = logging.StreamHandler(sys.stdout)
    formatter: logging.Formatter = (
        JsonFormatter(service, settings.environment)
        if settings.log_format == "json"
        else HumanFormatter()
    )
    handler.setFormatter(formatter)
    handler.addFilter(note_logged_exceptions)
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)


class QuietPaths(logging.Filter):
    """Demote uvicorn access-log lines for health probes to DEBUG."""

    def __init__(self, paths: Callable[[str], bool]) -> None:
        super().__init__()
        self.is_quiet = paths

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2].split("?", 1)[0]
            if self.is_quiet(path):
                return record.levelno > logging.INFO or logging.getLogger(record.name).isEnabledFor(
                    logging.DEBUG
                )
        return True
