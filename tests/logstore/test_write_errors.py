"""Failed log store writes are counted, so the collector's alert sees a store that cannot
be written (the counters exist at zero from the start)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.logstore.records import Row
from otelkit.logstore.sqlite import SqliteBackend
from otelkit.logstore.store import LogStore
from tests.logstore.requests import Rec, request
from tests.logstore.test_exporter import running
from tests.support.services import free_port

WRITE_ERRORS = "otelkit_logstore_write_errors_total"


async def test_writes_to_a_down_database_are_counted() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?schema=logstore_down"
    async with running(url=url, durability="commit") as exporter:
        telemetry = exporter.telemetry
        for reason in ("unavailable", "rejected"):
            labels = {"exporter": "logstore", "reason": reason}
            assert telemetry.registry.get_sample_value(WRITE_ERRORS, labels) == 0
        for _ in range(2):
            with sender_waiting(), pytest.raises(RetryableError):
                await exporter.consume(request([Rec("cannot be stored yet")]))
        assert telemetry.value(WRITE_ERRORS, {"exporter": "logstore", "reason": "unavailable"}) == 2
        assert telemetry.value(WRITE_ERRORS, {"exporter": "logstore", "reason": "rejected"}) == 0


async def test_successful_writes_count_no_error(sqlite_url: str) -> None:
    async with running(url=sqlite_url, durability="commit") as exporter:
        await exporter.consume(request([Rec("stored")]))
    assert exporter.telemetry.total(WRITE_ERRORS) == 0


def test_repaired_records_are_counted_once_stored_not_per_attempt(sqlite_url: str) -> None:
    """A grouped write that fails is tried again request by request: its records, built
    twice, are counted once, when stored."""
    attempts: list[int] = []
    release = threading.Event()

    class FailsOnceGrouped(SqliteBackend):
        def write(self, rows: list[Row]) -> None:
            attempts.append(len(rows))
            if len(attempts) == 1:
                release.wait(10)  # holds the writer while two requests queue up
            elif len(attempts) == 2:
                raise ValueError("refused")  # the two, grouped
            super().write(rows)

    told: Counter[str] = Counter()
    store = LogStore(FailsOnceGrouped(sqlite_url))
    store.repaired = lambda value, count: told.update({value: count})
    store.start_writer()
    first = store.submit(request([Rec("holds the writer")]))
    deadline = time.monotonic() + 10
    while not attempts and time.monotonic() < deadline:
        time.sleep(0.01)
    ahead = [store.submit(request([Rec("ahead", ts=2**64 - 1)])) for _ in range(2)]
    release.set()
    assert [done.result(timeout=30) for done in (first, *ahead)] == [1, 1, 1]
    store.close()
    assert attempts == [1, 2, 1, 1]
    assert told == Counter(time=2)
