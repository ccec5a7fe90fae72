"""Logs: request/user context on records, one stdout line (JSON or text) and one OTLP log
record per log call.

A record is read once (:func:`entry_of`: message, attributes, exception text) and that
reading is shared by the stdout handler and the OTLP handler, so neither walks the
record's attributes or formats its traceback again. Trace and span IDs are read from the
active span when the record is handled (handlers run in the caller's context); exported
records carry the trace context natively.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
from opentelemetry import trace
from opentelemetry._logs import LogRecord as ApiLogRecord
from opentelemetry.context import get_current
from opentelemetry.instrumentation.log_utils import std_to_otel
from opentelemetry.sdk._logs import Logger as SdkLogger
from opentelemetry.trace import SpanContext

from otelkit.presets.context import current_request
from otelkit.presets.logexport import lean_processor
from otelkit.presets.settings import AccessLog, Settings

ACCESS_LOGGER_NAME = "otelkit.access"
_FACTORY_MARK = "_otelkit_factory"
_PREVIOUS_FACTORY = "_otelkit_previous"
_factory_installed = [False]
# What every LogRecord has; everything else on a record is an attribute (``extra=...``,
# the request context, the logging instrumentation's correlation fields).
_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_CORRELATION_FIELDS = frozenset(
    {"otelSpanID", "otelTraceID", "otelTraceSampled", "otelServiceName"}
)
# Attributes a stdout line shows under its own name, or not at all.
_NOT_IN_LINE = frozenset(
    {"request_id", "enduser.id", "exception.type", "exception.message", "exception.stacktrace"}
    | _CORRELATION_FIELDS
)
_EVENT_NAME_KEYS = ("otel.event.name", "event.name")


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
    setattr(factory, _PREVIOUS_FACTORY, previous)
    logging.setLogRecordFactory(factory)
    _let_extra_name_request_fields()


def _let_extra_name_request_fields() -> None:
    """``Logger.makeRecord`` raises ``KeyError`` for an ``extra`` key the record already
    has, so with the request's fields on every record an application's own
    ``log.info(..., extra={"request_id": ...})`` would raise inside a request. Such keys
    are set after the record is made instead: the application's value wins, as if
    otelkit had not set the field; any other clash still raises, as ``logging`` does."""
    original = logging.Logger.makeRecord
    if getattr(original, _FACTORY_MARK, False):
        return

    def make_record(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Any = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        request = current_request() if extra else None
        if request is None:
            return original(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        ours = [key for key in extra if key == "request_id" or key in request.user]
        if not ours:
            return original(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        rest = {key: value for key, value in extra.items() if key not in ours}
        record = original(self, name, level, fn, lno, msg, args, exc_info, func, rest, sinfo)
        for key in ours:
            record.__dict__[key] = extra[key]
        return record

    setattr(make_record, _FACTORY_MARK, True)
    logging.Logger.makeRecord = make_record  # type: ignore[method-assign]


_UPSTREAM_FACTORY = "LoggingInstrumentor._instrument.<locals>.record_factory"


def _adds_only_known_fields(factory: Any) -> bool:
    """Whether records from ``factory`` carry, besides the standard fields, only otelkit's
    request context and the logging instrumentation's correlation fields (no log hook)."""
    for _ in range(8):  # a factory chain is a few links long
        if factory is logging.LogRecord:
            return True
        if getattr(factory, _FACTORY_MARK, False):
            factory = getattr(factory, _PREVIOUS_FACTORY)
        elif getattr(factory, "__qualname__", None) == _UPSTREAM_FACTORY:
            from opentelemetry.instrumentation.logging import LoggingInstrumentor

            if LoggingInstrumentor._log_hook is not None:
                return False
            factory = LoggingInstrumentor._old_factory
        else:
            return False
    return False


_known_factory: list[tuple[Any, bool]] = [(None, False)]


def records_are_plain() -> bool:
    """:func:`_adds_only_known_fields` for the current factory, worked out once per factory."""
    factory = logging.getLogRecordFactory()
    known = _known_factory[0]
    if known[0] is not factory:
        known = (factory, _adds_only_known_fields(factory))
        _known_factory[0] = known
    return known[1]


@dataclass(slots=True)
class Entry:
    """What one log call says, read once: the formatted message, the attributes (extras,
    request context and ``exception.*``), the event name, the traceback text and the
    span that was current (handlers run in the caller's context)."""

    message: str
    attributes: dict[str, Any]
    event_name: str | None
    exception_text: str | None
    span_context: SpanContext


_entries: weakref.WeakKeyDictionary[logging.LogRecord, Entry] = weakref.WeakKeyDictionary()


def entry_of(record: logging.LogRecord) -> Entry:
    """The record's :class:`Entry`, computed by the first handler that needs it."""
    entry = _entries.get(record)
    if entry is None:
        entry = _read(record)
        with contextlib.suppress(TypeError):  # a record type that takes no weak references
            _entries[record] = entry
    return entry


def _read(record: logging.LogRecord) -> Entry:
    attributes = {k: v for k, v in vars(record).items() if k not in _STANDARD_FIELDS}
    event_name = None
    for key in _EVENT_NAME_KEYS:  # the stable name first, then the deprecated one
        value = attributes.pop(key, None)
        event_name = event_name or value
    exception_text = None
    if record.exc_info:
        exc_type, value, tb = record.exc_info
        if exc_type is not None:
            attributes["exception.type"] = exc_type.__name__
        if value is not None and value.args:
            attributes["exception.message"] = str(value.args[0])
        stacktrace = "".join(traceback.format_exception(*record.exc_info))
        if tb is not None:
            attributes["exception.stacktrace"] = stacktrace
        exception_text = stacktrace.rstrip("\n")
        if not record.exc_text:
            record.exc_text = exception_text  # what logging.Formatter would write: reused
    elif record.exc_text:
        exception_text = record.exc_text
    span_context = trace.get_current_span().get_span_context()
    return Entry(record.getMessage(), attributes, event_name, exception_text, span_context)


def _trace_ids(record: logging.LogRecord, entry: Entry) -> tuple[str | None, str | None]:
    span_context = entry.span_context
    if span_context.is_valid:
        return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
    return getattr(record, "otelTraceID", None), getattr(record, "otelSpanID", None)


def _dumps(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line, default=str).decode()
    except TypeError:  # an integer beyond 64 bits, a key that is not a string
        import json

        return json.dumps(line, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, trace/span/request IDs,
    user, service, environment, the record's other attributes, and exception text."""

    def __init__(self, service: str | None = None, environment: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.environment = environment

    def format(self, record: logging.LogRecord) -> str:
        entry = entry_of(record)
        trace_id, span_id = _trace_ids(record, entry)
        line = self.line(
            record.created, record.levelname, record.name, entry.message, trace_id, span_id
        )
        self.add_attributes(line, entry.attributes)
        if entry.exception_text is not None:
            line["exception"] = entry.exception_text
            if record.exc_info and record.exc_info[0] is not None:
                line["exception_type"] = record.exc_info[0].__name__
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _dumps(line)

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        trace_id: str | None,
        span_id: str | None,
    ) -> dict[str, Any]:
        """The fields every line starts with, in their order (attributes come next)."""
        line: dict[str, Any] = {
            "time": _iso_time(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if trace_id is not None:
            line["trace_id"] = trace_id
        if span_id is not None:
            line["span_id"] = span_id
        return line

    def add_attributes(self, line: dict[str, Any], attributes: dict[str, Any]) -> None:
        optional = (
            ("request_id", attributes.get("request_id")),
            ("user_id", attributes.get("enduser.id")),
            ("service", self.service),
            ("environment", self.environment),
        )
        for key, value in optional:
            if value is not None:
                line[key] = value
        for key, value in attributes.items():
            if key not in _NOT_IN_LINE and key not in line:
                line[key] = value


# The access record's message already says these; a text line does not repeat them.
_IN_ACCESS_MESSAGE = frozenset(
    {"http.request.method", "url.path", "http.response.status_code", "duration_ms"}
)


class HumanFormatter(logging.Formatter):
    """``12:00:00.123 INFO  app.items [req=ab12 trace=4bf9..] message key=value`` for a
    terminal."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        entry = entry_of(record)
        trace_id, _ = _trace_ids(record, entry)
        tags = []
        request_id = entry.attributes.get("request_id")
        if request_id:
            tags.append(f"req={request_id}")
        if trace_id:
            tags.append(f"trace={trace_id}")
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{clock}.{int(record.msecs):03d} {record.levelname:<7} {record.name}"
        if tags:
            text += f" [{' '.join(tags)}]"
        text += f" {entry.message}"
        hidden = _IN_ACCESS_MESSAGE if record.name == ACCESS_LOGGER_NAME else ()
        for key, value in entry.attributes.items():
            if key not in _NOT_IN_LINE and key not in hidden:
                text += f" {key}={value}"
        if entry.exception_text is not None:
            text += "\n" + entry.exception_text
        return text


_seconds_text: list[tuple[int, str]] = [(-1, "")]


def _iso_time(created: float) -> str:
    """RFC 3339 in UTC with milliseconds; the seconds text is made once per second."""
    whole = int(created)
    cached = _seconds_text[0]
    if cached[0] != whole:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _seconds_text[0] = cached
    return f"{cached[1]}.{int(created % 1 * 1000):03d}Z"


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


def no_access_records(record: logging.LogRecord) -> bool:
    return record.name != ACCESS_LOGGER_NAME


def _access_filter(records_wanted: bool) -> Callable[[logging.LogRecord], bool] | None:
    """A handler filter that keeps access records out, or None when they are wanted."""
    return None if records_wanted else no_access_records


class StdoutHandler(logging.StreamHandler[TextIO]):
    """otelkit's console handler: one JSON or text line per record."""

    def __init__(self, formatter: logging.Formatter, access_log: AccessLog) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(formatter)
        self.addFilter(note_logged_exceptions)
        skip_access = _access_filter(access_log in ("stdout", "both"))
        if skip_access is not None:
            self.addFilter(skip_access)

    def write(self, line: str, level: int) -> None:
        """What ``emit`` does with a formatted line: one write and a flush, under the lock."""
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                self.stream.write(line + self.terminator)
                self.stream.flush()
            except RecursionError:
                raise
            except Exception:
                self.handleError(
                    logging.LogRecord(ACCESS_LOGGER_NAME, level, "", 0, line, None, None)
                )


def _sole_json_handler(logger: logging.Logger, level: int) -> StdoutHandler | None:
    """The handler that would write an access record of ``logger`` at ``level``, when it
    is otelkit's JSON stdout handler and every other handler on the way drops the record
    (or is above its level), the logger has no filter and is a plain ``Logger``, and
    records carry no fields but the known ones; None otherwise."""
    if logger.filters or type(logger) is not logging.Logger or not records_are_plain():
        return None
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level < handler.level or no_access_records in handler.filters:
                continue
            if (
                found is None
                and type(handler) is StdoutHandler
                and type(handler.formatter) is JsonFormatter
                and all(check is note_logged_exceptions for check in handler.filters)
            ):
                found = handler
                continue
            return None
        current = current.parent if current.propagate else None
    return found


def write_access_line(
    logger: logging.Logger, level: int, message: str, extra: dict[str, Any]
) -> bool:
    """Write an access record's JSON line without making a ``LogRecord``, when otelkit's
    stdout handler is the only one that would see the record: the line is the one
    :class:`JsonFormatter` would write of it, byte for byte (the record's extra fields
    come after the request context, as ``makeRecord`` sets them). False when it is not
    written (a record is needed)."""
    handler = _sole_json_handler(logger, level)
    if handler is None:
        return False
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:  # the line's IDs would come from the record's fields
        return False
    request = current_request()
    attributes: dict[str, Any] = {}
    if request is not None:
        attributes["request_id"] = request.request_id
        attributes.update(request.user)
    attributes.update(extra)  # as makeRecord sets them: ``extra`` wins a shared key
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
    line = formatter.line(
        time.time(),
        logging.getLevelName(level),
        logger.name,
        message,
        format(span_context.trace_id, "032x"),
        format(span_context.span_id, "016x"),
    )
    formatter.add_attributes(line, attributes)
    handler.write(_dumps(line), level)
    return True


class OtlpHandler(logging.Handler):
    """Hands each record to the SDK's logger provider, so the OTLP exporter sends it: the
    same log record the logging instrumentation's handler would make (body, severity,
    trace context, attributes, ``exception.*``), from the :class:`Entry` the stdout line
    was written from."""

    _emitting: ContextVar[bool] = ContextVar("otelkit_log_export", default=False)

    def __init__(self, provider: Any, access_log: AccessLog, code_attributes: bool) -> None:
        super().__init__()
        self._provider = provider
        self._loggers: dict[str, Any] = {}
        self._code_attributes = code_attributes
        self.addFilter(not_from_export_threads)
        self.addFilter(note_logged_exceptions)
        skip_access = _access_filter(access_log in ("otlp", "both"))
        if skip_access is not None:
            self.addFilter(skip_access)

    def _logger(self, name: str) -> Any:
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._loggers[name] = self._provider.get_logger(name)
        return logger

    def emit(self, record: logging.LogRecord) -> None:
        if self._emitting.get():  # the SDK logging about this record: not exported again
            return
        token = self._emitting.set(True)
        try:
            logger = self._logger(record.name)
            if not self._emit_encoded(logger, record):
                logger.emit(self._translate(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        finally:
            self._emitting.reset(token)

    def _attributes(self, record: logging.LogRecord, entry: Entry) -> dict[str, Any]:
        if not self._code_attributes:
            return entry.attributes
        return {
            **entry.attributes,
            "code.file.path": record.pathname,
            "code.function.name": record.funcName,
            "code.line.number": record.lineno,
        }

    def _emit_encoded(self, logger: Any, record: logging.LogRecord) -> bool:
        """Export the record's OTLP bytes written straight from its :class:`Entry`, when
        the SDK would make the same record (see :mod:`otelkit.presets.logexport`)."""
        lean = lean_processor(self._provider)
        if lean is None or type(logger) is not SdkLogger or not logger._is_enabled():
            return False
        entry = entry_of(record)
        attributes = self._attributes(record, entry)
        if not lean.accepts(attributes):
            return False
        encoded = lean.encoder.log_record(
            timestamp=int(record.created * 1e9),
            observed_timestamp=time.time_ns(),
            severity_number=std_to_otel(record.levelno).value,
            severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
            body=entry.message,
            attributes=attributes,
            span_context=entry.span_context,
            event_name=entry.event_name,
        )
        lean.emit_encoded(logger, encoded)
        return True

    def _translate(self, record: logging.LogRecord) -> Any:
        entry = entry_of(record)
        return ApiLogRecord(
            timestamp=int(record.created * 1e9),
            observed_timestamp=time.time_ns(),
            context=get_current() or None,
            severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
            severity_number=std_to_otel(record.levelno),
            body=entry.message,
            attributes=self._attributes(record, entry),
            event_name=entry.event_name,
        )

    def flush(self) -> None:
        """The providers are flushed by otelkit's shutdown, on its own bounded thread."""


_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


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
    drop_server_access_lines()
    if any(
        isinstance(handler, StdoutHandler) or type(handler) is logging.StreamHandler
        for handler in root.handlers
    ):
        return  # ours is there, or the application already writes to a console
    formatter: logging.Formatter = (
        JsonFormatter(service, settings.environment)
        if settings.log_format == "json"
        else HumanFormatter()
    )
    root.addHandler(StdoutHandler(formatter, settings.access_log))


def export_handler(root: logging.Logger) -> OtlpHandler | None:
    return next((h for h in root.handlers if isinstance(h, OtlpHandler)), None)


def add_export_handler(provider: Any, settings: Settings) -> OtlpHandler:
    """The one handler that exports records over OTLP (added once). It stays attached
    across ``logging.basicConfig``/``dictConfig`` as the logging instrumentation's does."""
    import os

    root = logging.getLogger()
    existing = export_handler(root)
    if existing is not None:
        return existing
    code = os.environ.get("OTEL_PYTHON_LOG_CODE_ATTRIBUTES", "").strip().lower() == "true"
    handler = OtlpHandler(provider, settings.access_log, code)
    root.addHandler(handler)
    with contextlib.suppress(ImportError, AttributeError):
        from opentelemetry.instrumentation.logging import handler as upstream

        upstream._overwrite_logging_config_fns(handler)  # type: ignore[arg-type]
    return handler


# uvicorn's and gunicorn's own access lines: otelkit writes one access record per request
# instead (see otelkit.presets.access), and a plain-text line would break a JSON stream.
SERVER_ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")


def no_server_access_lines(record: logging.LogRecord) -> bool:
    return False


def drop_server_access_lines() -> None:
    for name in SERVER_ACCESS_LOGGERS:
        server = logging.getLogger(name)
        if no_server_access_lines not in server.filters:
            server.addFilter(no_server_access_lines)


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
