"""The log store's search API: off by default, never without credentials, and only for an
allowed Host (a page on evil.example that rebinds its name to 127.0.0.1 gets nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from otelkit.collector.exporters.logstore import LogStoreConfig
from otelkit.collector.runtime.component import Component, ComponentID
from otelkit.collector.runtime.graph import Graph
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.collector.runtime.service import ServiceHost
from tests.collector.security.support import TOKEN, exporter, extension
from tests.logstore.requests import Rec, request


@asynccontextmanager
async def api(
    tmp_path: Path, extensions: dict[str, Component] | None = None, **settings: Any
) -> AsyncIterator[Any]:
    graph = Graph()
    graph.extensions = {ComponentID.parse(k): v for k, v in (extensions or {}).items()}
    host = ServiceHost(graph)
    for ext in graph.extensions.values():
        await ext.start(host)
    store = exporter(
        "logstore",
        url=f"sqlite:///{tmp_path / 'logs.db'}",
        durability="commit",
        api={"endpoint": "127.0.0.1:0", **settings},
    )
    await store.start(host)
    try:
        with sender_waiting():
            await store.consume(request([Rec("card 4111 declined")]))
        yield store
    finally:
        await store.shutdown()
        for ext in graph.extensions.values():
            await ext.shutdown()


async def search(port: int, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/api/logs", headers=headers)


def refused(store: Any, reason: str) -> float:
    return float(
        store.telemetry.total("otelkit_logstore_api_refused_requests_total", reason=reason)
    )


async def test_own_token_is_required(tmp_path: Path) -> None:
    async with api(tmp_path, token=TOKEN) as store:
        port = store.api_port
        for headers in ({}, {"authorization": "Bearer guess"}, {"authorization": TOKEN}):
            response = await search(port, headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert "card" not in response.text and TOKEN not in response.text
        ok = await search(port, {"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert [r["body"] for r in ok.json()["records"]] == ["card 4111 declined"]
        assert refused(store, "unauthenticated") == 3


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8890", "127.0.0.2", ""])
async def test_a_foreign_host_header_is_refused_even_with_the_token(
    tmp_path: Path, host: str
) -> None:
    """DNS rebinding: the browser sends the attacker's name as Host (and no token, but a
    leaked one must not help either)."""
    async with api(tmp_path, token=TOKEN) as store:
        headers = {"authorization": f"Bearer {TOKEN}", "host": host}
        response = await search(store.api_port, headers)
        assert response.status_code == 400
        assert "allowed_hosts" in response.json()["error"]
        assert refused(store, "host") == 1


async def test_loopback_names_are_allowed_by_default(tmp_path: Path) -> None:
    async with api(tmp_path, token=TOKEN) as store:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for host in ("localhost", f"127.0.0.1:{store.api_port}", "[::1]:8890", "LOCALHOST:1"):
            assert (await search(store.api_port, {**auth, "host": host})).status_code == 200


async def test_allowed_hosts_takes_names_and_domains(tmp_path: Path) -> None:
    async with api(tmp_path, token=TOKEN, allowed_hosts=["logs.internal", ".corp.example"]) as s:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for host, status in [
            ("logs.internal:8890", 200),
            ("eu.corp.example", 200),
            ("corp.example.evil.example", 400),
            ("localhost", 400),
        ]:
            assert (await search(s.api_port, {**auth, "host": host})).status_code == status, host


async def test_the_bearertokenauth_extension_guards_the_api(tmp_path: Path) -> None:
    auth = extension("bearertokenauth", token=TOKEN)
    async with api(
        tmp_path, {"bearertokenauth": auth}, auth={"authenticator": "bearertokenauth"}
    ) as store:
        assert (await search(store.api_port, {})).status_code == 401
        good = await search(store.api_port, {"authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200


def test_an_api_without_credentials_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="serves every stored record"):
        LogStoreConfig(url="sqlite:///x.db", api={"endpoint": "127.0.0.1:8890"})
    with pytest.raises(ValidationError, match="token is empty"):
        LogStoreConfig(url="sqlite:///x.db", api={"endpoint": "127.0.0.1:8890", "token": " "})


async def test_the_api_is_off_by_default(tmp_path: Path) -> None:
    store = exporter("logstore", url=f"sqlite:///{tmp_path / 'logs.db'}")
    await store.start(ServiceHost())
    try:
        assert store.api_port == 0
    finally:
        await store.shutdown()
