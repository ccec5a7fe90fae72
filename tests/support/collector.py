"""Run a real ``otelkit collector run`` subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "collector" / "otelkit.yaml"
# The variables collector/otelkit.yaml reads its listen addresses from, by port name.
SHIPPED_ADDRESSES = {
    "grpc": "OTELKIT_GRPC_ENDPOINT",
    "http": "OTELKIT_HTTP_ENDPOINT",
    "prometheus": "OTELKIT_PROMETHEUS_ENDPOINT",
    "health": "OTELKIT_HEALTH_ENDPOINT",
    "telemetry": "OTELKIT_METRICS_ADDRESS",
}


@dataclass
class RunningCollector:
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    ports: dict[str, int]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(
                    f"collector did not stop in {timeout}s:\n{self.log()}"
                ) from exc
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def allocate_ports(*names: str) -> dict[str, int]:
    """Free loopback ports by name, to substitute into a config (``{grpc}``, ``{http}``)."""
    return {name: free_port() for name in names}


def wait_for_port(
    port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"collector exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def collector(
    config_text: str,
    tmp_path: Path,
    *,
    wait_ports: tuple[str, ...] = (),
    ports: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "collector",
    args: Sequence[str] = (),
) -> Iterator[RunningCollector]:
    """Start a collector on ``config_text`` (``{port_name}`` placeholders are filled from
    ``ports``, with ``metrics`` always allocated for self-telemetry); stop it on exit."""
    all_ports = {"metrics": free_port(), **(ports or {})}
    text = config_text
    for key, value in all_ports.items():
        text = text.replace("{" + key + "}", str(value))
    config = yaml.safe_load(text)
    metrics = config.setdefault("service", {}).setdefault("telemetry", {}).setdefault("metrics", {})
    if "address" not in metrics and "level" not in metrics:
        metrics["address"] = f"127.0.0.1:{all_ports['metrics']}"
        text = yaml.safe_dump(config, sort_keys=False)
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(text)
    log_path = tmp_path / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "otelkit.cli",
        "collector",
        "run",
        "--config",
        str(config_path),
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*command, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    running = RunningCollector(process, config_path, log_path, all_ports)
    try:
        for port_name in wait_ports or tuple(k for k in all_ports if k != "metrics"):
            wait_for_port(all_ports[port_name], process=process)
        yield running
    except BaseException:
        running.kill()
        print(running.log())
        raise
    finally:
        running.kill()


@contextmanager
def shipped_collector(
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    config_text: str | None = None,
    args: Sequence[str] = (),
) -> Iterator[RunningCollector]:
    """``collector/otelkit.yaml`` as a user runs it, each listener moved to a free loopback
    port by its variable and ``OTELKIT_DATA_DIR`` to ``tmp_path/otelkit-data``; no
    ``SENTRY_DSN`` unless ``env`` sets one. ``config_text``: the shipped file as a user
    edited it."""
    ports = allocate_ports(*SHIPPED_ADDRESSES)
    variables = {name: f"127.0.0.1:{ports[key]}" for key, name in SHIPPED_ADDRESSES.items()}
    variables.update(
        OTELKIT_DATA_DIR=str(tmp_path / "otelkit-data"),
        OTELKIT_BUDGETS_FILE=str(ROOT / "collector" / "budgets.yaml"),
        SENTRY_DSN="",
    )
    text = SHIPPED_CONFIG.read_text() if config_text is None else config_text
    environment = {**variables, **(env or {})}
    with collector(text, tmp_path, ports=ports, env=environment, args=args) as running:
        yield running


def downstream_config(
    signals: Sequence[str], out: Path | None = None, *, http: bool = False
) -> str:
    """Config text of a collector taking OTLP on ``{grpc}`` (and ``{http}``) for
    ``signals`` and writing what it receives to ``out`` (``file``, flushed every 100 ms),
    or dropping it (``nop``) when ``out`` is None."""
    protocols: dict[str, Any] = {"grpc": {"endpoint": "127.0.0.1:{grpc}"}}
    if http:
        protocols["http"] = {"endpoint": "127.0.0.1:{http}"}
    exporter = "file" if out is not None else "nop"
    settings = {"path": str(out), "flush_interval": "100ms"} if out is not None else {}
    config = {
        "receivers": {"otlp": {"protocols": protocols}},
        "exporters": {exporter: settings},
        "service": {
            "pipelines": {
                signal: {"receivers": ["otlp"], "exporters": [exporter]} for signal in signals
            }
        },
    }
    return yaml.safe_dump(config, sort_keys=False)
