"""The production configuration's persistent queue under ``--workers 2``: every worker
runs the log store exporter with the same ``sending_queue.storage``. Each keeps its own
files (in one directory their sequences overwrote each other's requests: about 40% of
what was acknowledged while the database was down was gone), and a later run, with any
number of workers, delivers all of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from otelkit.logstore.postgres import PostgresBackend
from tests.collector.e2e.test_redaction import post
from tests.logstore.requests import Rec, request
from tests.support.collector import collector
from tests.support.crash import (
    PRODUCTION,
    TOKEN,
    collector_ports,
    logstore_bodies,
    move_listeners,
    production_env,
)
from tests.support.services import free_port, require_postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = f"{require_postgres()}?schema=workers_queue_{uuid.uuid4().hex[:12]}"
    yield url
    PostgresBackend(url).drop_schema()


def post_log(port: int, body: str) -> bool:
    """One request on a connection of its own (the kernel spreads them over the workers)."""
    try:
        post(port, request([Rec(body)]), {"Authorization": f"Bearer {TOKEN}"})
    except OSError:
        return False
    return True


def test_records_queued_by_two_workers_while_the_database_is_down_all_arrive(
    tmp_path: Path, pg_url: str
) -> None:
    ports = collector_ports()
    config = yaml.safe_load(PRODUCTION.read_text())
    move_listeners(config, ports)
    text = yaml.safe_dump(config, sort_keys=False)
    down = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")  # nothing listens
    data = tmp_path / "data"
    with collector(text, tmp_path, ports=ports, env=production_env(data, down, ""),
                   args=["--workers", "2"], name="workers", wait_ports=("http",)) as first:  # fmt: skip
        acknowledged = [f"queued {n}" for n in range(60) if post_log(ports["http"], f"queued {n}")]
        assert len(acknowledged) >= 50, first.log()[-3000:]
        assert first.stop(60) == 0, first.log()[-3000:]
    with collector(text, tmp_path, ports=ports, env=production_env(data, pg_url, ""),
                   name="single", wait_ports=("http",)) as second:  # fmt: skip
        stored = logstore_bodies(pg_url)
        deadline = time.monotonic() + 60
        while (missing := [b for b in acknowledged if not stored()[b.encode()]]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged records lost"
        assert second.stop(60) == 0
