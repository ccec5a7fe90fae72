"""The log store: OTLP log records in SQLite or PostgreSQL, searchable by service,
severity, time, text, attributes and trace ID.

One engine serves the ``logstore`` exporter, ``otelkit logs query|tail`` and the
collector's ``GET /api/logs``.
"""

from otelkit.logstore.query import LogQuery, LogRecordView, Page, QueryError, build_query
from otelkit.logstore.store import LogStore, StoreError, StoreUnavailableError, open_store

__all__ = [
    "LogQuery",
    "LogRecordView",
    "LogStore",
    "Page",
    "QueryError",
    "StoreError",
    "StoreUnavailableError",
    "build_query",
    "open_store",
]
