"""The processes the demo runs, each on its default port unless that port is taken: the
default collector, the shop under ``opentelemetry-instrument``, and optionally Prometheus
and Alertmanager with otelkit's rules. Each is started as a user would start it, with its
output in the data directory, and stopped by its own process ID."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from otelkit import defaults
from otelkit.budgets.model import load_budgets
from otelkit.budgets.rules import rules_text
from otelkit.collector.rules import collector_rules

# Where each listener goes when its default port is free.
DEFAULT_PORTS = {
    "grpc": 4317,
    "http": 4318,
    "prometheus": 9464,
    "health": 13133,
    "telemetry": 8888,
    "logs_api": 8890,
    "shop": 8000,
    "prometheus_server": 9090,
    "alertmanager": 9093,
}
# The variables collector/otelkit.yaml reads its listen addresses from.
COLLECTOR_ADDRESSES = {
    "grpc": "OTELKIT_GRPC_ENDPOINT",
    "http": "OTELKIT_HTTP_ENDPOINT",
    "prometheus": "OTELKIT_PROMETHEUS_ENDPOINT",
    "health": "OTELKIT_HEALTH_ENDPOINT",
    "telemetry": "OTELKIT_METRICS_ADDRESS",
}
# Job names as in deploy/prometheus/prometheus.yml, which the collector's rules select.
SCRAPE_JOBS = {
    "otelkit-collector-spanmetrics": "prometheus",
    "otelkit-collector-self": "telemetry",
}
LOGS_API_TOKEN_VARIABLE = "OTELKIT_LOGS_API_TOKEN"


class StackError(RuntimeError):
    """A process of the demo could not start."""


def choose_ports(names: list[str]) -> dict[str, int]:
    """Each name's default port when nothing listens there, else a free one."""
    return {name: _free(DEFAULT_PORTS[name]) for name in names}


def _free(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise StackError("no free port on 127.0.0.1")


@dataclass
class Process:
    """A child process whose output goes to a file in the data directory."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start(name: str, argv: list[str], data_dir: Path, env: dict[str, str]) -> Process:
    log_path = data_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=data_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops its children in order
        )
    return Process(name, process, log_path)


def wait_until_ready(process: Process, url: str, timeout: float = 60.0) -> None:
    """Until ``url`` answers 200."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(process, answers, f"ready at {url}", timeout)


def wait_until_listening(process: Process, port: int, timeout: float = 60.0) -> None:
    """Until something accepts connections on ``port``."""

    def listens() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    _wait(process, listens, f"listening on {port}", timeout)


def _wait(process: Process, done: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(
                f"{process.name} exited with {process.process.returncode}:\n{process.log_tail()}"
            )
        if done():
            return
        time.sleep(0.2)
    raise StackError(f"{process.name} not {what} after {timeout:.0f}s:\n{process.log_tail()}")


@dataclass
class Collector:
    process: Process
    ports: dict[str, int]
    config_path: Path
    store_path: Path
    token: str

    def url(self, port: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.store_path}"


def collector_config(logs_api_port: int) -> str:
    """The default configuration with the log search API turned on, its token read from
    the environment (never written to disk)."""
    config = yaml.safe_load(defaults.config_path().read_text())
    config["exporters"]["logstore"]["api"] = {
        "endpoint": f"127.0.0.1:{logs_api_port}",
        "token": f"${{env:{LOGS_API_TOKEN_VARIABLE}}}",
    }
    header = (
        "# The default collector configuration (otelkit/defaults/otelkit.yaml, the same as\n"
        "# collector/otelkit.yaml) with the log search API on, as `otelkit demo` runs it.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def start_collector(data_dir: Path, ports: dict[str, int]) -> Collector:
    config_path = data_dir / "collector.yaml"
    config_path.write_text(collector_config(ports["logs_api"]))
    token = secrets.token_hex(16)
    env = defaults.environment()
    env.update({var: f"127.0.0.1:{ports[name]}" for name, var in COLLECTOR_ADDRESSES.items()})
    env.update({"OTELKIT_DATA_DIR": str(data_dir), LOGS_API_TOKEN_VARIABLE: token})
    argv = [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(config_path)]
    process = start("collector", argv, data_dir, env)
    collector = Collector(process, ports, config_path, data_dir / "logs.db", token)
    wait_until_ready(process, collector.url("health", "/health/ready"))
    return collector


def instrument_command() -> str:
    """``opentelemetry-instrument`` from the same environment as this Python."""
    beside = Path(sys.executable).parent / "opentelemetry-instrument"
    found = str(beside) if beside.exists() else shutil.which("opentelemetry-instrument")
    if found is None:
        raise StackError("opentelemetry-instrument is not installed (pip install otelkit)")
    return found


def start_shop(data_dir: Path, port: int, otlp_endpoint: str) -> Process:
    """The shop as a user runs an app: ``opentelemetry-instrument uvicorn ...`` with only
    its service name and the collector's address (``http://host:4317``) set."""
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELKIT_"))}
    env.update(
        OTEL_SERVICE_NAME="shop-api",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
        SHOP_DATABASE_URL=f"sqlite:///{data_dir / 'shop.db'}",
        SHOP_BASE_URL=base_url,
    )
    argv = [
        instrument_command(), sys.executable, "-m", "uvicorn", "otelkit.demo.shop:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    process = start("shop", argv, data_dir, env)
    # uvicorn listens once the app has started; a request would be a span of its own.
    wait_until_listening(process, port)
    return process


@dataclass
class Webhook:
    """Receives what Alertmanager delivers: each alert with the path it was posted to
    (one path per receiver)."""

    deliveries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [alert for _, alert in self.deliveries]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                for alert in json.loads(body).get("alerts", []):
                    hook.deliveries.append((self.path, alert))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Alerting:
    prometheus: Process
    alertmanager: Process
    webhook: Webhook
    prometheus_url: str
    alertmanager_url: str

    def stop(self) -> None:
        self.prometheus.stop()
        self.alertmanager.stop()
        self.webhook.stop()


def alerting_binaries() -> tuple[str, str]:
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    if prometheus is None or alertmanager is None:
        raise StackError(
            "--with-prometheus needs `prometheus` and `alertmanager` on PATH "
            "(Debian: apt install prometheus prometheus-alertmanager)"
        )
    return prometheus, alertmanager


def prometheus_config(ports: dict[str, int], rule_files: list[str]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, pointed at this machine and evaluating every 2 s."""
    return {
        "global": {"scrape_interval": "2s", "scrape_timeout": "1s", "evaluation_interval": "2s"},
        "rule_files": rule_files,
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}
            ]
        },
        "scrape_configs": [
            {
                "job_name": job,
                **({"honor_labels": True} if port == "prometheus" else {}),
                "static_configs": [{"targets": [f"127.0.0.1:{ports[port]}"]}],
            }
            for job, port in SCRAPE_JOBS.items()
        ],
    }


def start_alerting(data_dir: Path, ports: dict[str, int]) -> Alerting:
    """Prometheus on the rules generated from the example budgets and the collector's own
    rules; Alertmanager sending every alert to a webhook the demo runs."""
    prometheus_bin, alertmanager_bin = alerting_binaries()
    budgets = load_budgets(defaults.budgets_path())
    (data_dir / "budgets.rules.yml").write_text(rules_text(budgets))
    (data_dir / "collector.rules.yml").write_text(collector_rules(budgets))
    config = prometheus_config(ports, ["budgets.rules.yml", "collector.rules.yml"])
    (data_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    webhook = Webhook()
    webhook.start()
    (data_dir / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "demo",
                    "group_by": ["alertname", "sloth_id", "budget"],
                    "group_wait": "1s",
                    "group_interval": "5s",
                },
                "receivers": [{"name": "demo", "webhook_configs": [{"url": webhook.url()}]}],
            }
        )
    )  # fmt: skip
    alertmanager_url = f"http://127.0.0.1:{ports['alertmanager']}"
    alertmanager = start(
        "alertmanager",
        [
            alertmanager_bin,
            f"--config.file={data_dir / 'alertmanager.yml'}",
            f"--storage.path={data_dir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
            "--cluster.listen-address=",
        ],
        data_dir,
        dict(os.environ),
    )
    wait_until_ready(alertmanager, f"{alertmanager_url}/-/ready")
    prometheus_url = f"http://127.0.0.1:{ports['prometheus_server']}"
    prometheus = start(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={data_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus_server']}",
        ],
        data_dir,
        dict(os.environ),
    )
    wait_until_ready(prometheus, f"{prometheus_url}/-/ready")
    return Alerting(prometheus, alertmanager, webhook, prometheus_url, alertmanager_url)
