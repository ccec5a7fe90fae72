"""The shared backend: PostgreSQL, for several collectors writing to one store.

* Tables live in their own schema (``otelkit`` unless the URL says ``?schema=name``), so
  they never collide with an application's tables.
* Migrations run under a transaction-scoped advisory lock, so collectors starting at
  the same moment apply each migration exactly once.
* Rows go in with ``COPY`` (one per transaction of the writer), ids from a sequence, so
  concurrent writers never conflict.
* Full-text search uses the ``simple`` configuration (no stemming, like SQLite's
  ``unicode61``) over the first 100,000 characters of the body (a ``tsvector`` is
  limited to 1 MiB), with a GIN index on that expression.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from otelkit.collector.runtime.scrub import redact_url
from otelkit.logstore.query import LogQuery, Page, page_from_rows
from otelkit.logstore.records import COLUMNS, Row
from otelkit.logstore.sql import POSTGRES, POSTGRES_TSVECTOR, select_statement
from otelkit.logstore.store import Backend, ReaderConnections, StoreError, StoreUnavailableError

DEFAULT_SCHEMA = "otelkit"
PRUNE_CHUNK = 10_000
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "log records, indexes for time, service, severity and trace, text search on the body",
        f"""
        CREATE TABLE logs (
            id bigserial PRIMARY KEY,
            ts bigint NOT NULL,
            observed_ts bigint,
            severity_number smallint NOT NULL DEFAULT 0,
            severity_text text,
            body text,
            body_json boolean NOT NULL DEFAULT false,
            attributes jsonb,
            resource_attributes jsonb,
            service_name text,
            service_namespace text,
            service_version text,
            deployment_environment text,
            service_instance_id text,
            scope_name text,
            scope_version text,
            trace_id bytea,
            span_id bytea,
            flags bigint NOT NULL DEFAULT 0,
            event_name text
        );
        CREATE INDEX logs_ts ON logs (ts);
        CREATE INDEX logs_service_ts ON logs (service_name, ts);
        CREATE INDEX logs_severity_ts ON logs (severity_number, ts);
        CREATE INDEX logs_trace ON logs (trace_id, ts) WHERE trace_id IS NOT NULL;
        CREATE INDEX logs_body_fts ON logs USING gin ({POSTGRES_TSVECTOR});
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]

_COPY = f"COPY logs ({', '.join(COLUMNS)}) FROM STDIN"
# PostgreSQL text cannot hold NUL, and jsonb refuses the \u0000 escape.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
# Errors that say "the server or the connection", not "this data": worth retrying.
_TRANSIENT = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
)


def split_url(url: str) -> tuple[str, str]:
    """The libpq connection URL without our ``schema`` parameter, and the schema name."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in params if key == "schema"), DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.match(schema):
        raise StoreError(f"schema {schema!r}: expected a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
    # %20 for spaces: libpq does not read "+" in a URI as a space (options=-c%20name%3Dvalue).
    rest = urlencode([(k, v) for k, v in params if k != "schema"], quote_via=quote)
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresBackend(Backend):
    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo, self.schema = split_url(url)
        self._writer: psycopg.Connection[Any] | None = None
        self._readers: ReaderConnections[psycopg.Connection[Any]] = ReaderConnections(
            lambda: self._connect(autocommit=True), lambda conn: not conn.closed
        )

    @property
    def location(self) -> str:
        return f"PostgreSQL {redact_url(self._conninfo)} (schema {self.schema})"

    # Connections -----------------------------------------------------------------------
    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=5,
                application_name="otelkit-logstore",
            )  # fmt: skip
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.autocommit = autocommit
        except _TRANSIENT as exc:
            raise StoreUnavailableError(
                f"PostgreSQL at {redact_url(self._conninfo)}: {exc}"
            ) from exc
        return conn

    def open_writer(self) -> None:
        if self._writer is not None and not self._writer.closed:
            return
        conn = self._connect(autocommit=False)
        try:
            self._migrate(conn)
            # A commit returns once the server has flushed it to its WAL, whatever the
            # server's default: the log store's commit mode promises that to senders.
            conn.execute("SET synchronous_commit TO on")
            conn.commit()
        except _TRANSIENT as exc:
            conn.close()
            raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._writer = conn

    def _reader(self) -> psycopg.Connection[Any]:
        return self._readers.get()

    def close(self) -> None:
        self._readers.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # Schema ----------------------------------------------------------------------------
    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        schema = sql.Identifier(self.schema)
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"otelkit.logstore.{self.schema}",)
            )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = _version(conn)
            if current > LATEST:
                raise StoreError(
                    f"schema {self.schema} has version {current}; this otelkit knows up to "
                    f"{LATEST}: upgrade otelkit"
                )
            for version, description, script in MIGRATIONS:
                if version > current:
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                        (version, description),
                    )

    def schema_version(self) -> int:
        return _version(self._reader())

    # Writes ----------------------------------------------------------------------------
    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        self.open_writer()
        try:
            try:
                self._copy(rows)
            except psycopg.DataError:
                # NUL in text, or \u0000 in JSON: rare, so only then is every value checked.
                self._copy([_without_nul(row) for row in rows])
        except _TRANSIENT as exc:
            self._drop_writer()
            raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc

    def _copy(self, rows: list[Row]) -> None:
        conn = self._writer
        assert conn is not None
        try:
            with conn.cursor() as cur, cur.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # Reads -----------------------------------------------------------------------------
    def query(self, query: LogQuery) -> Page:
        statement, params = select_statement(query, POSTGRES)
        # Stored text has NUL replaced (PostgreSQL cannot hold it); search for the same.
        params = [p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params]
        rows = self._read(statement, params)
        return page_from_rows(rows, query)

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM logs", [])[0][0])

    def max_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM logs", [])[0][0])

    def _read(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        conn = self._reader()
        try:
            return conn.execute(statement, params).fetchall()
        except _TRANSIENT as exc:
            conn.close()
            raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc
        except psycopg.errors.UndefinedTable:
            raise StoreError(f"schema {self.schema} holds no otelkit log store") from None

    # Retention -------------------------------------------------------------------------
    def prune(self, older_than_ns: int | None, max_bytes: int | None) -> int:
        if max_bytes is not None:
            raise StoreError("max_size applies to SQLite stores; use retention for PostgreSQL")
        if older_than_ns is None:
            return 0
        conn = self._connect(autocommit=True)
        removed = 0
        try:
            while True:
                cur = conn.execute(
                    "DELETE FROM logs WHERE id IN "
                    "(SELECT id FROM logs WHERE ts < %s ORDER BY ts LIMIT %s)",
                    (older_than_ns, PRUNE_CHUNK),
                )
                if cur.rowcount <= 0:
                    return removed
                removed += cur.rowcount
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc
        finally:
            conn.close()

    def drop_schema(self) -> None:
        """Remove the schema and everything in it (tests and benchmarks clean up with it)."""
        with self._connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


def _version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


_BODY, _BODY_JSON = COLUMNS.index("body"), COLUMNS.index("body_json")
_JSON_COLUMNS = {COLUMNS.index("attributes"), COLUMNS.index("resource_attributes")}


def _without_nul(row: Row) -> Row:
    """NUL characters become U+FFFD, in text and in JSON escapes alike."""
    cleaned = []
    for index, value in enumerate(row):
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            if index in _JSON_COLUMNS or (index == _BODY and row[_BODY_JSON]):
                value = _JSON_NUL.sub(r"\1\\ufffd", value)
        cleaned.append(value)
    return tuple(cleaned)
