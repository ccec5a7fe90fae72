"""The internal channel passes each owner's answer back as the same kind of outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from otelkit.collector.runtime.errors import (
    OverloadedError,
    PermanentError,
    RetryableError,
)
from otelkit.collector.runtime.workers.channel import ChannelServer, Op, Peer


async def _handler(op: Op, name: str, body: bytes) -> bytes:
    if name == "full":
        raise RetryableError("queue is full", retry_after=2.5)
    if name == "slow-down":
        raise OverloadedError("over the limit", retry_after=4.0)
    if name == "broken":
        raise PermanentError("cannot be delivered")
    if name == "bug":
        raise KeyError("a bug")
    if name == "wait":
        await asyncio.sleep(float(body))
    return body[::-1]


def _run(tmp_path: Path, *calls: tuple[str, bytes]) -> list[bytes | BaseException]:
    async def main() -> list[bytes | BaseException]:
        server = ChannelServer(tmp_path / "worker-0.sock", _handler)
        await server.start()
        peer = Peer(server.path, "worker 0")
        try:
            return await asyncio.gather(
                *(peer.call(Op.CONSUME, name, body) for name, body in calls),
                return_exceptions=True,
            )
        finally:
            await peer.close()
            await server.stop()

    return asyncio.run(main())


def test_answers_come_back_to_their_calls_when_many_are_in_flight(tmp_path: Path) -> None:
    calls = [("wait", f"0.0{i % 3}".encode()) for i in range(30)]
    assert _run(tmp_path, *calls) == [body[::-1] for _, body in calls]


def test_refusals_keep_their_kind_and_delay(tmp_path: Path) -> None:
    full, slow, broken, bug = _run(
        tmp_path, ("full", b""), ("slow-down", b""), ("broken", b""), ("bug", b"")
    )
    assert type(full) is RetryableError and full.retry_after == 2.5
    assert isinstance(slow, OverloadedError) and slow.retry_after == 4.0
    assert isinstance(broken, PermanentError) and "cannot be delivered" in str(broken)
    assert type(bug) is RetryableError  # a bug downstream: retryable, as in one process


def test_a_worker_that_is_gone_is_a_retryable_refusal(tmp_path: Path) -> None:
    async def main() -> None:
        peer = Peer(tmp_path / "worker-1.sock", "worker 1")
        with pytest.raises(RetryableError, match="worker 1 is not reachable"):
            await peer.call(Op.CONSUME, "otlp", b"data")

    asyncio.run(main())


def test_a_call_in_flight_when_the_worker_goes_is_refused_not_lost(tmp_path: Path) -> None:
    async def main() -> None:
        server = ChannelServer(tmp_path / "worker-0.sock", _handler)
        await server.start()
        peer = Peer(server.path, "worker 0")
        waiting = asyncio.create_task(peer.call(Op.CONSUME, "wait", b"30"))
        await asyncio.sleep(0.2)
        await server.stop()
        with pytest.raises(RetryableError):
            await asyncio.wait_for(waiting, 10)
        await peer.close()

    asyncio.run(main())
