"""Real Prometheus and Alertmanager processes for the alerting tests, and a webhook
receiver that collects what Alertmanager sends."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.services import require_binary


class Webhook:
    """Collects Alertmanager's webhook posts."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, path: str) -> list[dict[str, Any]]:
        return [
            a
            for p, body in self.posts
            if p == path
            for a in body["alerts"]
            if a["status"] == "firing"
        ]


@contextmanager
def process(args: list[str], log: Path, ready_url: str) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{args[0]} not ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def alertmanager(config: Path, port: int) -> AbstractContextManager[None]:
    """A real Alertmanager on ``127.0.0.1:port`` with ``config``, its data and log next to
    the config; ready when entered."""
    binary = require_binary("prometheus-alertmanager")
    return process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={config.parent / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        config.parent / "alertmanager.log",
        f"http://127.0.0.1:{port}/-/ready",
    )
