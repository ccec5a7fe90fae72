"""Start a real Prometheus (Debian package) on loopback for a test, and query it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.services import free_port, require_binary


@dataclass
class Prometheus:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def wait_for(
        self,
        expr: str,
        ready: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll a query until ``ready(result)``; fail with the last result and the log."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if ready(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr}: not ready after {timeout}s, last result {result}\n"
                             f"{self.log_path.read_text()[-3000:]}")  # fmt: skip


@contextmanager
def prometheus(
    tmp_path: Path,
    scrape_ports: Sequence[int] = (),
    *,
    remote_write_receiver: bool = False,
    port: int | None = None,
) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    port = port or free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "otelkit",
                "honor_labels": True,  # job/instance come from the resource
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in scrape_ports]}],
            }
        ]
        if scrape_ports
        else [],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
        "--log.level=warn",
    ]
    if remote_write_receiver:
        args.append("--web.enable-remote-write-receiver")
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(port, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(server: Prometheus, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{server.log_path.read_text()}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready after {timeout}s:\n{server.log_path.read_text()}")
