"""The internal channel between worker processes and their supervisor.

Each worker listens on a Unix socket in the supervisor's private runtime directory
(mode 0700, so only the collector's user reaches it). The protocol is a small
length-prefixed one, multiplexed over one connection per peer::

    request:  request id (u32), op (u8), name length (u16), body length (u32), name, body
    response: request id (u32), outcome (u8), body length (u32), body

Requests on one connection are served concurrently and answered in any order. A
forwarded share of a request is OTLP protobuf (the ``Export*ServiceRequest`` bytes);
the answer carries the owner's outcome, so a refusal reaches the original sender as the
same retryable or permanent status. A peer that is gone or does not answer in
:data:`CALL_TIMEOUT_SECONDS` is a retryable error: the sender tries again, and nothing
is acknowledged that was not accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

from otelkit.collector.runtime.errors import (
    ComponentError,
    OverloadedError,
    PermanentError,
    RetryableError,
)

log = logging.getLogger("otelkit.collector.workers")

CALL_TIMEOUT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5.0
PEER_RETRY_AFTER = 1.0
_REQUEST = struct.Struct(">IBHI")
_RESPONSE = struct.Struct(">IBI")


class Op(IntEnum):
    CONSUME = 1
    """A share of a received request, for the named receiver's pipelines in the owner."""
    EXPORT = 2
    """Data for the named single-writer exporter, which runs in one worker only; a sender
    waits for the answer (the exporter answers as it would that sender)."""
    STATE = 3
    """Readiness and component statuses, as JSON, for the supervisor's health view."""
    SELF_METRICS = 4
    """The worker's own metrics in the Prometheus text format."""
    SCRAPE = 5
    """The named prometheus exporter's series, for the supervisor's one scrape view."""
    EXPORT_ACKNOWLEDGED = 6
    """As EXPORT, for data whose senders were answered long ago (released by a whole-trace
    processor): nobody waits for the exporter's answer."""
    COMPONENT = 7
    """A question for the component of the named label (as in the graph), from the same
    component in another worker; the body and the answer are that component's own."""


class Outcome(IntEnum):
    OK = 0
    RETRYABLE = 1
    OVERLOADED = 2
    PERMANENT = 3


Handler = Callable[[Op, str, bytes], Awaitable[bytes]]


def socket_path(runtime_dir: Path, index: int) -> Path:
    return runtime_dir / f"worker-{index}.sock"


def encode_error(error: BaseException) -> tuple[Outcome, bytes]:
    """How a handler's exception travels back: its kind, message and retry delay."""
    if isinstance(error, PermanentError):
        outcome = Outcome.PERMANENT
    elif isinstance(error, OverloadedError):
        outcome = Outcome.OVERLOADED
    else:
        outcome = Outcome.RETRYABLE
    delay = error.retry_after if isinstance(error, RetryableError) else None
    message = str(error) if isinstance(error, ComponentError) else "internal error in the pipeline"
    return outcome, json.dumps({"message": message, "retry_after": delay}).encode()


def decode_error(outcome: Outcome, body: bytes, peer: str) -> ComponentError:
    detail = json.loads(body or b"{}")
    message = f"{peer}: {detail.get('message', 'refused')}"
    if outcome == Outcome.PERMANENT:
        return PermanentError(message)
    kind = OverloadedError if outcome == Outcome.OVERLOADED else RetryableError
    return kind(message, detail.get("retry_after"))


class ChannelServer:
    """Serves one worker's socket: every request is handed to ``handler`` concurrently."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a worker of the same index that was killed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()  # the connection's reader sees the end and returns
        if self._connections:
            await asyncio.wait(self._connections, timeout=1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        if connection is not None:
            self._connections.add(connection)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readexactly(_REQUEST.size)
                request_id, op, name_length, body_length = _REQUEST.unpack(head)
                name = (await reader.readexactly(name_length)).decode()
                body = await reader.readexactly(body_length)
                call = asyncio.create_task(self._answer(writer, request_id, Op(op), name, body))
                self._tasks.add(call)
                call.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The loop is closing under it (asyncio.run's clean-up): end quietly, as the
            # stream callback would otherwise log the cancellation as an error.
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            if connection is not None:
                self._connections.discard(connection)

    async def _answer(
        self, writer: asyncio.StreamWriter, request_id: int, op: Op, name: str, body: bytes
    ) -> None:
        try:
            outcome, reply = Outcome.OK, await self._handler(op, name, body)
        except Exception as exc:
            if not isinstance(exc, ComponentError):
                log.exception("internal channel: %s %s failed", op.name, name)
            outcome, reply = encode_error(exc)
        if not writer.is_closing():
            # One write per response: concurrent answers never interleave.
            writer.write(_RESPONSE.pack(request_id, outcome, len(reply)) + reply)


class Peer:
    """A client of one worker's socket: one connection, many calls in flight."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[Outcome, bytes]]] = {}
        self._next_id = 0
        self._connecting = asyncio.Lock()

    async def connect(self) -> asyncio.StreamWriter:
        """The connection, made if needed; a peer that cannot be reached is retryable."""
        try:
            return await self._connected()
        except (OSError, TimeoutError) as exc:
            raise RetryableError(f"{self.name} is not reachable: {exc}", PEER_RETRY_AFTER) from exc

    async def call(
        self, op: Op, name: str = "", body: bytes = b"", timeout: float = CALL_TIMEOUT_SECONDS
    ) -> bytes:
        """The peer's answer; its refusal raised as the same kind of error, and a peer that
        is gone or silent raised as retryable."""
        writer = await self.connect()
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        request_id = self._next_id
        future: asyncio.Future[tuple[Outcome, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        encoded = name.encode()
        writer.write(_REQUEST.pack(request_id, op, len(encoded), len(body)) + encoded + body)
        try:
            outcome, reply = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise RetryableError(f"{self.name} did not answer in {timeout:g}s") from exc
        finally:
            self._pending.pop(request_id, None)
        if outcome != Outcome.OK:
            raise decode_error(outcome, reply, self.name)
        return reply

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._fail_pending()

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self.path)), CONNECT_TIMEOUT_SECONDS
                )
                self._writer = writer
                self._reading = asyncio.create_task(self._read(reader, writer))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(_RESPONSE.size)
                request_id, outcome, length = _RESPONSE.unpack(head)
                body = await reader.readexactly(length)
                future = self._pending.get(request_id)
                if future is not None and not future.done():
                    future.set_result((Outcome(outcome), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            self._fail_pending()

    def _fail_pending(self) -> None:
        """Calls waiting on a lost connection: retryable, never taken as accepted."""
        for future in self._pending.values():
            if not future.done():
                future.set_result(
                    (
                        Outcome.RETRYABLE,
                        json.dumps(
                            {"message": "connection lost", "retry_after": PEER_RETRY_AFTER}
                        ).encode(),
                    )
                )
