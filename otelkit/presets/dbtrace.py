"""SQLAlchemy tracing: the instrumentation package's spans and connection metric, for less.

:class:`LeanEngineTracer` is the package's ``EngineTracer`` with two hot paths replaced:

- a query's client span is started with its attributes (name, ``db.*``, ``net.*``, the
  query text) in one call, with the engine's URL attributes worked out
  once per URL, instead of being made current and given each attribute in turn;
- ``db.client.connections.usage`` (connections by ``state``: ``idle``, ``used``) keeps the
  package's instrument name, unit, attributes and numbers, but the four pool events of a
  request add to plain counters that an observable up-down counter reports when metrics
  are collected, instead of making four SDK measurements per request.

The golden tests compare both with the package's output.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import (
    EngineTracer,
    _get_attributes_from_cursor_or_conn,
    _get_attributes_from_url,
    _get_db_name_from_cursor_or_conn,
)
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.metrics import CallbackOptions, Observation

CONNECTIONS_USAGE = "db.client.connections.usage"
_CONNECTIONS_DESCRIPTION = (
    "The number of connections that are currently in state described by the state attribute."
)


class _ConnectionUsage:
    """One observable instrument for every traced engine of a meter provider."""

    def __init__(self, meter: Any) -> None:
        self._tracers: weakref.WeakSet[LeanEngineTracer] = weakref.WeakSet()
        meter.create_observable_up_down_counter(
            name=CONNECTIONS_USAGE,
            callbacks=[self._observe],
            unit="connections",
            description=_CONNECTIONS_DESCRIPTION,
        )

    def add(self, tracer: LeanEngineTracer) -> None:
        self._tracers.add(tracer)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        for tracer in list(self._tracers):
            yield from tracer.observations()


_usage_by_meter: weakref.WeakKeyDictionary[Any, _ConnectionUsage] = weakref.WeakKeyDictionary()
_usage_lock = threading.Lock()


def connection_usage(meter: Any) -> _ConnectionUsage:
    with _usage_lock:
        usage = _usage_by_meter.get(meter)
        if usage is None:
            usage = _usage_by_meter[meter] = _ConnectionUsage(meter)
        return usage


class LeanEngineTracer(EngineTracer):
    """``EngineTracer`` with the lean span start and connection counting (see the module)."""

    def __init__(self, tracer: Any, engine: Any, meter: Any, enable_commenter: bool) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._url_attributes: dict[Any, tuple[dict[str, Any], bool]] = {}
        super().__init__(tracer, engine, None, enable_commenter, {}, False)  # type: ignore[no-untyped-call]
        self._observed = [
            (state, {**self._engine_attrs, "state": state}) for state in ("idle", "used")
        ]
        connection_usage(meter).add(self)

    # --- db.client.connections.usage ------------------------------------------------------

    def _count(self, state: str, value: int) -> None:
        if not is_instrumentation_enabled():
            return
        with self._lock:
            self._counts[state] = self._counts.get(state, 0) + value

    def _add_idle_to_connection_usage(self, value: int) -> None:
        self._count("idle", value)

    def _add_used_to_connection_usage(self, value: int) -> None:
        self._count("used", value)

    def _move(self, source: str, target: str) -> None:
        """One connection from ``source`` to ``target`` state: the package's two counts,
        with one check and one lock (a checkout and a checkin on every request)."""
        if not is_instrumentation_enabled():
            return
        counts = self._counts
        with self._lock:
            counts[source] = counts.get(source, 0) - 1
            counts[target] = counts.get(target, 0) + 1

    def _pool_checkin(self, _dbapi_connection: Any, _connection_record: Any) -> None:
        self._move("used", "idle")

    def _pool_checkout(
        self, _dbapi_connection: Any, _connection_record: Any, _connection_proxy: Any
    ) -> None:
        self._move("idle", "used")

    def observations(self) -> list[Observation]:
        counts = self._counts
        return [
            Observation(counts[state], attributes)
            for state, attributes in self._observed
            if state in counts
        ]

    # --- the query's client span -----------------------------------------------------------

    def _before_cur_exec(
        self,
        conn: Any,
        cursor: Any,
        statement: Any,
        params: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[Any, Any]:
        if self.enable_commenter:  # rewrites the query: the package's own path
            return super()._before_cur_exec(  # type: ignore[no-untyped-call,no-any-return]
                conn, cursor, statement, params, context, executemany
            )
        if not is_instrumentation_enabled():
            return statement, params
        attributes = self._connection_attributes(conn, cursor)
        db_name = _get_db_name_from_cursor_or_conn(self.vendor, conn, cursor)  # type: ignore[no-untyped-call]
        # The package's attribute rules (and otelkit's literal removal, which wraps them)
        # write into the dict the span starts with.
        self._set_db_client_span_attributes(_Collect(attributes), statement, db_name, attributes)
        context._otel_span = self.tracer.start_span(
            self._operation_name(db_name, statement),  # type: ignore[no-untyped-call]
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        return statement, params

    def _connection_attributes(self, conn: Any, cursor: Any) -> dict[str, Any]:
        url = conn.engine.url
        cached = self._url_attributes.get(url)
        if cached is None:
            cached = _get_attributes_from_url(  # type: ignore[no-untyped-call]
                url, self._sem_conv_opt_in_mode_db, self._sem_conv_opt_in_mode_http
            )
            if len(self._url_attributes) < 64:
                self._url_attributes[url] = cached
        attributes, found = cached
        if found:
            return dict(attributes)
        return dict(
            _get_attributes_from_cursor_or_conn(  # type: ignore[no-untyped-call]
                self.vendor,
                conn,
                cursor,
                dict(attributes),
                self._sem_conv_opt_in_mode_db,
                self._sem_conv_opt_in_mode_http,
            )
        )


class _Collect:
    """Stands in for a span so the package's attribute rules write into a dict."""

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value


def trace_engine(engine: Any, enable_commenter: bool) -> LeanEngineTracer:
    from opentelemetry.instrumentation.sqlalchemy import __name__ as scope_name
    from opentelemetry.instrumentation.sqlalchemy.version import __version__

    tracer = trace.get_tracer(scope_name, __version__)
    meter = metrics.get_meter(scope_name, __version__)
    return LeanEngineTracer(tracer, engine, meter, enable_commenter)
