"""Start and stop app servers as subprocesses for the preset tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.collector import wait_for_port
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.presets.service_app:app"
# uvicorn re-raises SIGTERM after a graceful shutdown, so -SIGTERM is a clean exit too.
CLEAN_EXIT = (0, -signal.SIGTERM)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stdout_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout_lines(self) -> list[str]:
        """What the server wrote to stdout (started with ``separate_stdout``)."""
        assert self.stdout_path is not None
        return self.stdout_path.read_text(errors="replace").splitlines()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: the app flushes telemetry at exit) and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(f"server did not stop in {timeout}s:\n{self.log()}") from None
        return self.process.returncode


def uvicorn_command(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        APP,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def gunicorn_command(port: int, *extra: str) -> list[str]:
    gunicorn = shutil.which("gunicorn") or "gunicorn"
    return [gunicorn, APP, "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}", *extra]


def auto(command: Sequence[str]) -> list[str]:
    """The same command under ``opentelemetry-instrument``."""
    wrapper = shutil.which("opentelemetry-instrument") or "opentelemetry-instrument"
    if command[0] == sys.executable and command[1] == "-m":
        return [wrapper, sys.executable, *command[1:]]
    return [wrapper, *command]


@contextmanager
def server(
    build: object,
    env: Mapping[str, str],
    tmp_path: Path,
    name: str,
    *,
    separate_stdout: bool = False,
) -> Iterator[Server]:
    """``build(port) -> argv``; the server runs from the repository root. Its stderr goes
    to ``log()``, and so does its stdout unless ``separate_stdout`` (``stdout_lines()``)."""
    port = free_port()
    command = build(port)  # type: ignore[operator]
    log_path = tmp_path / f"{name}.log"
    stdout_path = tmp_path / f"{name}.stdout" if separate_stdout else None
    with open(log_path, "wb") as log_file, open(stdout_path or os.devnull, "wb") as out_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out_file if separate_stdout else log_file,
            stderr=log_file if separate_stdout else subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        )
    running = Server(process, port, log_path, stdout_path)
    try:
        try:
            wait_for_port(port, timeout=30, process=process)  # type: ignore[arg-type]
        except AssertionError:
            raise AssertionError(f"{name} did not start:\n{running.log()}") from None
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


@contextmanager
def instrumented_app(
    collector_grpc_port: int,
    service: str,
    tmp_path: Path,
    *,
    separate_stdout: bool = False,
    **env: str,
) -> Iterator[Server]:
    """The test app under ``opentelemetry-instrument`` with no settings but its service name
    and the collector's OTLP/gRPC address, as a user runs it."""
    app_env = {
        "APP_MODE": "auto",
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_grpc_port}",
        **env,
    }
    build = lambda port: auto(uvicorn_command(port))  # noqa: E731
    with server(build, app_env, tmp_path, service, separate_stdout=separate_stdout) as app:
        yield app


def telemetry_env(endpoint: str, service: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTELKIT_ENVIRONMENT": "development",
        "OTELKIT_LOG_FORMAT": "json",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        **extra,
    }


def _pid_of_worker(url: str) -> int:
    with httpx.Client(timeout=10) as client:  # a new connection each time
        response = client.get(f"{url}/slow")
        response.raise_for_status()
        pid: int = response.json()["pid"]
        return pid


def worker_pids(url: str, workers: int = 2, rounds: int = 15) -> set[int]:
    """Concurrent requests to a handler that blocks its worker spread over the workers;
    returns the PIDs that answered."""
    seen: set[int] = set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(rounds):
            seen.update(pool.map(_pid_of_worker, [url] * 4))
            if len(seen) >= workers:
                break
    return seen


def logs_query(url: str, *arguments: str) -> list[dict[str, Any]]:
    """``otelkit logs query --json`` as a user runs it: the records it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "logs", "query", "--url", url, "--json",
         "--limit", "1000", *arguments],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
