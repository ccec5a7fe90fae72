"""Fixtures for the log store tests: a store per backend, and OTLP requests to feed it."""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelkit.logstore.postgres import PostgresBackend
from otelkit.logstore.store import LogStore, open_store
from tests.support.services import require_postgres


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in this directory on a fresh event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


def postgres_url() -> str:
    """A URL for the test PostgreSQL with a schema of its own (dropped by the caller)."""
    base = require_postgres()
    return f"{base}?schema=logstore_test_{uuid.uuid4().hex[:12]}"


def drop_postgres_schema(url: str) -> None:
    PostgresBackend(url).drop_schema()


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = postgres_url()
    yield url
    drop_postgres_schema(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'logs.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'logs.db'}"
        return
    url = postgres_url()
    yield url
    drop_postgres_schema(url)


@pytest.fixture
def store(store_url: str) -> Iterator[LogStore]:
    opened = open_store(store_url)
    opened.start_writer()
    yield opened
    opened.close()


def random_trace_id() -> bytes:
    return os.urandom(16)
