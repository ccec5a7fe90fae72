"""One way to serve HTTP inside the collector: uvicorn on a socket we bind ourselves.

Binding first means a taken port is a clear start error naming the component, and
uvicorn never installs its own signal handlers (the service owns SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

import uvicorn

from otelkit.collector.runtime.tls import ServerTLS, TLSServerSettings
from otelkit.collector.runtime.types import split_endpoint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("otelkit.http")


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(endpoint: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    host, port = split_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """An ASGI app served on one endpoint until :meth:`stop`."""

    def __init__(
        self,
        endpoint: str,
        app: ASGIApp,
        *,
        name: str,
        reuse_port: bool = False,
        tls: TLSServerSettings | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self._app = app
        self._reuse_port = reuse_port
        self._tls = ServerTLS(tls) if tls is not None else None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        context = self._tls.ssl_context() if self._tls is not None else None
        sock = bind_socket(self.endpoint, reuse_port=self._reuse_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            # Bound-method apps are otherwise mistaken for ASGI2 by uvicorn's detection.
            interface="asgi3",
            access_log=False,
            log_level="warning",
            http="httptools",
            loop="none",
            timeout_graceful_shutdown=5,
            server_header=False,
            timeout_keep_alive=30,
        )
        config.load()
        config.ssl = context  # our own context: versions, mTLS, inline PEM, reloads
        self._server = _QuietServer(config)
        if self._tls is not None and self._tls.settings.reload_interval:
            self._reloader = asyncio.create_task(self._tls.reload_loop(), name=f"{self.name}-tls")
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"{self.name}: HTTP server stopped during start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            self._reloader = None
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            log.warning("%s: HTTP server did not stop in time", self.name)
            self._server.force_exit = True
        self._server = None


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})
