"""Failed log store writes are counted, so the collector's alert sees a store that cannot
be written (the counters exist at zero from the start)."""

from __future__ import annotations

import pytest

from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.origin import sender_waiting
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
