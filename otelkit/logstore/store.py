"""The storage engine behind the exporter, the CLI and the HTTP API.

:class:`LogStore` wraps one backend (SQLite or PostgreSQL, chosen by URL) and owns the
writer thread. Writes are *group committed*: every request waiting when the writer
turns to the queue goes into one transaction, and each caller's future resolves only
once that transaction has committed. Many small concurrent requests therefore cost one
commit, and a caller that waits on its future knows its records are durable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otelkit.logstore.query import LogQuery, Page
from otelkit.logstore.records import Row, rows_from_request

log = logging.getLogger("otelkit.logstore")
# Told, once they are stored, how many records had a value repaired, and which value
# ("time", "severity"); called only when there were some.
Repaired = Callable[[str, int], None]


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class ReaderConnections(Generic[C]):
    """One read connection per thread, made on first use and closed all together.

    Queries come from the API server's and the CLI's threads; neither sqlite3 nor psycopg
    connections may be used by two threads at once, and opening one per query is slow.
    """

    def __init__(self, connect: Callable[[], C], usable: Callable[[C], bool]) -> None:
        self._connect = connect
        self._usable = usable
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def get(self) -> C:
        conn: C | None = getattr(self._local, "conn", None)
        if conn is None or not self._usable(conn):
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class StoreError(Exception):
    """The store cannot do what was asked, and trying again will not help."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or is busy right now; the same write may succeed later."""


class Backend(ABC):
    """One database behind the store. Methods are called from worker threads."""

    url: str

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the records live, safe to print: a resolved file path or a URL without
        its password."""

    @abstractmethod
    def open_writer(self) -> None:
        """Connect the writer and apply pending migrations (idempotent)."""

    @abstractmethod
    def write(self, rows: list[Row]) -> None:
        """Insert rows in one transaction; raise StoreUnavailableError when worth retrying."""

    @abstractmethod
    def query(self, query: LogQuery) -> Page: ...

    @abstractmethod
    def prune(self, older_than_ns: int | None, max_bytes: int | None) -> int:
        """Delete records older than ``older_than_ns`` and then the oldest records while
        the data is larger than ``max_bytes``, in short transactions. Returns the count."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def max_id(self) -> int:
        """The highest record id stored so far (0 when empty): where ``tail`` starts."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass
class _Job:
    request: ExportLogsServiceRequest | None
    rows: list[Row] | None
    done: Future[int]
    # Records whose value was repaired, by value: counted when the rows are built, told
    # (to ``repaired``) only once they are stored, so that a retried write counts once.
    repairs: Counter[str] = field(default_factory=Counter)


_STOP = object()


class BatchWriter:
    """A thread that writes queued requests, as many per transaction as are waiting."""

    def __init__(
        self, backend: Backend, max_batch_records: int = 20_000, repaired: Repaired | None = None
    ) -> None:
        self._backend = backend
        self._max = max_batch_records
        self._repaired = repaired
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writing = False
        self._thread = threading.Thread(target=self._run, name="logstore-writer", daemon=True)
        self._thread.start()

    def submit(self, request: ExportLogsServiceRequest) -> Future[int]:
        """Queue a request; the future gives the number of rows once committed."""
        job = _Job(request, None, Future())
        self._queue.put(job)
        return job.done

    def submit_rows(self, rows: list[Row], repairs: Counter[str] | None = None) -> Future[int]:
        job = _Job(None, rows, Future(), repairs if repairs is not None else Counter())
        self._queue.put(job)
        return job.done

    @property
    def busy(self) -> bool:
        """Writing, or with requests waiting (a hint: it may change at once)."""
        return self._writing or not self._queue.empty()

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Job)
            self._writing = True
            jobs = [item]
            stop = self._gather(jobs)
            # A caller that gave up (timed out) before its write started is not written.
            jobs = [job for job in jobs if job.done.set_running_or_notify_cancel()]
            if jobs:
                self._write(jobs)
            self._writing = False
            if stop:
                return

    def _gather(self, jobs: list[_Job]) -> bool:
        """Add waiting jobs up to the batch size; True when the stop marker was reached."""
        size = _size(jobs[0])
        while size < self._max:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            assert isinstance(item, _Job)
            jobs.append(item)
            size += _size(item)
        return False

    def _write(self, jobs: list[_Job]) -> None:
        now = time.time_ns()
        try:
            rows_per_job = [_rows(job, now) for job in jobs]
            self._backend.write([row for rows in rows_per_job for row in rows])
        except StoreUnavailableError as exc:
            for job in jobs:
                job.done.set_exception(exc)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].done.set_exception(_as_store_error(exc))
                return
            # One bad request must not fail the others it was grouped with.
            log.warning("logstore: grouped write failed (%s); writing requests one by one", exc)
            for job in jobs:
                self._write([job])
        else:
            for job, rows in zip(jobs, rows_per_job, strict=True):
                self._report(job.repairs)
                job.done.set_result(len(rows))

    def _report(self, repairs: Counter[str]) -> None:
        if self._repaired is not None:
            for value, count in repairs.items():
                if count:
                    self._repaired(value, count)


def _size(job: _Job) -> int:
    if job.rows is not None:
        return len(job.rows)
    assert job.request is not None
    return sum(len(sl.log_records) for rl in job.request.resource_logs for sl in rl.scope_logs)


def _rows(job: _Job, now: int) -> list[Row]:
    if job.rows is not None:
        return job.rows
    assert job.request is not None
    job.repairs.clear()  # built again when a grouped write is retried request by request
    return rows_from_request(job.request, now, job.repairs)


def _as_store_error(exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    error = StoreError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class LogStore:
    """A log store: one backend, an optional writer thread, and the query engine."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._writer: BatchWriter | None = None
        # Told of records stored with a repaired value (set before the writer starts).
        self.repaired: Repaired | None = None

    @property
    def url(self) -> str:
        return self.backend.url

    def start_writer(self, max_batch_records: int = 20_000) -> None:
        """Connect and migrate, then start the writer thread (raises if unreachable)."""
        self.backend.open_writer()
        self.start_writer_thread(max_batch_records)

    def start_writer_thread(self, max_batch_records: int = 20_000) -> None:
        """Start the writer thread; it connects on its first write if not yet connected."""
        if self._writer is None:
            self._writer = BatchWriter(self.backend, max_batch_records, self.repaired)

    def submit(self, request: ExportLogsServiceRequest) -> Future[int]:
        if self._writer is None:
            raise RuntimeError("the log store's writer is not started")
        return self._writer.submit(request)

    @property
    def writer_busy(self) -> bool:
        """Whether the writer thread is writing or has requests waiting."""
        return self._writer is not None and self._writer.busy

    def submit_rows(self, rows: list[Row], repairs: Counter[str] | None = None) -> Future[int]:
        """Queue rows already built with :func:`rows_from_request` (and what it repaired)."""
        if self._writer is None:
            raise RuntimeError("the log store's writer is not started")
        return self._writer.submit_rows(rows, repairs)

    def write_rows(self, rows: list[Row]) -> None:
        """Insert prepared rows in one transaction, on the calling thread (bulk loads)."""
        self.backend.open_writer()
        self.backend.write(rows)

    def query(self, query: LogQuery) -> Page:
        return self.backend.query(query)

    def prune(self, retention_s: float | None, max_bytes: int | None = None) -> int:
        cutoff = time.time_ns() - int(retention_s * 1e9) if retention_s else None
        return self.backend.prune(cutoff, max_bytes)

    def count(self) -> int:
        return self.backend.count()

    def max_id(self) -> int:
        return self.backend.max_id()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.backend.close()


def open_store(url: str, *, create: bool = True, synchronous: str = "full") -> LogStore:
    """A store for ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` or
    ``postgresql://user@host:port/db[?schema=name]``.

    With ``create=False`` (the CLI) a missing SQLite file is an error instead of a new
    empty store.
    """
    if url.startswith("sqlite:"):
        from otelkit.logstore.sqlite import SqliteBackend

        return LogStore(SqliteBackend(url, create=create, synchronous=synchronous))
    if url.startswith(("postgresql://", "postgres://")):
        from otelkit.logstore.postgres import PostgresBackend

        return LogStore(PostgresBackend(url))
    raise StoreError(
        f"{url!r} is not a log store URL: expected sqlite:///path/to/logs.db or "
        "postgresql://user@host:5432/db"
    )
