"""``instrument_*``: the upstream instrumentations with otelkit's defaults.

- FastAPI: no ASGI receive/send spans, health probes untraced, request IDs, stable HTTP
  semantic conventions (``http.route`` on server spans and the duration metric), and
  sensitive headers redacted should a capture list name them.
- SQLAlchemy: SQL commenter off, literal values removed from the query text.
- httpx: the request ID travels as ``X-Request-ID`` (and as baggage via the propagator).
- logging: exactly one OTLP handler on the root logger, records carry request context.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from otelkit.presets import access, pipeline
from otelkit.presets.context import current_request_id
from otelkit.presets.logs import (
    add_export_handler,
    install_record_factory,
    note_logged_exceptions,
)
from otelkit.presets.requestid import (
    BAGGAGE_KEY,
    DEFAULT_HEADER,
    RequestIdMiddleware,
    answer_errors_with_request_id,
)
from otelkit.presets.settings import DEFAULT_HEALTH_PATHS
from otelkit.presets.sql import sanitize_sql

if TYPE_CHECKING:
    from fastapi import FastAPI

_logger = logging.getLogger("otelkit.presets")

SENSITIVE_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    ".*token.*",
    ".*secret.*",
    ".*session.*",
    ".*password.*",
)
_MARK = "_otelkit_instrumented"
_instrumented_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def excluded_urls_pattern(paths: Iterable[str], extra: str | None = None) -> str:
    """Comma-separated regexes the upstream instrumentation matches against the URL."""
    patterns = [r"^[a-z]+://[^/]+" + re.escape(path) + r"(\?|$)" for path in paths]
    if extra:
        patterns.extend(item.strip() for item in extra.split(",") if item.strip())
    return ",".join(patterns)


def native_telemetry_available(app: Any) -> bool:
    """FastAPI 0.165+ traces and meters requests itself (``FastAPI(telemetry=...)``)."""
    return isinstance(getattr(app, "_telemetry", None), dict) and hasattr(app, "_native_telemetry")


def _use_native(app: Any, native: bool | None) -> bool:
    import os

    if native is None:
        native = os.environ.get("OTELKIT_FASTAPI_NATIVE", "").strip().lower() == "true"
    if native and not native_telemetry_available(app):
        _logger.warning("this FastAPI has no native telemetry; using the instrumentation package")
        return False
    return native


def instrument_fastapi(
    app: FastAPI,
    *,
    excluded_paths: Iterable[str] = DEFAULT_HEALTH_PATHS,
    excluded_urls: str | None = None,
    capture_request_headers: list[str] | None = None,
    capture_response_headers: list[str] | None = None,
    request_id_header: str = DEFAULT_HEADER,
    native: bool | None = None,
    **upstream: Any,
) -> FastAPI:
    """Trace a FastAPI app once (later calls on the same app do nothing).

    By default through opentelemetry-instrumentation-fastapi. With ``native=True`` (or
    ``OTELKIT_FASTAPI_NATIVE=true``) FastAPI's own telemetry is used instead, where the
    installed FastAPI has it: one server span and the duration metric, cheaper per request.
    """
    if getattr(app, _MARK, False):
        return app
    pipeline.configure()
    paths = tuple(excluded_paths)
    app.add_middleware(RequestIdMiddleware, header=request_id_header)
    if _use_native(app, native):
        _configure_native(app, paths)
    else:
        _instrument_contrib(
            app,
            paths,
            excluded_urls,
            capture_request_headers,
            capture_response_headers,
            upstream,
        )
    answer_errors_with_request_id(app)
    access.quiet(paths)
    setattr(app, _MARK, True)
    return app


def _configure_native(app: Any, paths: tuple[str, ...]) -> None:
    """No per-operation spans (dependencies, endpoint, serialization), health probes
    untraced, request metrics only with ``OTELKIT_HTTP_SERVER_METRICS=true``. FastAPI's validation-failure log records stay on; its exception records give
    way to the request-ID middleware's, which carry the request ID."""
    excluded = frozenset(paths)
    previous = app._telemetry.get("exclude")

    def exclude(scope: Any) -> bool:
        return scope.get("path") in excluded or bool(previous and previous(scope))

    current = pipeline.current()
    metrics = current is not None and current.settings.http_server_metrics
    app._telemetry.update(operation_spans=False, exclude=exclude, metrics=metrics)


# instrument_fastapi keyword arguments otelkit's middleware takes; any other (client
# request/response hooks, a meter provider, receive/send spans) means the package's own.
_OWN_MIDDLEWARE_OPTIONS = frozenset({"server_request_hook", "tracer_provider"})


def _instrument_contrib(
    app: Any,
    paths: tuple[str, ...],
    excluded_urls: str | None,
    capture_request_headers: list[str] | None,
    capture_response_headers: list[str] | None,
    upstream: dict[str, Any],
) -> None:
    """otelkit's server-span middleware (the instrumentation package's spans, no per-request
    metrics), or the instrumentation package itself when ``http.server.*`` metrics are
    asked for (``OTELKIT_HTTP_SERVER_METRICS=true``) or an option only it has is given."""
    import os

    excluded = excluded_urls_pattern(
        paths, excluded_urls or os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS")
    )
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        _logger.debug("this FastAPI app is already traced by the instrumentation package")
        return
    current = pipeline.current()
    server_metrics = current is not None and current.settings.http_server_metrics
    if not server_metrics and set(upstream) <= _OWN_MIDDLEWARE_OPTIONS:
        from otelkit.presets.asgi import instrument_app

        instrument_app(
            app,
            excluded_urls=excluded,
            capture_request_headers=capture_request_headers,
            capture_response_headers=capture_response_headers,
            sanitize_fields=list(SENSITIVE_HEADERS),
            **upstream,
        )
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    options: dict[str, Any] = {
        "excluded_urls": excluded,
        "exclude_spans": ["receive", "send"],
        "http_capture_headers_server_request": capture_request_headers,
        "http_capture_headers_server_response": capture_response_headers,
        "http_capture_headers_sanitize_fields": list(SENSITIVE_HEADERS),
    }
    options.update(upstream)
    FastAPIInstrumentor.instrument_app(app, **options)


def _patch_statement_sanitizer() -> None:
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    original = EngineTracer._set_db_client_span_attributes
    if getattr(original, _MARK, False):
        return

    def set_attributes(self: Any, span: Any, statement: Any, db_name: Any, attrs: Any) -> None:
        original(self, span, sanitize_sql(statement), db_name, attrs)

    setattr(set_attributes, _MARK, True)
    EngineTracer._set_db_client_span_attributes = set_attributes  # type: ignore[method-assign]


def _already_traced(engine: Any) -> bool:
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    return engine in _instrumented_engines or any(
        ref() is engine for ref, *_ in EngineTracer._remove_event_listener_params
    )


def instrument_sqlalchemy(engine: Any = None, *, enable_commenter: bool = False) -> None:
    """Trace one engine (sync or async), or with no engine every engine created later.

    Engines get otelkit's lean subclass of the upstream ``EngineTracer`` (same spans and
    connection metric, see :mod:`otelkit.presets.dbtrace`). For "every engine" otelkit wraps
    ``create_engine``/``create_async_engine`` itself rather than calling the upstream
    ``instrument()``, which needs greenlet on SQLAlchemy 2.1, is pinned below 2.1, and
    adds a ``connect`` span to every checkout.
    """
    pipeline.configure()
    current = pipeline.current()
    if current is None or current.settings.sql_sanitize:
        _patch_statement_sanitizer()
    if engine is None:
        _trace_new_engines(enable_commenter)
        return
    target = getattr(engine, "sync_engine", engine)
    if _already_traced(target):
        return
    _instrumented_engines.add(target)
    _engine_tracer(target, enable_commenter)


def _trace_new_engines(enable_commenter: bool) -> None:
    import importlib

    def wrap(module_name: str, attribute: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # e.g. sqlalchemy.ext.asyncio without greenlet
            return
        original = getattr(module, attribute, None)
        if original is None or getattr(original, _MARK, False):
            return

        def create(*args: Any, **kwargs: Any) -> Any:
            engine = original(*args, **kwargs)
            instrument_sqlalchemy(engine, enable_commenter=enable_commenter)
            return engine

        setattr(create, _MARK, True)
        create.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(module, attribute, create)

    for module_name in ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.engine.create"):
        wrap(module_name, "create_engine")
    for module_name in ("sqlalchemy.ext.asyncio", "sqlalchemy.ext.asyncio.engine"):
        wrap(module_name, "create_async_engine")


def _engine_tracer(engine: Any, enable_commenter: bool) -> None:
    from otelkit.presets.dbtrace import trace_engine

    trace_engine(engine, enable_commenter)


def _add_request_id(request: Any) -> None:
    """``X-Request-ID`` and ``request_id`` baggage on an outgoing request. When the context
    carries baggage the propagator rewrites the header after this hook, from a context the
    request-ID middleware has already put the ID into."""
    request_id = current_request_id()
    headers = getattr(request, "headers", None)
    if not request_id or headers is None:
        return
    if DEFAULT_HEADER not in headers:
        headers[DEFAULT_HEADER] = request_id
    entry = f"{BAGGAGE_KEY}={request_id}"
    existing = headers.get("baggage")
    if not existing:
        headers["baggage"] = entry
    elif f"{BAGGAGE_KEY}=" not in existing:
        headers["baggage"] = f"{existing},{entry}"


def _request_hook(span: Any, request: Any) -> None:
    _add_request_id(request)


async def _async_request_hook(span: Any, request: Any) -> None:
    _add_request_id(request)


def instrument_httpx(client: Any = None) -> None:
    """Trace every httpx client, or just ``client``; outgoing requests carry the request ID."""
    pipeline.configure()
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if client is None:
        HTTPXClientInstrumentor().instrument(
            request_hook=_request_hook, async_request_hook=_async_request_hook
        )
        return
    if HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
        return  # every client is already traced; a second wrapper would double the spans
    import httpx

    hook = _async_request_hook if isinstance(client, httpx.AsyncClient) else _request_hook
    HTTPXClientInstrumentor.instrument_client(client, request_hook=hook)


def _foreign_otel_handlers() -> list[logging.Handler]:
    """OpenTelemetry ``LoggingHandler``s the application attached itself."""
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "LoggingHandler"]


def instrument_logging() -> None:
    """Export log records over OTLP with their trace context; add request context.

    The logging instrumentation runs (its record factory and its options, such as
    ``OTEL_PYTHON_LOG_CORRELATION``) without its handler: otelkit's handler exports the
    same records from the reading of each record that the stdout line was written from.
    With a ``LoggingHandler`` already on the root logger, that one exports alone.
    """
    current = pipeline.configure()
    from opentelemetry.instrumentation.logging import LoggingInstrumentor

    instrumentor = LoggingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(enable_log_auto_instrumentation=False)
    exporting = (
        current is not None
        and current.logger_provider is not None
        and current.settings.logs_exporter != "none"
    )
    foreign = _foreign_otel_handlers()
    for handler in foreign:
        if note_logged_exceptions not in handler.filters:
            handler.addFilter(note_logged_exceptions)
    if exporting and not foreign:
        assert current is not None
        add_export_handler(current.logger_provider, current.settings)
    install_record_factory()


def instrument_all(app: FastAPI | None = None, engine: Any = None, **configure: Any) -> None:
    """``configure(**configure)`` then logging, httpx, SQLAlchemy and the FastAPI app."""
    pipeline.configure(**configure)
    instrument_logging()
    instrument_httpx()
    instrument_sqlalchemy(engine)
    if app is not None:
        instrument_fastapi(app)
