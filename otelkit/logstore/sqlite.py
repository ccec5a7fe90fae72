"""The embedded backend: one SQLite file in WAL mode with an FTS5 index on the body.

* WAL lets readers (CLI, HTTP API) run while the collector writes.
* A committed transaction is in the WAL file before ``COMMIT`` returns, so it survives
  the process being killed. With ``synchronous: full`` (the default) the writer then
  fsyncs the WAL file (and, once, its directory) before the write counts as done, so it
  also survives a power loss: SQLite's own ``synchronous=FULL`` guarantee, done through
  the one durability seam (:mod:`~otelkit.collector.runtime.durable`) where tests can
  see it happen before the sender is answered. SQLite itself runs with
  ``synchronous=NORMAL``, which syncs around checkpoints.
* The FTS5 table is an external-content index over ``logs.body``. It is filled with one
  ``INSERT ... SELECT`` per transaction rather than a per-row trigger (several times
  faster), and entries are removed the same way before rows are pruned.
* Trace IDs are looked up through a second FTS5 table (``detail=none``) over their hex
  form, not a B-tree index: trace IDs are random, and a B-tree on random keys dirties
  nearly every index page in every transaction, which in WAL mode means rewriting the
  whole index per commit once the store is large. FTS5 appends segments and merges them
  in the background (a log-structured index), so its cost stays flat as the store grows.
* ``auto_vacuum=INCREMENTAL`` lets pruning hand free pages back to the file system.
* sqlite3 binds ``None``, ``bytes`` and ``bool`` (a record's empty columns, its trace and
  span IDs, ``body_json``) only after looking for an adapter for their type, a search
  whose last step raises and formats an ``AttributeError`` before the value is bound as
  it is. Registering the identity as their adapter ends the search at its first step:
  the same values are bound, at a third to half the CPU each (about 1 us per record).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

from otelkit.collector.runtime.durable import DISK, Disk
from otelkit.logstore.query import LogQuery, Page, page_from_rows
from otelkit.logstore.records import COLUMNS, Row
from otelkit.logstore.sql import SQLITE, select_statement
from otelkit.logstore.store import Backend, ReaderConnections, StoreError, StoreUnavailableError

# Each migration is applied once, in order, in one transaction with its version row.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "log records; indexes for time, service and severity; FTS5 on the body and trace IDs",
        """
        CREATE TABLE logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts INTEGER NOT NULL,
            observed_ts INTEGER,
            severity_number INTEGER NOT NULL DEFAULT 0,
            severity_text TEXT,
            body TEXT,
            body_json INTEGER NOT NULL DEFAULT 0,
            attributes TEXT,
            resource_attributes TEXT,
            service_name TEXT,
            service_namespace TEXT,
            service_version TEXT,
            deployment_environment TEXT,
            service_instance_id TEXT,
            scope_name TEXT,
            scope_version TEXT,
            trace_id BLOB,
            span_id BLOB,
            flags INTEGER NOT NULL DEFAULT 0,
            event_name TEXT,
            trace_hex TEXT GENERATED ALWAYS AS (hex(trace_id)) VIRTUAL
        );
        CREATE INDEX logs_ts ON logs (ts);
        CREATE INDEX logs_service_ts ON logs (service_name, ts);
        CREATE INDEX logs_severity_ts ON logs (severity_number, ts);
        CREATE VIRTUAL TABLE logs_fts USING fts5(
            body, content='logs', content_rowid='id', columnsize=0
        );
        CREATE VIRTUAL TABLE logs_trace_fts USING fts5(
            trace_hex, content='logs', content_rowid='id', columnsize=0, detail=none
        );
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]
PRUNE_CHUNK = 5_000
WAL_CHECKPOINT_PAGES = 10_000  # 40 MiB with 4 KiB pages

# Rows go in as multi-row INSERTs: sqlite3's executemany releases and re-takes the GIL
# around every row, and under a busy event loop each re-take can wait a switch interval.
# A transaction's rows are split into statements of power-of-two sizes up to this many
# rows (1,300 rows: 512 + 512 + 256 + 16 + 4), so that only ten statements are ever
# prepared: sqlite3 caches statements by their text, and compiling one of a new size
# would cost about 4 us a row, twice what running it costs.
ROWS_PER_STATEMENT = 512
_ROW_MARKS = "(" + ", ".join("?" for _ in COLUMNS) + ")"
# Full-text entries for the rows a transaction added (one statement, not a row trigger).
_INDEX_NEW = (
    "INSERT INTO logs_fts (rowid, body) SELECT id, body FROM logs WHERE id > ? AND body IS NOT NULL",
    "INSERT INTO logs_trace_fts (rowid, trace_hex) SELECT id, trace_hex FROM logs "
    "WHERE id > ? AND trace_id IS NOT NULL",
)
_OLDEST = "SELECT id FROM logs WHERE {where} ORDER BY ts, id LIMIT ?"
_UNINDEX = (
    "INSERT INTO logs_fts (logs_fts, rowid, body) SELECT 'delete', id, body FROM logs "
    "WHERE id IN ({ids}) AND body IS NOT NULL",
    "INSERT INTO logs_trace_fts (logs_trace_fts, rowid, trace_hex) "
    "SELECT 'delete', id, trace_hex FROM logs WHERE id IN ({ids}) AND trace_id IS NOT NULL",
)
_FTS_TABLES = ("logs_fts", "logs_trace_fts")
_DELETE = "DELETE FROM logs WHERE id IN ({ids})"


def _as_is(value: bytes | bool | None) -> bytes | bool | None:
    return value


sqlite3.register_adapter(type(None), _as_is)
sqlite3.register_adapter(bytes, _as_is)
sqlite3.register_adapter(bool, _as_is)


def path_from_url(url: str) -> Path:
    """The database file of a ``sqlite:`` URL, read as SQLAlchemy reads it.

    ``sqlite:///logs.db`` is relative to the working directory and ``sqlite:////var/lib/
    otelkit/logs.db`` is absolute (four slashes), the convention Python users already know
    from SQLAlchemy. ``sqlite:logs.db`` is also accepted as a relative path.
    """
    rest = url.removeprefix("sqlite:").split("?", 1)[0]
    if rest.startswith("///"):
        rest = rest[3:]
    elif rest.startswith("//"):
        raise StoreError(
            f"{url!r}: a sqlite URL has no host; use sqlite:///relative/logs.db "
            "or sqlite:////absolute/logs.db"
        )
    if not rest or rest == ":memory:":
        raise StoreError(f"{url!r}: expected sqlite:///path/to/logs.db (a file, not memory)")
    return Path(rest)


class SqliteBackend(Backend):
    def __init__(
        self, url: str, *, create: bool = True, synchronous: str = "full", disk: Disk = DISK
    ) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._create = create
        if synchronous not in ("normal", "full"):
            raise StoreError(f"synchronous: {synchronous!r} is not normal or full")
        self._fsync_commits = synchronous == "full"
        self._disk = disk
        self._directory_synced = False
        self._writer: sqlite3.Connection | None = None
        self._readers = ReaderConnections(self._connect_reader, lambda conn: True)

    @property
    def location(self) -> str:
        return f"SQLite {self.path.resolve()}"

    # Connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not self._create and not self.path.exists():
            raise StoreError(f"no log store at {self.path}")
        try:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-32768")
        return conn

    def open_writer(self) -> None:
        if self._writer is not None:
            return
        conn = self._connect()
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        # Checkpoint in larger steps: index pages that change in every transaction are
        # then copied back to the database once per checkpoint, with one pair of fsyncs.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._writer = conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        self._check_schema(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        return self._readers.get()

    def close(self) -> None:
        self._readers.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # Schema ----------------------------------------------------------------------------
    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL mode")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                "applied_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')))"
            )
            current = _version(conn)
            if current > LATEST:
                raise StoreError(
                    f"{self.path} has schema version {current}; this otelkit knows up to "
                    f"{LATEST}: upgrade otelkit"
                )
            for version, description, script in MIGRATIONS:
                if version > current:
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                        (version, description),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            current = _version(conn)
        except sqlite3.Error:
            current = 0
        if current == 0:
            raise StoreError(f"{self.path} is not an otelkit log store (no schema_version)")
        if current > LATEST:
            raise StoreError(f"{self.path} has schema version {current}; upgrade otelkit")

    def schema_version(self) -> int:
        return _version(self._reader())

    # Writes ----------------------------------------------------------------------------
    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        self.open_writer()
        conn = self._writer
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
                start = 0
                for size in _statement_sizes(len(rows)):
                    chunk = rows[start : start + size]
                    conn.execute(_insert(size), list(chain.from_iterable(chunk)))
                    start += size
                for statement in _INDEX_NEW:
                    conn.execute(statement, (last,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if self._fsync_commits:
                self._sync_log()
        except (sqlite3.OperationalError, OSError) as exc:
            # Locked, busy, disk full, I/O error: the same write may work later.
            raise StoreUnavailableError(f"{self.path}: {exc}") from exc

    def _sync_log(self) -> None:
        """fsync the write-ahead log holding the commit (and, the first time, the directory
        that names it and the database)."""
        self._disk.fsync_file(self.path.with_name(self.path.name + "-wal"))
        if not self._directory_synced:
            self._disk.fsync_directory(self.path.resolve().parent)
            self._directory_synced = True

    # Reads -----------------------------------------------------------------------------
    def query(self, query: LogQuery) -> Page:
        sql, params = select_statement(query, SQLITE)
        return page_from_rows(self._read(sql, params), query)

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM logs", ())[0][0])

    def max_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM logs", ())[0][0])

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailableError(f"{self.path}: {exc}") from exc
            raise StoreError(f"{self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def integrity_check(self) -> list[str]:
        """Problems ``PRAGMA integrity_check`` and the FTS5 check find (empty when none)."""
        conn = self._reader()
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        for table in _FTS_TABLES:
            try:
                conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")
            except sqlite3.DatabaseError as exc:
                problems.append(f"full-text index {table}: {exc}")
        return problems

    # Retention -------------------------------------------------------------------------
    def prune(self, older_than_ns: int | None, max_bytes: int | None) -> int:
        try:
            return self._prune(older_than_ns, max_bytes)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: pruning: {exc}") from exc

    def _prune(self, older_than_ns: int | None, max_bytes: int | None) -> int:
        conn = self._connect()
        try:
            removed = 0
            if older_than_ns is not None:
                while deleted := self._delete_oldest(conn, "ts < ?", (older_than_ns,)):
                    removed += deleted
            if max_bytes is not None:
                while (used := _used_bytes(conn)) > max_bytes:
                    # Delete about the share of rows by which the data is too large.
                    share = (used - max_bytes) / used
                    chunk = min(PRUNE_CHUNK, max(100, int(_row_estimate(conn) * share) + 1))
                    deleted = self._delete_oldest(conn, "1 = 1", (), chunk)
                    if not deleted:
                        break
                    removed += deleted
                    # Deleting from FTS5 appends tombstones; merging applies them, so the
                    # index shrinks and the size measured next time is real.
                    for table in _FTS_TABLES:
                        conn.execute(f"INSERT INTO {table} ({table}, rank) VALUES ('merge', 500)")
            if removed:
                conn.execute("PRAGMA incremental_vacuum")
            return removed
        finally:
            conn.close()

    def _delete_oldest(
        self,
        conn: sqlite3.Connection,
        where: str,
        params: tuple[int, ...],
        chunk: int = PRUNE_CHUNK,
    ) -> int:
        """One short transaction, so the writer waits at most one chunk."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            sql = _OLDEST.format(where=where)
            ids = [row[0] for row in conn.execute(sql, (*params, chunk))]
            if ids:
                marks = ", ".join("?" for _ in ids)
                for statement in _UNINDEX:
                    conn.execute(statement.format(ids=marks), ids)
                conn.execute(_DELETE.format(ids=marks), ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(ids)


def _statement_sizes(rows: int) -> list[int]:
    """Full statements, then the rest by its binary digits, largest first."""
    full, rest = divmod(rows, ROWS_PER_STATEMENT)
    return [ROWS_PER_STATEMENT] * full + [
        1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1
    ]


@lru_cache(maxsize=16)
def _insert(rows: int) -> str:
    columns = ", ".join(COLUMNS)
    return f"INSERT INTO logs ({columns}) VALUES " + ", ".join([_ROW_MARKS] * rows)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def _row_estimate(conn: sqlite3.Connection) -> int:
    """Rows in the table, from the id range (exact count is a full scan)."""
    low, high = conn.execute("SELECT min(id), max(id) FROM logs").fetchone()
    return int(high - low + 1) if low is not None else 0


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)
