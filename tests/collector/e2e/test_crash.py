"""SIGKILL mid-stream through the shipped configurations: nothing acknowledged is lost.

Real SDK exporters stream traces, metrics and logs; the collector is killed with SIGKILL
once a good part was acknowledged, then started again on the same data directory. Every
item whose export the SDK saw succeed must arrive: in the PostgreSQL log store for logs
(the production config's own log pipeline) and, for traces and metrics, at a downstream
collector fed by pipelines shaped like that log pipeline (persistent queue, batching
after it). The default config's SQLite log store is checked the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelkit.logstore.postgres import PostgresBackend
from tests.sentry.standin import sentry_standin
from tests.support.crash import (
    collector_ports,
    crash_and_recover,
    default_env,
    default_shaped,
    downstream_standin,
    file_keys,
    logstore_bodies,
    production_env,
    production_shaped,
)
from tests.support.services import require_postgres

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = f"{require_postgres()}?schema=crash_{uuid.uuid4().hex[:12]}"
    yield url
    PostgresBackend(url).drop_schema()


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_sigkill_through_the_production_config_loses_nothing_acknowledged(
    signal: str, tmp_path: Path, pg_url: str
) -> None:
    with sentry_standin() as sentry, downstream_standin(tmp_path) as (downstream, out):
        ports = collector_ports()
        delivered = logstore_bodies(pg_url) if signal == "logs" else file_keys(out, signal)
        result = crash_and_recover(
            f"production-{signal}",
            signal,
            production_shaped(ports, downstream),
            tmp_path,
            ports,
            production_env(tmp_path / "data", pg_url, sentry.dsn),
            delivered=delivered,
        )
    assert result.acknowledged >= 1500
    assert result.lost == 0, f"{result.lost} of {result.acknowledged} acknowledged lost"


def test_sigkill_through_the_default_config_loses_no_acknowledged_log_record(
    tmp_path: Path,
) -> None:
    ports = collector_ports()
    data = tmp_path / "data"
    env = {**default_env(ports, data), "SENTRY_DSN": ""}
    result = crash_and_recover(
        "default-logs",
        "logs",
        default_shaped(),
        tmp_path,
        ports,
        env,
        delivered=logstore_bodies(f"sqlite:///{data / 'logs.db'}"),
    )
    assert result.acknowledged >= 1500
    assert result.lost == 0, f"{result.lost} of {result.acknowledged} acknowledged lost"
