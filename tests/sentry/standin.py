"""A local Sentry stand-in: records every envelope, answers as it is told to."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sentry_sdk.envelope import Envelope


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"id":"ok"}'


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes  # the body as sent (maybe gzip)
    body: bytes  # decompressed
    status: int  # what the stand-in answered

    @property
    def envelope(self) -> Envelope:
        return Envelope.deserialize(self.body)

    def items(self) -> list[tuple[str, Any]]:
        """(type, payload) per item; event/transaction payloads as dicts, logs as dicts."""
        out: list[tuple[str, Any]] = []
        for item in self.envelope.items:
            if item.type in ("event", "transaction"):
                out.append((item.type, item.payload.json))
            else:
                out.append((str(item.type), json.loads(item.get_bytes())))
        return out


class SentryStandIn:
    """``http://key@127.0.0.1:<port>/42`` answers the envelope (and OTLP) endpoints."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[Answer] = []  # consumed first, then ``by_type``, then ``default``
        self.by_type: dict[str, Answer] = {}  # by the envelope's first item type
        self.default = Answer()
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                with standin._lock:
                    answer = standin.answers.pop(0) if standin.answers else standin.answer_for(body)
                    standin.received.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            raw,
                            body,
                            answer.status,
                        )
                    )
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer_for(self, body: bytes) -> Answer:
        if self.by_type:
            try:
                kind = str(Envelope.deserialize(body).items[0].type)
            except Exception:
                kind = ""
            if kind in self.by_type:
                return self.by_type[kind]
        return self.default

    @property
    def dsn(self) -> str:
        return f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{self.port}/42"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]

    def items(self, kind: str | None = None, *, accepted_only: bool = True) -> list[Any]:
        """Payloads of every item received (of one type)."""
        source = self.accepted() if accepted_only else self.received
        return [p for r in source for t, p in r.items() if kind is None or t == kind]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"stand-in: condition not met; got {len(self.received)} requests"
                )
            time.sleep(0.02)


@contextmanager
def sentry_standin() -> Iterator[SentryStandIn]:
    standin = SentryStandIn()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
