"""Start a real Prometheus or VictoriaMetrics (Debian packages) on loopback for a test,
remote-write to it, and query it through the Prometheus query API both serve."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otelkit.collector.exporters.prometheusremotewrite.exporter import (
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.support.services import free_port, require_binary


@dataclass
class Prometheus:
    """A running server answering the Prometheus query API (Prometheus or VictoriaMetrics)."""

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

    def query(self, expr: str, **params: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr, **params)["result"]
        return result

    def wait_for(
        self,
        expr: str,
        ready: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll a query until ``ready(result)``; fail with the last result and the log."""
        result: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal result
            result = self.query(expr)
            return ready(result)

        self.poll(check, timeout, lambda: f"{expr}: last result {result}")
        return result

    def poll(self, check: Callable[[], bool], timeout: float, last: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"not ready after {timeout}s: {last()}\n"
                             f"{self.log_path.read_text()[-3000:]}")  # fmt: skip


@dataclass
class VictoriaMetrics(Prometheus):
    """VictoriaMetrics' raw-sample export besides the query API."""

    def export(self, selector: str) -> list[dict[str, Any]]:
        """Every stored sample of the matching series, as /api/v1/export gives them: one
        JSON line per series, ``values`` (a stale marker is ``null``) and ``timestamps``
        in milliseconds."""
        response = httpx.get(f"{self.url}/api/v1/export", params={"match[]": selector}, timeout=10)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line]

    def wait_for_export(
        self,
        selector: str,
        ready: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        series: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal series
            series = self.export(selector)
            return ready(series)

        self.poll(check, timeout, lambda: f"{selector}: last export {series}")
        return series


def remote_write(
    server: Prometheus, *requests: ExportMetricsServiceRequest, **config: Any
) -> SelfTelemetry:
    """Each request through a ``prometheusremotewrite`` exporter to ``server``'s write
    endpoint, one after the other; the exporter's self-telemetry once it has shut down."""

    async def push() -> SelfTelemetry:
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("prometheusremotewrite"), Kind.EXPORTER, telemetry)
        endpoint = f"{server.url}/api/v1/write"
        exporter = RemoteWriteExporter(
            settings, RemoteWriteConfig.model_validate({"endpoint": endpoint, **config})
        )
        await exporter.start(ServiceHost())
        for request in requests:
            await exporter.consume(request)
        await exporter.shutdown()
        return telemetry

    return asyncio.run(push())


@contextmanager
def prometheus(
    tmp_path: Path,
    scrape_ports: Sequence[int] = (),
    *,
    remote_write_receiver: bool = False,
    port: int | None = None,
    scrape_configs: Sequence[dict[str, Any]] = (),
    rule_files: Sequence[Path] = (),
) -> Iterator[Prometheus]:
    """Prometheus scraping ``scrape_ports`` as job ``otelkit``, and ``scrape_configs``
    (their interval set to 1s), evaluating ``rule_files`` every second."""
    binary = require_binary("prometheus")
    port = port or free_port()
    jobs = [{**job, "scrape_interval": "1s", "scrape_timeout": "900ms"} for job in scrape_configs]
    if scrape_ports:
        jobs.append(
            {
                "job_name": "otelkit",
                "honor_labels": True,  # job/instance come from the resource
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in scrape_ports]}],
            }
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
        "rule_files": [str(path) for path in rule_files],
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
    with _serve(args, tmp_path / "prometheus.log", port, "/-/ready") as (process, log_path):
        yield Prometheus(port, process, log_path)


@contextmanager
def victoria_metrics(tmp_path: Path, *, port: int | None = None) -> Iterator[VictoriaMetrics]:
    """Single-node VictoriaMetrics storing under ``tmp_path/victoria-metrics-data`` (start it
    again with the same ``tmp_path`` and ``port`` for a restart that keeps the data). Remote
    write goes to ``/api/v1/write``. Queries see a sample at once: the default
    ``-search.latencyOffset`` of 30s would hide what was written in the last 30 seconds."""
    binary = require_binary("victoria-metrics")
    port = port or free_port()
    args = [
        binary,
        f"-storageDataPath={tmp_path / 'victoria-metrics-data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=WARN",
    ]
    with _serve(args, tmp_path / "victoria-metrics.log", port, "/health") as (process, log_path):
        yield VictoriaMetrics(port, process, log_path)


@contextmanager
def _serve(
    args: list[str], log_path: Path, port: int, ready_path: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Run ``args`` until the block ends (SIGTERM, then SIGKILL), once ``ready_path``
    answers 200; the log is appended to, so a restarted server keeps its history."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}{ready_path}"
        _wait_ready(process, log_path, url, Path(args[0]).name)
        yield process, log_path
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(
    process: subprocess.Popen[bytes], log_path: Path, url: str, name: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited:\n{log_path.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} not ready after {timeout}s:\n{log_path.read_text()}")
