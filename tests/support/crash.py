"""Kill a collector with SIGKILL while real SDK exporters stream into it; count what was
acknowledged and what was delivered once it ran again on the same data directory.

Used by the crash tests and by ``benchmarks/robustness.py``. A sender thread exports
batches with the OpenTelemetry SDK's OTLP/gRPC exporters and remembers the key of every
item whose export the SDK saw succeed. After the kill the collector is started again
(same config, same data directory) and the items are looked for where the config
delivers them: a downstream collector's file for traces and metrics, the log store for
logs. Delivery is at least once, so an item may arrive twice; none may be missing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from psycopg import sql

from otelkit.logstore.postgres import split_url
from tests.collector.e2e.clients import (
    RESOURCE,
    expected_points,
    expected_spans,
    log_keys,
    make_logs,
    make_spans,
    point_keys,
    read_output,
    sdk_exporters,
    span_keys,
)
from tests.support.collector import (
    SHIPPED_ADDRESSES,
    RunningCollector,
    allocate_ports,
    collector,
    downstream_config,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "collector" / "otelkit-production.yaml"
DEFAULT = ROOT / "collector" / "otelkit.yaml"


@dataclass
class CrashResult:
    case: str
    acknowledged: int
    delivered: int  # of the acknowledged items, how many arrived
    duplicates: int  # items that arrived more than once

    @property
    def lost(self) -> int:
        return self.acknowledged - self.delivered


# Configs ------------------------------------------------------------------------------
def production_shaped(
    ports: dict[str, int], downstream_grpc: int, *, previous_shape: bool = False
) -> str:
    """The shipped production config on loopback ports, plus traces and metrics pipelines
    shaped like its log pipeline (persistent queue, batching after it) towards a
    downstream stand-in, so every signal has a durable path whose deliveries can be counted.

    ``previous_shape`` puts a batch processor in front of a persistent queue with no
    exporter batching: the shape that lost acknowledged data before the batch processor
    learned to wait for durable exporters.
    """
    config = yaml.safe_load(PRODUCTION.read_text())
    move_listeners(config, ports)
    queue = {"storage": "${env:OTELKIT_DATA_DIR}/queue", "batch": {}}
    config["exporters"]["otlp/standin"] = {
        "endpoint": f"127.0.0.1:{downstream_grpc}",
        "tls": {"insecure": True},
        "sending_queue": queue,
        "retry_on_failure": {"initial_interval": "200ms", "max_interval": "1s",
                             "max_elapsed_time": 0},
    }  # fmt: skip
    pipelines = config["service"]["pipelines"]
    for signal in ("traces", "metrics"):
        pipelines[f"{signal}/durable"] = {
            "receivers": ["otlp"],
            "processors": ["memory_limiter"],
            "exporters": ["otlp/standin"],
        }
    if previous_shape:
        for name in ("traces/durable", "metrics/durable", "logs"):
            pipelines[name]["processors"] = ["memory_limiter", "batch"]
        for exporter in ("otlp/standin", "logstore"):
            config["exporters"][exporter]["sending_queue"].pop("batch", None)
    return yaml.safe_dump(config, sort_keys=False)


def default_shaped(*, previous_defaults: bool = False) -> str:
    """The shipped default config as it is (its listeners move by the variables of
    :func:`default_env`); ``previous_defaults`` restores the log store settings it had
    before it was made durable (in-memory queue, a batch processor in front)."""
    text = DEFAULT.read_text()
    if not previous_defaults:
        return text
    config = yaml.safe_load(text)
    config["exporters"]["logstore"].pop("durability", None)
    config["service"]["pipelines"]["logs"]["processors"] = ["memory_limiter", "batch"]
    return yaml.safe_dump(config, sort_keys=False)


def default_env(ports: dict[str, int], data_dir: Path) -> dict[str, str]:
    """The variables a user sets to run the default config on these ports and data."""
    names = {**SHIPPED_ADDRESSES, "metrics": SHIPPED_ADDRESSES["telemetry"]}
    env = {names[key]: f"127.0.0.1:{port}" for key, port in ports.items() if key in names}
    return {**env, "OTELKIT_DATA_DIR": str(data_dir),
            "OTELKIT_BUDGETS_FILE": str(ROOT / "collector" / "budgets.yaml")}  # fmt: skip


def move_listeners(config: dict[str, Any], ports: dict[str, int]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    protocols["grpc"]["endpoint"] = f"127.0.0.1:{ports['grpc']}"
    protocols["http"]["endpoint"] = f"127.0.0.1:{ports['http']}"
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{ports['health']}"
    config["exporters"]["prometheus"]["endpoint"] = f"127.0.0.1:{ports['prometheus']}"
    config["service"]["telemetry"]["metrics"]["address"] = f"127.0.0.1:{ports['metrics']}"


def collector_ports() -> dict[str, int]:
    return allocate_ports("grpc", "http", "health", "prometheus", "metrics")


# Data ---------------------------------------------------------------------------------
def make_points(count: int, tag: str) -> MetricsData:
    """One cumulative counter with ``count`` series (points), each with a unique label."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    counter = provider.get_meter("orders", "1.2.3").create_counter("orders.placed")
    for i in range(count):
        counter.add(i + 1, {"order.seq": f"{tag}{i}"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


@dataclass
class Signal:
    """How to make, send, expect and find one signal's items."""

    name: str
    make: Callable[[int, str], Any]  # (items per batch, tag) -> a batch for the exporter
    expected: Callable[[Any], Counter[bytes]]
    found: Callable[[Sequence[Any]], Counter[bytes]]


def _bodies(records: Sequence[Any]) -> Counter[bytes]:
    """Log records by body, which the log store keeps verbatim (unique in ``make_logs``)."""
    return Counter(str(r.log_record.body).encode() for r in records)


SIGNALS = {
    "traces": Signal("traces", lambda n, tag: make_spans(n // 2, tag), expected_spans, span_keys),
    "metrics": Signal("metrics", make_points, expected_points, point_keys),
    "logs": Signal("logs", make_logs, _bodies, log_keys),
}


# Sending ------------------------------------------------------------------------------
class Streamer:
    """Exports pre-made batches one after the other, remembering what was acknowledged."""

    def __init__(self, signal: Signal, target: str, batches: Sequence[Any]) -> None:
        self.signal = signal
        headers = {"authorization": f"Bearer {TOKEN}"}  # ignored where no auth is asked
        self.exporter = sdk_exporters("grpc", target, timeout=2, headers=headers)[signal.name]
        self.batches = batches
        self.acknowledged: Counter[bytes] = Counter()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for batch in self.batches:
            if self.stop.is_set():
                return
            if self.exporter.export(batch).name == "SUCCESS":
                self.acknowledged.update(self.signal.expected(batch).keys())

    def finished(self) -> bool:
        """Whether every batch was exported (or failed) and the stream ended."""
        return not self._thread.is_alive()

    @contextmanager
    def running(self) -> Iterator[Streamer]:
        self._thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self._thread.join(30)
            self.exporter.shutdown()


# Where things arrive ---------------------------------------------------------------------
def logstore_bodies(url: str) -> Callable[[], Counter[bytes]]:
    """The bodies of the records in a log store (SQLite or PostgreSQL URL), by count."""

    def read() -> Counter[bytes]:
        if url.startswith("sqlite:"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.exists():
                return Counter()
            with sqlite3.connect(path) as conn:
                try:
                    rows = conn.execute("SELECT body FROM logs").fetchall()
                except sqlite3.OperationalError:  # not created yet
                    return Counter()
        else:
            conninfo, schema = split_url(url)
            query = sql.SQL("SELECT body FROM {}.logs").format(sql.Identifier(schema))
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    rows = conn.execute(query).fetchall()
            except psycopg.errors.UndefinedTable:
                return Counter()
        return Counter(str(row[0]).encode() for row in rows)

    return read


# One crash -------------------------------------------------------------------------------
def crash_and_recover(
    case: str,
    signal_name: str,
    config_text: str,
    tmp_path: Path,
    ports: dict[str, int],
    env: dict[str, str],
    *,
    delivered: Callable[[], Counter[bytes]],
    batches: int = 120,
    per_batch: int = 50,
    kill_after: int = 1500,
    wait: float = 90.0,
) -> CrashResult:
    """Stream, SIGKILL once ``kill_after`` items were acknowledged, start again, count."""
    signal = SIGNALS[signal_name]
    made = [signal.make(per_batch, f"{case}-{b}-") for b in range(batches)]
    target = f"127.0.0.1:{ports['grpc']}"
    with collector(config_text, tmp_path, ports=ports, env=env, name=f"{case}-1",
                   wait_ports=("grpc", "http")) as first:  # fmt: skip
        streamer = Streamer(signal, target, made)
        with streamer.running():
            _wait(lambda: sum(streamer.acknowledged.values()) >= kill_after, 60, first)
            first.process.kill()  # SIGKILL, mid-stream
            first.process.wait(10)
    acknowledged = streamer.acknowledged
    arrived: Counter[bytes] = Counter()
    with collector(config_text, tmp_path, ports=ports, env=env, name=f"{case}-2",
                   wait_ports=("grpc", "http")) as second:  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            arrived = delivered()
            if all(arrived[key] for key in acknowledged):
                break
            time.sleep(0.25)
        second.stop(60)
    found = sum(1 for key in acknowledged if arrived[key])
    duplicates = sum(1 for key in acknowledged if arrived[key] > 1)
    return CrashResult(case, len(acknowledged), found, duplicates)


def _wait(condition: Callable[[], bool], timeout: float, running: RunningCollector) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s; collector log:\n{running.log()}")
        if running.process.poll() is not None:
            raise AssertionError(f"collector exited early:\n{running.log()}")
        time.sleep(0.02)


@contextmanager
def downstream_standin(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An otelkit collector writing what it receives to a file: (its gRPC port, the file)."""
    out = tmp_path / "downstream.jsonl"
    ports = allocate_ports("grpc")
    with collector(downstream_config(["traces", "metrics"], out), tmp_path, ports=ports,
                   name="down"):  # fmt: skip
        wait_for_port(ports["grpc"])
        yield ports["grpc"], out


def file_keys(out: Path, signal_name: str) -> Callable[[], Counter[bytes]]:
    return lambda: SIGNALS[signal_name].found(read_output(out))


TOKEN = "crash-test-token"


def production_env(data_dir: Path, logstore_url: str, sentry_dsn: str) -> dict[str, str]:
    """What the production config reads from its environment; its OTLP token is
    :data:`TOKEN` (senders present it with ``headers=SENDER_HEADERS``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir.parent / "otlp-token"
    token_file.write_text(TOKEN + "\n")
    return {
        "OTELKIT_DATA_DIR": str(data_dir),
        "OTELKIT_LOGSTORE_URL": logstore_url,
        "SENTRY_DSN": sentry_dsn,
        "OTELKIT_BUDGETS_FILE": str(ROOT / "collector" / "budgets.yaml"),
        "OTELKIT_TOKEN_FILE": str(token_file),
    }
