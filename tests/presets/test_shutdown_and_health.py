"""Bounded shutdown against an unreachable collector; readiness follows the database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.presets import procs
from tests.support.services import free_port

EMIT_AND_STOP = """
import json, logging, os, sys, time
import otelkit
from opentelemetry import trace
otelkit.configure(service_name="bound")
otelkit.instrument_logging()
tracer = trace.get_tracer("test")
for i in range(300):
    with tracer.start_as_current_span(f"span {i}"):
        logging.getLogger("app").warning("record %d", i)
if sys.argv[1] == "explicit":
    started = time.monotonic()
    completed = otelkit.shutdown()
    print(json.dumps({"completed": completed, "seconds": time.monotonic() - started}))
print(json.dumps({"exiting_at": time.time()}), flush=True)
"""


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts TCP connections and never answers: the worst dead collector."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _run(endpoint: str, how: str, bound: float) -> tuple[list[dict[str, float]], float]:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTELKIT_SHUTDOWN_TIMEOUT": str(bound),
        "OTELKIT_ENVIRONMENT": "development",
        "OTELKIT_LOG_FORMAT": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
    }
    result = subprocess.run(
        [sys.executable, "-c", EMIT_AND_STOP, how],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    exited_at = time.time()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return lines, exited_at


@pytest.mark.parametrize("dead", ["black_hole", "closed_port"])
def test_explicit_shutdown_returns_within_the_bound(
    dead: str, request: pytest.FixtureRequest
) -> None:
    endpoint = (
        request.getfixturevalue("black_hole")
        if dead == "black_hole"
        else f"http://127.0.0.1:{free_port()}"
    )
    lines, _ = _run(endpoint, "explicit", bound=1.5)
    report = lines[0]
    assert report["seconds"] < 1.5 + 1.0, report
    assert (
        report["completed"] is False
    )  # the data could not be delivered, and we did not wait on it


def test_exit_without_shutdown_is_bounded_too(black_hole: str) -> None:
    lines, exited_at = _run(black_hole, "atexit", bound=1.5)
    assert exited_at - lines[-1]["exiting_at"] < 1.5 + 1.5


@pytest.mark.parametrize("database", ["reachable", "stopped"])
def test_readiness_follows_the_database(database: str, tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path / 'ok.db'}"
        if database == "reachable"
        else f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    )
    env = {
        "APP_MODE": "manual",
        "APP_DATABASE_URL": url,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    with procs.server(procs.uvicorn_command, env, tmp_path, "app") as running:
        live = httpx.get(f"{running.url}/health/live")
        ready = httpx.get(f"{running.url}/health/ready")
        full = httpx.get(f"{running.url}/health")
        running.stop()
    assert live.status_code == 200
    assert live.headers["content-type"] == "application/health+json"
    assert live.json() == {"status": "pass"}
    check = full.json()["checks"]["database:connectivity"][0]
    if database == "reachable":
        assert ready.status_code == 200 and ready.json()["status"] == "pass"
        assert check["status"] == "pass"
    else:
        assert ready.status_code == 503 and ready.json()["status"] == "fail"
        assert full.status_code == 503
        assert check["status"] == "fail" and "OperationalError" in check["output"]
    access_lines = [line for line in running.log().splitlines() if "/health" in line]
    assert not access_lines, "health probes stay out of the INFO access log"
