"""The logstore exporter in process: durability modes, a database that comes back, the
HTTP search API and retention."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from otelkit.collector.exporters.logstore import LogStoreConfig, LogStoreExporter, factory
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.logstore.query import build_query
from otelkit.logstore.sqlite import SqliteBackend
from otelkit.logstore.store import LogStore, StoreError, open_store
from tests.logstore.conftest import random_trace_id
from tests.logstore.requests import SECOND, Rec, request
from tests.support.durable import RecordingDisk

API = {"endpoint": "127.0.0.1:0", "token": "api-token"}
API_AUTH = {"authorization": "Bearer api-token"}
SENT = "otelcol_exporter_sent_log_records_total"


def make_exporter(**config: Any) -> LogStoreExporter:
    settings = CreateSettings(ComponentID("logstore"), Kind.EXPORTER, SelfTelemetry())
    exporter = factory.create(settings, LogStoreConfig(**config), frozenset({Signal.LOGS}))
    assert isinstance(exporter, LogStoreExporter)
    return exporter


@contextlib.asynccontextmanager
async def running(**config: Any) -> AsyncIterator[LogStoreExporter]:
    exporter = make_exporter(**config)
    await exporter.start(ServiceHost())
    try:
        yield exporter
    finally:
        await exporter.shutdown()


def stored_bodies(url: str, **filters: Any) -> list[Any]:
    store = open_store(url, create=False)
    try:
        return [r.body for r in store.query(build_query(limit=1000, **filters)).records]
    finally:
        store.close()


async def test_queue_mode_stores_everything_by_shutdown(sqlite_url: str) -> None:
    async with running(url=sqlite_url) as exporter:
        for batch in range(5):
            await exporter.consume(request([Rec(f"b{batch} r{i}") for i in range(100)]))
    assert len(stored_bodies(sqlite_url)) == 500
    sent = exporter.telemetry.total("otelcol_exporter_sent_log_records_total")
    assert sent == 500


async def test_commit_mode_answers_after_the_commit(store_url: str) -> None:
    async with running(url=store_url, durability="commit") as exporter:
        # Concurrent requests are grouped into shared transactions.
        with sender_waiting():  # as a receiver delivers them
            await asyncio.gather(
                *(exporter.consume(request([Rec(f"req {n} line {i}") for i in range(20)]))
                  for n in range(10))
            )  # fmt: skip
        # Readable from another connection the moment consume returned.
        assert len(stored_bodies(store_url)) == 200


async def test_commit_mode_tells_the_sender_to_retry_when_the_database_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/test?schema=logstore_down"
    async with running(url=url, durability="commit") as exporter:
        with sender_waiting(), pytest.raises(RetryableError):
            await exporter.consume(request([Rec("cannot be stored yet")]))


class FlakyProxy:
    """A TCP proxy to PostgreSQL that can be closed and opened, as a database outage."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server: asyncio.Server | None = None

    def url_for(self, pg_url: str) -> str:
        """``pg_url`` (its database and schema) reached through this proxy."""
        base, _, schema = pg_url.partition("?")
        return base.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}") + "?" + schema

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_a_down_database_makes_batches_wait_and_retry(pg_url: str) -> None:
    proxy = FlakyProxy()
    url = proxy.url_for(pg_url)
    retry = {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "60s"}
    async with running(url=url, retry_on_failure=retry) as exporter:
        # Down from the start: accepted into the queue, nothing stored.
        await exporter.consume(request([Rec(f"waiting {i}") for i in range(50)]))
        await asyncio.sleep(0.5)
        assert exporter.queue_size() == 1
        await proxy.open()
        deadline = time.monotonic() + 30
        while exporter.queue_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(stored_bodies(pg_url)) == 50
    await proxy.close()


async def get(port: int, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=API_AUTH) as client:
        return await client.get("/api/logs", params=params)


async def test_search_api_pages_with_a_cursor(sqlite_url: str) -> None:
    trace = random_trace_id()
    now = time.time_ns()
    config = {"url": sqlite_url, "durability": "commit", "api": API}
    async with running(**config) as exporter:
        with sender_waiting():  # answered once stored, as a receiver's sender is
            await exporter.consume(
                request([Rec(f"line {i}", ts=now + i, trace_id=trace) for i in range(25)])
            )
            await exporter.consume(request([Rec("elsewhere", severity=17)], service="auth"))
        seen: list[str] = []
        params: dict[str, Any] = {"trace_id": trace.hex(), "limit": 10}
        while True:
            response = await get(exporter.api_port, **params)
            assert response.status_code == 200
            page = response.json()
            seen.extend(record["body"] for record in page["records"])
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == [f"line {i}" for i in range(25)]
        (record,) = (await get(exporter.api_port, severity="error")).json()["records"]
        assert record["service_name"] == "auth"
        assert record["trace_id"] is None
        assert record["time"].endswith("Z")


@pytest.mark.parametrize(
    ("params", "parameter", "fragment"),
    [
        ({"trace_id": "xyz"}, "trace_id", "not a trace ID"),
        ({"severity": "loud"}, "severity", "unknown severity"),
        ({"from": "yesterday"}, "from", "not a time"),
        ({"limit": "100000"}, "limit", "between 1 and 1000"),
        ({"cursor": "garbage!"}, "cursor", "not a cursor"),
        ({"colour": "red"}, "colour", "unknown parameter"),
    ],
)
async def test_search_api_explains_bad_input(
    sqlite_url: str, params: dict[str, str], parameter: str, fragment: str
) -> None:
    async with running(url=sqlite_url, api=API) as exporter:
        response = await get(exporter.api_port, **params)
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert fragment in response.json()["error"]


async def test_search_api_only_serves_get_api_logs(sqlite_url: str) -> None:
    async with (
        running(url=sqlite_url, api=API) as exporter,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{exporter.api_port}", headers=API_AUTH
        ) as client,
    ):
        assert (await client.get("/")).status_code == 404
        response = await client.post("/api/logs", content=b"{}")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


async def test_api_is_off_by_default(sqlite_url: str) -> None:
    async with running(url=sqlite_url) as exporter:
        assert exporter.api_port == 0


async def test_retention_runs_in_the_background(sqlite_url: str) -> None:
    day = 86400 * SECOND
    now = time.time_ns()
    async with running(url=sqlite_url, durability="commit", retention="0") as exporter:
        await exporter.consume(request([Rec("ancient", ts=now - 30 * day), Rec("recent")]))
    async with running(url=sqlite_url, retention="7d", prune_interval="50ms") as exporter:
        deadline = time.monotonic() + 10
        while stored_bodies(sqlite_url) != ["recent"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pruned = exporter.telemetry.total("otelkit_logstore_pruned_log_records_total")
    assert stored_bodies(sqlite_url) == ["recent"]
    assert pruned == 1


async def test_values_no_sender_should_send_are_repaired_and_counted(sqlite_url: str) -> None:
    records = [Rec("ahead", ts=2**64 - 1), Rec("odd", severity=99), Rec("fine")]
    async with running(url=sqlite_url, durability="commit") as exporter:
        with sender_waiting():
            await exporter.consume(request(records))
        # Rows built on a worker thread while the writer is busy are counted the same way.
        with sender_waiting():
            await asyncio.gather(*(exporter.consume(request(records[:2])) for _ in range(20)))
    assert sorted(stored_bodies(sqlite_url)) == ["ahead"] * 21 + ["fine"] + ["odd"] * 21
    repaired = "otelkit_logstore_repaired_log_records_total"
    assert exporter.telemetry.total(repaired, exporter="logstore", value="time") == 21
    assert exporter.telemetry.total(repaired, exporter="logstore", value="severity") == 21


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="not a log store URL"):
        LogStoreConfig(url="mysql://db/logs")
    with pytest.raises(ValidationError, match="max_size applies to SQLite"):
        LogStoreConfig(url="postgresql://db/logs", max_size="1GiB")
    with pytest.raises(ValidationError, match="durability"):
        LogStoreConfig(url="sqlite:///x.db", durability="sometimes")
    assert LogStoreConfig(url="sqlite:///x.db", retention="30d").retention == 30 * 86400
    with pytest.raises(ValidationError, match="a sqlite URL has no host"):
        LogStoreConfig(url="sqlite://logs/x.db")


async def test_an_unusable_sqlite_path_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    exporter = make_exporter(url=f"sqlite:///{blocker / 'logs.db'}")
    with pytest.raises(StoreError, match="cannot open"):
        await exporter.start(ServiceHost())


async def test_search_api_treats_hostile_input_as_text(sqlite_url: str) -> None:
    config = {"url": sqlite_url, "durability": "commit", "api": API}
    async with running(**config) as exporter:
        with sender_waiting():
            await exporter.consume(request([Rec("user 'bob' OR 1=1 logged in"), Rec("other")]))
        for text in ["' OR 1=1 --", '"; DROP TABLE logs; --', "bob* NEAR OR", "x" * 20_000]:
            response = await get(exporter.api_port, grep=text, attr=f"{text}={text}")
            assert response.status_code == 200, response.text
            assert response.json()["records"] == []
        response = await get(exporter.api_port, grep="'bob' OR 1=1")
        assert [r["body"] for r in response.json()["records"]] == ["user 'bob' OR 1=1 logged in"]
    assert len(stored_bodies(sqlite_url)) == 2


# Durable means fsynced ----------------------------------------------------------------------
async def test_commit_mode_fsyncs_the_write_ahead_log_before_the_sender_is_answered(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    db = tmp_path / "store" / "logs.db"
    exporter = make_exporter(url=f"sqlite:///{db}", durability="commit")
    exporter.store = LogStore(SqliteBackend(f"sqlite:///{db}", disk=RecordingDisk(events)))
    await exporter.start(ServiceHost())
    try:
        writer = exporter.store.backend._writer  # type: ignore[attr-defined]
        writer.set_trace_callback(lambda sql: events.append(sql) if sql == "COMMIT" else None)
        for n in range(2):
            with sender_waiting():
                await exporter.consume(request([Rec(f"r{n}.{i}") for i in range(10)]))
            events.append("acknowledged")
    finally:
        await exporter.shutdown()
    assert events == [
        "COMMIT", "fsync logs.db-wal", "fsync-dir store", "acknowledged",
        "COMMIT", "fsync logs.db-wal", "acknowledged",
    ]  # fmt: skip
    assert len(stored_bodies(f"sqlite:///{db}")) == 20


async def test_synchronous_normal_commits_without_fsync(tmp_path: Path) -> None:
    events: list[str] = []
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    exporter = make_exporter(url=url, durability="commit", synchronous="normal")
    exporter.store = LogStore(SqliteBackend(url, synchronous="normal", disk=RecordingDisk(events)))
    async with contextlib.AsyncExitStack() as stack:
        await exporter.start(ServiceHost())
        stack.push_async_callback(exporter.shutdown)
        await exporter.consume(request([Rec("r")]))
    assert events == []


@pytest.mark.service("postgres")
async def test_postgres_commit_mode_answers_after_a_commit_the_server_flushed(
    pg_url: str,
) -> None:
    # A server (or database) whose default is not to wait for the WAL flush.
    url = f"{pg_url}&options=-c%20synchronous_commit%3Doff"
    async with running(url=url, durability="commit") as exporter:
        with sender_waiting():
            await exporter.consume(request([Rec("committed")]))
        # Another connection sees the record as soon as the sender has its answer ...
        assert stored_bodies(pg_url) == ["committed"]
        writer = exporter.store.backend._writer  # type: ignore[attr-defined]
        # ... and the commit waited for the server's WAL flush whatever the default.
        assert writer.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        writer.rollback()


class HeldDisk(RecordingDisk):
    """Records as RecordingDisk; the first fsync waits until the test lets it go, so
    that writes queue up behind it."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(events)
        self.release = threading.Event()

    def fsync(self, fd: int, path: Path) -> None:
        self.release.wait(timeout=30)
        super().fsync(fd, path)


@contextlib.asynccontextmanager
async def held_exporter(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Any, HeldDisk]]:
    db = tmp_path / "logs.db"
    disk = HeldDisk([])
    exporter = make_exporter(url=f"sqlite:///{db}", durability="commit", **config)
    exporter.store = LogStore(SqliteBackend(f"sqlite:///{db}", disk=disk))
    await exporter.start(ServiceHost())
    try:
        yield exporter, disk
    finally:
        disk.release.set()
        await exporter.shutdown()


async def test_records_released_on_a_timer_share_commits(tmp_path: Path) -> None:
    # No sender waits for records a connector made from traces a whole-trace processor
    # released on its timer: they are written together, with one fsync, not one each.
    async with held_exporter(tmp_path) as (exporter, disk):
        for n in range(30):
            await exporter.consume(request([Rec(f"r{n}.{i}") for i in range(10)]))
        disk.release.set()
    # One commit for the first request and one for the rest, or one for all when the
    # writer thread is slower to take the first than the loop is to hand over the 30
    # (both seen): never one each.
    assert 1 <= disk.events.count("fsync logs.db-wal") <= 2
    assert len(stored_bodies(f"sqlite:///{tmp_path / 'logs.db'}")) == 300
    assert exporter.telemetry.total("otelcol_exporter_sent_log_records_total") == 300


async def test_released_records_wait_when_too_many_are_unwritten(tmp_path: Path) -> None:
    async with held_exporter(tmp_path, max_batch_records=100) as (exporter, disk):
        await exporter.consume(request([Rec(f"a{i}") for i in range(60)]))
        second = asyncio.create_task(exporter.consume(request([Rec(f"b{i}") for i in range(60)])))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not second.done()  # 120 records unwritten: the caller waits for the disk
        disk.release.set()
        await second
    assert len(stored_bodies(f"sqlite:///{tmp_path / 'logs.db'}")) == 120


async def test_a_waiting_sender_is_answered_only_after_its_commit(tmp_path: Path) -> None:
    async with held_exporter(tmp_path) as (exporter, disk):
        with sender_waiting():
            answered = asyncio.create_task(exporter.consume(request([Rec("r")])))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not answered.done()  # its commit's fsync is held
        disk.release.set()
        await answered
        assert disk.events[0] == "fsync logs.db-wal"


async def test_released_records_wait_while_the_database_is_down(pg_url: str) -> None:
    # Records no sender will send again (made from traces already acknowledged) are not
    # dropped when a write fails: they wait, and are written once the database is back.
    proxy = FlakyProxy()
    url = proxy.url_for(pg_url)
    retry = {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "60s"}
    async with running(url=url, durability="commit", retry_on_failure=retry) as exporter:
        for n in range(5):
            await exporter.consume(request([Rec(f"released {n}.{i}") for i in range(10)]))
        await asyncio.sleep(0.5)
        assert exporter.telemetry.total("otelkit_logstore_write_errors_total") >= 5
        assert exporter.telemetry.total("otelcol_exporter_send_failed_log_records_total") == 0
        await proxy.open()
        deadline = time.monotonic() + 30
        while exporter.telemetry.total(SENT) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(stored_bodies(pg_url)) == 50
        assert exporter.telemetry.total(SENT) == 50
    await proxy.close()


async def test_released_records_still_unwritten_at_shutdown_are_counted(pg_url: str) -> None:
    proxy = FlakyProxy()  # never opened: the database stays down
    url = proxy.url_for(pg_url)
    exporter = make_exporter(url=url, durability="commit")  # retries: 5 s apart, for 5 min
    await exporter.start(ServiceHost())
    await exporter.consume(request([Rec(f"never stored {i}") for i in range(7)]))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await exporter.shutdown()  # one last write, not the remaining five minutes
    assert time.monotonic() - started < 10
    dropped = exporter.telemetry.total("otelcol_exporter_send_failed_log_records_total")
    assert dropped == 7
