"""The log store: ingest through the collector, and query latency over a large store.

    python benchmarks/logstore.py [--quick] [--records N] [--store-records M]
                                  [--postgres URL | --no-postgres]

Ingest: ``otelkit collector run`` (a subprocess) with an OTLP/gRPC receiver feeding one
exporter: ``nop`` (the baseline), ``logstore`` into SQLite, ``logstore`` into PostgreSQL,
in the same run. The sender (this process) replays pre-encoded requests of 1,000 SDK-like
log records (body, four attributes, trace context on 80%) with 4 requests in flight.
The logstore exporter runs with ``durability: commit``, so a request's success means its
records are committed and the clock stops at the last answer; the stored count is
checked afterwards. Besides wall-clock rates, the CPU time the collector process (and,
for PostgreSQL, the server processes serving it) spent is reported: on a shared machine
"records per CPU-second" is the steadier figure.

Durability: the same ingest into SQLite (and PostgreSQL) through the log store settings
the shipped configurations used before they were made durable (``durability: queue`` in
memory behind a ``batch`` processor; for PostgreSQL, a persistent queue behind a
``batch`` processor) and through today's (``durability: commit`` with each commit's
write-ahead log fsynced; a persistent queue with batching after it), the clock running
until every record is *stored*, not only acknowledged. Each line is a ratio to the
previous default in the same run: the throughput cost of not losing acknowledged records.

Query: a store of M records (1,000,000 by default) is written directly through the
engine's bulk writer (24 hours of logs from 20 services, traces of 10 records), then the
engine answers 200 searches of each kind, timed end to end (validation, SQL, rows to
records): by trace ID, and by service over the last hour (newest 100). The baseline is a
primary-key lookup of one row on the same connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otelkit.logstore.query import build_query
from otelkit.logstore.records import Row
from otelkit.logstore.store import LogStore, open_store

POSTGRES = os.environ.get("OTELKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
RECORDS_PER_REQUEST = 1000
IN_FLIGHT = 4
SERVICES = [f"service-{n:02d}" for n in range(20)]
HOUR_NS = 3600 * 10**9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- ingest through the collector -------------------------------------------------------


def sdk_like_request(seed: int) -> bytes:
    rng = random.Random(seed)
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (("service.name", rng.choice(SERVICES)), ("service.version", "1.4.2"),
                       ("deployment.environment.name", "production")):  # fmt: skip
        resource_logs.resource.attributes.add(key=key, value=AnyValue(string_value=value))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "app.handlers"
    now = time.time_ns()
    trace_id = rng.randbytes(16)
    for i in range(RECORDS_PER_REQUEST):
        if i % 10 == 0:
            trace_id = rng.randbytes(16)
        traced = i % 10 < 8
        record = scope_logs.log_records.add(
            time_unix_nano=now + i * 1000,
            observed_time_unix_nano=now + i * 1000 + 500,
            severity_number=rng.choice((9, 9, 9, 13, 17)),  # type: ignore[arg-type]
            severity_text="INFO",
            trace_id=trace_id if traced else b"",
            span_id=rng.randbytes(8) if traced else b"",
            flags=1 if traced else 0,
        )
        record.body.string_value = (
            f"GET /api/items/{rng.randint(1, 99999)} answered 200 in {rng.random() * 50:.1f} ms "
            f"for user u-{rng.randint(1, 10**6)}"
        )
        for key, text in (("code.file.path", "/srv/app/handlers.py"),
                          ("code.function.name", "get_item"), ("http.route", "/api/items/{id}")):  # fmt: skip
            record.attributes.add(key=key, value=AnyValue(string_value=text))
        record.attributes.add(key="code.line.number", value=AnyValue(int_value=rng.randint(1, 500)))
    return request.SerializeToString()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def collector_config(port: int, exporter: str, processors: str = "") -> str:
    batch = "processors: {batch: {}}" if processors else ""
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{port}"}}
{batch}
exporters:
{exporter}
service:
  telemetry: {{logs: {{level: warn}}}}
  pipelines:
    logs:
      receivers: [otlp]
      processors: [{processors}]
      exporters: [{exporter.split(":", maxsplit=1)[0].strip()}]
"""


def start_collector(config: str, directory: Path, port: int) -> subprocess.Popen[bytes]:
    path = directory / f"collector-{port}.yaml"
    path.write_text(config)
    log = open(directory / f"collector-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((directory / f"collector-{port}.log").read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the collector did not start listening")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (all their threads) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def database_pids(url: str | None) -> list[int]:
    """PostgreSQL server processes serving the collector's writer (the server is local)."""
    if url is None:
        return []
    import psycopg

    from otelkit.logstore.postgres import split_url

    with psycopg.connect(split_url(url)[0]) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'otelkit-logstore'"
        ).fetchall()
    return [row[0] for row in rows]


async def send_all(
    port: int,
    payloads: list[bytes],
    requests: int,
    pids: Any,
    stored: Any = None,
) -> Measured:
    """Wall time from the first request to the last success (IN_FLIGHT at a time), or,
    with ``stored`` (a function answering whether everything is in the store), to the
    moment the last record is stored; and the CPU the collector (and its database server
    processes) spent meanwhile."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        export = channel.unary_unary(EXPORT)
        await export(payloads[0], timeout=30)  # warm up: connection and first write
        watched = pids()
        pending = iter(range(requests))

        async def worker() -> None:
            for n in pending:
                await export(payloads[n % len(payloads)], timeout=60)

        cpu_before = cpu_seconds(watched)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        while stored is not None and not await asyncio.to_thread(stored):
            await asyncio.sleep(0.01)
        wall = time.perf_counter() - started
        return Measured(wall, cpu_seconds(watched) - cpu_before)


@dataclass
class Measured:
    wall: float
    cpu: float
    records: int = 0

    @property
    def rate(self) -> float:
        return self.records / self.wall

    @property
    def cpu_per_record(self) -> float:
        return self.cpu / self.records


def ingest(
    name: str,
    exporter: str,
    records: int,
    directory: Path,
    db_url: str | None = None,
    *,
    processors: str = "",
    until_stored: str | None = None,
) -> Measured:
    """Ingest ``records``; with ``until_stored`` (the store's URL), until all are stored."""
    port = free_port()
    payloads = [sdk_like_request(seed) for seed in range(16)]
    process = start_collector(collector_config(port, exporter, processors), directory, port)
    stored = None
    if until_stored is not None:
        expected = records + RECORDS_PER_REQUEST  # and the warm-up request
        stored = lambda: _count(until_stored) >= expected  # noqa: E731
    try:
        measured = asyncio.run(
            send_all(port, payloads, records // RECORDS_PER_REQUEST,
                     lambda: [process.pid, *database_pids(db_url)], stored)
        )  # fmt: skip
    finally:
        process.terminate()
        process.wait(60)
    measured.records = records
    rate = measured.rate
    per_cpu = records / measured.cpu if measured.cpu else float("inf")
    print(f"  {name:<24} {records:>8,} records in {measured.wall:6.2f} s = {rate:>8,.0f} records/s;"
          f" CPU {measured.cpu:5.2f} s = {per_cpu:>8,.0f} records per CPU-second")  # fmt: skip
    return measured


def run_ingest(records: int, postgres: str | None, directory: Path) -> None:
    print(f"Ingest through the collector (OTLP/gRPC, {RECORDS_PER_REQUEST}-record requests, "
          f"{IN_FLIGHT} in flight, durability: commit)")  # fmt: skip
    # More records for the baseline: it is so cheap that CPU clock ticks need them.
    nop = ingest("nop (baseline)", "  nop:", records * 5, directory)
    db = directory / "ingest.db"
    sqlite_url = f"sqlite:///{db}"
    sqlite_rate = ingest(
        "logstore -> SQLite",
        f'  logstore:\n    url: "{sqlite_url}"\n    durability: commit\n    retention: 0',
        records,
        directory,
    )
    results = [("SQLite", sqlite_rate, sqlite_url, records + RECORDS_PER_REQUEST)]
    if postgres:
        pg_url = f"{postgres}?schema=otelkit_bench_{uuid.uuid4().hex[:8]}"
        pg_rate = ingest(
            "logstore -> PostgreSQL",
            f'  logstore:\n    url: "{pg_url}"\n    durability: commit\n    retention: 0',
            records,
            directory,
            pg_url,
        )
        results.append(("PostgreSQL", pg_rate, pg_url, records + RECORDS_PER_REQUEST))
    for name, measured, url, expected in results:
        store = open_store(url, create=False)
        stored = store.count()
        _drop(store)
        check = "all stored" if stored == expected else f"STORED {stored} OF {expected}"
        print(f"  {name:<11} {measured.rate / nop.rate:5.3f}x the nop pipeline's records/s, "
              f"{measured.cpu_per_record / nop.cpu_per_record:5.1f}x its CPU per record "
              f"({check})")  # fmt: skip


def _count(url: str) -> int:
    try:
        store = open_store(url, create=False)
    except Exception:
        return 0
    try:
        return store.count()
    except Exception:
        return 0
    finally:
        store.close()


def durability_cases(directory: Path, postgres: str | None) -> list[tuple[str, str, str, str]]:
    """(name, exporter YAML, processors, store URL): previous defaults first, per backend."""
    cases = []
    for n, (name, settings, processors) in enumerate([
        ("SQLite, previous default", "durability: queue\n    synchronous: normal", "batch"),
        ("SQLite, commit (default)", "durability: commit", ""),
        ("SQLite, commit, no fsync", "durability: commit\n    synchronous: normal", ""),
        ("SQLite, persistent queue", f"sending_queue: {{storage: {directory}/q{{n}}, batch: {{}}}}", ""),
    ]):  # fmt: skip
        url = f"sqlite:///{directory / f'durable-{n}.db'}"
        settings = settings.replace("{n}", str(n))
        cases.append((name, _logstore(url, settings), processors, url))
    if postgres:
        for n, (name, settings, processors) in enumerate([
            ("PostgreSQL, previous production", f"sending_queue: {{storage: {directory}/p{{n}}}}", "batch"),
            ("PostgreSQL, production", f"sending_queue: {{storage: {directory}/p{{n}}, batch: {{}}}}", ""),
        ]):  # fmt: skip
            url = f"{postgres}?schema=otelkit_bench_{uuid.uuid4().hex[:8]}"
            settings = settings.replace("{n}", str(n))
            cases.append((name, _logstore(url, settings), processors, url))
    return cases


def _logstore(url: str, settings: str) -> str:
    return f'  logstore:\n    url: "{url}"\n    retention: 0\n    {settings}'


def run_durability(records: int, postgres: str | None, directory: Path) -> list[tuple[str, float]]:
    """Records stored per second under each case, as ratios to the previous default."""
    print(f"Durability: ingest until stored ({RECORDS_PER_REQUEST}-record requests, "
          f"{IN_FLIGHT} in flight)")  # fmt: skip
    baselines: dict[str, Measured] = {}
    ratios: list[tuple[str, float]] = []
    for name, exporter, processors, url in durability_cases(directory, postgres):
        backend = name.split(",")[0]
        measured = ingest(name, exporter, records, directory, None if backend == "SQLite" else url,
                          processors=processors, until_stored=url)  # fmt: skip
        _drop(open_store(url, create=False))
        base = baselines.setdefault(backend, measured)
        ratio = measured.rate / base.rate
        ratios.append((name, ratio))
        print(f"    {name:<34} {ratio:5.3f}x the previous default's records stored per second, "
              f"{measured.cpu_per_record / base.cpu_per_record:5.2f}x its CPU per record")  # fmt: skip
    return ratios


# --- query latency over a large store ---------------------------------------------------


def synthetic_rows(count: int, now_ns: int, rng: random.Random) -> tuple[list[Row], list[bytes]]:
    """``count`` rows over the last 24 hours, oldest first; also a sample of trace IDs."""
    span = 24 * HOUR_NS
    step = span // count
    resources = {
        s: (
            f'{{"service.name":"{s}","service.version":"1.4.2"}}',
            s,
            None,
            "1.4.2",
            "production",
            None,
        )
        for s in SERVICES
    }
    attrs = [
        f'{{"code.function.name":"handler_{n}","code.line.number":{n},"http.route":"/api/r{n}"}}'
        for n in range(50)
    ]
    words = ["cache", "miss", "user", "order", "payment", "timeout", "retry", "item", "queue"]
    rows: list[Row] = []
    sample: list[bytes] = []
    trace_id = b""
    service = resources[SERVICES[0]]
    for n in range(count):
        if n % 10 == 0:
            trace_id = rng.randbytes(16)
            service = resources[rng.choice(SERVICES)]
            if n % 5000 == 0:
                sample.append(trace_id)
        ts = now_ns - span + n * step
        body = f"{rng.choice(words)} {rng.choice(words)} for request {n} took {n % 997} ms"
        rows.append((ts, ts + 1000, rng.choice((9, 9, 9, 13, 17)), "INFO", body, False,
                     attrs[n % 50], *service, "app.handlers", None, trace_id,
                     rng.randbytes(8), 1, None))  # fmt: skip
    return rows, sample


def fill(store: LogStore, count: int) -> tuple[list[bytes], float]:
    """Write ``count`` rows; returns sampled trace IDs and records per CPU-second (the
    writing thread, plus the PostgreSQL server process it talks to)."""
    rng = random.Random(7)
    now = time.time_ns()
    chunk = 50_000
    samples: list[bytes] = []
    writing = 0.0
    store.write_rows([])  # connect
    server = database_pids(None if store.url.startswith("sqlite:") else store.url)
    for start in range(0, count, chunk):
        rows, sample = synthetic_rows(min(chunk, count - start), now, rng)
        # Shift this chunk into its place in the day, so times stay in order.
        offset = (count - start - len(rows)) * (24 * HOUR_NS // count)
        rows = [(row[0] - offset, row[1] - offset, *row[2:]) for row in rows]
        samples.extend(sample)
        started = time.thread_time() + cpu_seconds(server)
        store.write_rows(rows)
        writing += time.thread_time() + cpu_seconds(server) - started
    return samples, count / writing


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


def timed(fn: Any, runs: int) -> list[float]:
    times = []
    for n in range(runs):
        started = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - started)
    return times


def point_lookup(store: LogStore) -> Any:
    backend: Any = store.backend
    if store.url.startswith("sqlite:"):
        conn = backend._reader()
        return lambda n: conn.execute("SELECT * FROM logs WHERE id = ?", (n + 1,)).fetchall()
    return lambda n: backend._read("SELECT * FROM logs WHERE id = %s", [n + 1])


def run_queries(name: str, url: str, count: int, runs: int) -> None:
    store = open_store(url)
    try:
        started = time.perf_counter()
        traces, write_rate = fill(store, count)
        loaded = time.perf_counter() - started
        print(f"  {name}: {count:,} records bulk-written in {loaded:.1f} s "
              f"({write_rate:,.0f} records per CPU-second of the writer and database)")  # fmt: skip
        by_trace = [build_query(trace_id=traces[n % len(traces)].hex()) for n in range(runs)]
        by_service = [build_query(services=[SERVICES[n % 20]], since="1h") for n in range(runs)]
        for query in by_trace[:3] + by_service[:3]:
            assert store.query(query).records, "a benchmark search found nothing"
        base = timed(point_lookup(store), runs)
        trace = timed(lambda n: store.query(by_trace[n]), runs)
        service = timed(lambda n: store.query(by_service[n]), runs)
        base50, base99 = percentiles(base)
        print(f"    {'primary-key lookup (base)':<32} p50 {base50:7.3f} ms   p99 {base99:7.3f} ms")
        for label, samples in (("by trace ID (10 records)", trace),
                               ("by service, last hour (100)", service)):  # fmt: skip
            p50, p99 = percentiles(samples)
            print(f"    {label:<32} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"
                  f"   ({p50 / base50:6.1f}x / {p99 / base99:6.1f}x base)")  # fmt: skip
    finally:
        _drop(store)


def _drop(store: LogStore) -> None:
    backend: Any = store.backend
    if hasattr(backend, "drop_schema"):
        store.close()
        backend.drop_schema()
    else:
        store.close()


def postgres_available(url: str | None) -> str | None:
    if not url:
        return None
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:
        print(f"(PostgreSQL at {url} not available: {exc}; its figures are skipped)")
        return None
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20-30 seconds")
    parser.add_argument("--records", type=int, help="records to ingest per pipeline")
    parser.add_argument("--store-records", type=int, help="records in the query store")
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--runs", type=int, default=200, help="searches of each kind")
    args = parser.parse_args()
    records = args.records or (30_000 if args.quick else 200_000)
    store_records = args.store_records or (100_000 if args.quick else 1_000_000)
    postgres = None if args.no_postgres else postgres_available(args.postgres)
    with tempfile.TemporaryDirectory(prefix="otelkit-logstore-bench-") as tmp:
        directory = Path(tmp)
        run_ingest(records, postgres, directory)
        run_durability(records, postgres, directory)
        print(f"Query latency over {store_records:,} records ({args.runs} searches each)")
        run_queries("SQLite", f"sqlite:///{directory / 'query.db'}", store_records, args.runs)
        if postgres:
            pg_url = f"{postgres}?schema=otelkit_bench_{uuid.uuid4().hex[:8]}"
            run_queries("PostgreSQL", pg_url, store_records, args.runs)


if __name__ == "__main__":
    main()
