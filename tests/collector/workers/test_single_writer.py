"""Records a worker hands to the log store running in another worker, over the real
channel: answered as that worker's own sender would be, and never dropped for a writer
that is only gone for a moment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from otelkit.collector.runtime.component import ComponentID
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.collector.runtime.service import Service
from otelkit.collector.runtime.workers.channel import ChannelServer, Peer
from otelkit.collector.runtime.workers.process import WorkerEndpoint
from otelkit.collector.runtime.workers.routing import ForwardingExporter
from tests.logstore.requests import Rec, request
from tests.logstore.test_exporter import held_exporter, stored_bodies


def writer_endpoint(exporter: Any) -> WorkerEndpoint:
    """The endpoint of a worker whose running service holds just ``exporter``."""
    service = SimpleNamespace(
        graph=SimpleNamespace(exporters={ComponentID("logstore"): exporter}),
        host=SimpleNamespace(ready=True),
        stopping=False,
        placement=None,
    )
    return WorkerEndpoint(cast(Service, service))


def test_a_waiting_sender_is_answered_only_after_the_writer_committed(tmp_path: Path) -> None:
    asyncio.run(answered_after_the_commit(tmp_path))


async def answered_after_the_commit(tmp_path: Path) -> None:
    async with held_exporter(tmp_path) as (exporter, disk):
        server = ChannelServer(tmp_path / "worker-0.sock", writer_endpoint(exporter).handle)
        await server.start()
        forwarding = ForwardingExporter("logstore", Peer(server.path, "worker 0"))
        try:
            with sender_waiting():  # as the receiving worker's OTLP receiver delivers it
                answered = asyncio.create_task(forwarding.consume(request([Rec("r")])))
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert not answered.done()  # the commit's fsync is held in the other worker
            disk.release.set()
            await answered
            assert disk.events[0] == "fsync logs.db-wal"
        finally:
            await forwarding.shutdown()
            await server.stop()


def test_released_records_wait_for_a_writer_that_is_gone(tmp_path: Path) -> None:
    asyncio.run(released_records_wait(tmp_path))
    assert stored_bodies(f"sqlite:///{tmp_path / 'logs.db'}") == ["released"]


async def released_records_wait(tmp_path: Path) -> None:
    async with held_exporter(tmp_path) as (exporter, disk):
        disk.release.set()
        path = tmp_path / "worker-0.sock"
        forwarding = ForwardingExporter("logstore", Peer(path, "worker 0"))
        # No sender waits: a whole-trace processor released these access records.
        released = asyncio.create_task(forwarding.consume(request([Rec("released")])))
        await asyncio.sleep(0.5)  # the writer's worker is being started again
        assert not released.done()
        server = ChannelServer(path, writer_endpoint(exporter).handle)
        await server.start()
        try:
            await asyncio.wait_for(released, 10)
        finally:
            await forwarding.shutdown()
            await server.stop()
