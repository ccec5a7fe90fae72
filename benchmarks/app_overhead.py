"""App-side overhead: one FastAPI app on uvicorn (1 worker), six ways, in one run.

    python benchmarks/app_overhead.py [--quick] [--requests N] [--connections C] [--rounds R]
    python benchmarks/app_overhead.py --modes bare,otelkit --endpoint simple --base-tree ../main
    python benchmarks/app_overhead.py --profile [--mode otelkit] [--endpoint realistic]

Endpoints (one app serves both):

``simple``     ``GET /users/{id}``: async, returns a dict;
``realistic``  ``GET /orders/{id}``: a sync endpoint with a SQLAlchemy ``Session``
               dependency (the FastAPI tutorial's pattern), one ORM query on a SQLite file,
               one ``log.info`` line, a request ID.

Modes (each a server process, started as a user starts it):

``bare``       no instrumentation; ``logging.basicConfig`` to stdout, uvicorn's access log on;
``stock``      ``opentelemetry-instrument`` with ``opentelemetry-distro`` (OTLP/gRPC traces,
               metrics and logs; the logging instrumentation's handler exports each log
               record), SQLAlchemy instrumented with the upstream instrumentor (its loader
               skips it on SQLAlchemy 2.1, so the app calls it), ``basicConfig`` to stdout;
``sentry``     ``sentry_sdk.init(traces_sample_rate=1.0)`` sending to a local stand-in,
               ``basicConfig`` to stdout;
``otelkit``    ``opentelemetry-instrument`` with otelkit's distro and defaults (JSON logs
               and access records on stdout, every log record exported over OTLP; the
               collector makes the log store's access record from the server span);
``otelkit-both``  the same with ``OTELKIT_ACCESS_LOG=both`` (the app exports its access
               records over OTLP too);
``otelkit-no-access``  the same with ``OTELKIT_ACCESS_LOG=off``.

Every instrumented mode keeps every trace (server and database spans). Exports go to one
sink process (OTLP/gRPC accept-and-discard, and the Sentry stand-in), the collector's
place. The app is pinned to the first CPU; the load generator (Python asyncio, keep-alive
connections, a bounded number of requests) and the sink to the others. Rounds alternate
between the servers; each figure is the median over rounds. CPU per request is the server
process's user+system time (all its threads, exporters included) over the requests; the
stdout of every server goes to /dev/null.

``--modes`` and ``--endpoint`` restrict a run; ``--base-tree PATH`` adds, for each otelkit
mode, the same server importing otelkit from another checkout (``otelkit@base``), measured
in the same rounds, to compare a change with its baseline; ``--gc`` adds the share of each
server's CPU spent in the garbage collector (timed by a ``gc.callbacks`` hook).

``--profile`` samples bare's server and one mode's under load with py-spy (``--gil``: the
thread holding the GIL, so Python CPU time) and prints where each microsecond of a request
goes, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from math import nan
from pathlib import Path

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bare", "stock", "sentry", "otelkit", "otelkit-both", "otelkit-no-access")
ENDPOINTS = {"simple": "/users/{n}", "realistic": "/orders/{n}"}
AUTO_MODES = {"stock", "otelkit", "otelkit-both", "otelkit-no-access"}
ROWS = 100
BASE = "@base"
GC_FILE = "APP_OVERHEAD_GC_FILE"
LOADED_FROM = "otelkit loaded from"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server ------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def build_app(mode: str, database: str) -> object:
    import logging

    from fastapi import Depends, FastAPI
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    if not mode.startswith("otelkit"):
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stdout,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    log = logging.getLogger("shop.orders")
    engine = create_engine(f"sqlite:///{database}")
    if mode == "stock":
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engine=engine, skip_dep_check=True)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        if session.get(User, 1) is None:
            session.add_all(User(id=i, name=f"user-{i}") for i in range(1, ROWS + 1))
            session.commit()

    def get_session() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, object]:
        return {"id": user_id, "name": "user"}

    @app.get("/orders/{order_id}")
    def order(order_id: int, session: Session = Depends(get_session)) -> dict[str, object]:  # noqa: B008
        customer = session.get(User, order_id)
        name = customer.name if customer is not None else None
        log.info("order %s for %s", order_id, name)
        return {"id": order_id, "customer": name}

    return app


def _count_gc_time(path: str) -> None:
    """Keep the seconds this process spends in garbage collection in ``path`` (8 bytes,
    mapped: no system call per collection)."""
    import gc
    import mmap
    import struct

    with open(path, "wb") as file:
        file.write(bytes(8))
    with open(path, "r+b") as file:
        shared = mmap.mmap(file.fileno(), 8)
    total, started = [0.0], [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            total[0] += time.thread_time() - started[0]
            shared[:8] = struct.pack("d", total[0])

    gc.callbacks.append(on_collection)


def _gc_seconds(path: Path) -> float:
    import struct

    seconds: float = struct.unpack("d", path.read_bytes()[:8])[0]
    return seconds


def serve(mode: str, port: int, sentry_port: int, database: str) -> None:
    import uvicorn

    gc_file = os.environ.get(GC_FILE)
    if gc_file:
        _count_gc_time(gc_file)

    if mode.startswith("otelkit"):
        import otelkit

        print(f"{LOADED_FROM} {otelkit.__file__}", file=sys.stderr, flush=True)

    if mode == "sentry":
        import sentry_sdk

        sentry_sdk.init(dsn=f"http://public@127.0.0.1:{sentry_port}/1", traces_sample_rate=1.0)
    app = build_app(mode, database)
    uvicorn.run(app, host="127.0.0.1", port=port)  # type: ignore[arg-type]


def server_env(mode: str, sink_port: int, base_tree: str | None = None) -> dict[str, str]:
    tree = base_tree if mode.endswith(BASE) and base_tree else str(ROOT)
    mode = mode.removesuffix(BASE)
    env = {**os.environ, "PYTHONPATH": tree}
    for name in list(env):
        if name.startswith(("OTEL_", "OTELKIT_", "SENTRY_")):
            del env[name]
    env["OTEL_SERVICE_NAME"] = "bench"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    if mode == "stock":
        env.update(OTEL_PYTHON_DISTRO="distro", OTEL_PYTHON_CONFIGURATOR="configurator")
    elif mode.startswith("otelkit"):
        env.update(OTEL_PYTHON_DISTRO="otelkit", OTELKIT_ENVIRONMENT="production")
        access_log = {"otelkit-both": "both", "otelkit-no-access": "off"}.get(mode)
        if access_log is not None:
            env["OTELKIT_ACCESS_LOG"] = access_log
    return env


# --- the sink --------------------------------------------------------------------------


def run_sink(port: int, sentry_port: int) -> None:
    import threading
    from concurrent import futures
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import grpc

    def accept(request: bytes, context: object) -> bytes:
        return b""  # an empty Export*ServiceResponse

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for signal_name in ("trace", "metrics", "logs"):
        service = {"trace": "TraceService", "metrics": "MetricsService", "logs": "LogsService"}
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    f"opentelemetry.proto.collector.{signal_name}.v1.{service[signal_name]}",
                    {"Export": grpc.unary_unary_rpc_method_handler(accept)},
                ),
            )
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()

    class Envelopes(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    sentry = ThreadingHTTPServer(("127.0.0.1", sentry_port), Envelopes)
    threading.Thread(target=sentry.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


# --- the load generator ----------------------------------------------------------------


async def _connection(port: int, path: str, requests: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads = [
        f"GET {path.format(n=n)} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n".encode()
        for n in range(1, ROWS + 1)
    ]
    for i in range(requests):
        started = time.perf_counter()
        writer.write(heads[i % ROWS])
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        latencies.append(time.perf_counter() - started)
    writer.close()


async def _load(port: int, path: str, requests: int, connections: int) -> dict[str, float]:
    latencies: list[float] = []
    per_connection = requests // connections
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, path, per_connection, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def loadgen(port: int, path: str, requests: int, connections: int) -> None:
    print(json.dumps(asyncio.run(_load(port, path, requests, connections))))


# --- orchestration ---------------------------------------------------------------------


def _cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, load-generator CPUs): disjoint when there are at least two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, set(available[1:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _spawn(
    args: list[str],
    cpus: set[int],
    env: dict[str, str] | None = None,
    auto: bool = False,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start this script with ``args``; stdout to /dev/null, stderr to ``log`` if given."""
    command = [sys.executable, __file__, *args]
    if auto:
        wrapper = shutil.which("opentelemetry-instrument")
        if wrapper is None:
            raise SystemExit("opentelemetry-instrument is not installed")
        command = [wrapper, *command]
    with open(log or os.devnull, "ab") as errors:
        process = subprocess.Popen(
            command,
            env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=(env or {}).get("PYTHONPATH", ROOT),  # opentelemetry-instrument puts it first
            stdout=subprocess.DEVNULL,
            stderr=errors if log is not None else None,
        )
    os.sched_setaffinity(process.pid, cpus)  # before it has imported anything
    return process


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _measure(
    port: int,
    pid: int,
    path: str,
    requests: int,
    connections: int,
    cpus: set[int],
    gc_file: Path | None = None,
) -> dict[str, float]:
    gc_before = _gc_seconds(gc_file) if gc_file else 0.0
    before = _cpu_seconds(pid)
    loader = subprocess.Popen(
        [sys.executable, __file__, "--loadgen", str(port), path, str(requests), str(connections)],
        stdout=subprocess.PIPE,
    )
    os.sched_setaffinity(loader.pid, cpus)
    output, _ = loader.communicate()
    if loader.returncode != 0:
        raise RuntimeError(f"load generator failed with {loader.returncode}")
    result: dict[str, float] = json.loads(output)
    cpu = _cpu_seconds(pid) - before
    result["cpu_us_per_request"] = cpu / result["requests"] * 1e6
    if gc_file:
        result["gc_share"] = (_gc_seconds(gc_file) - gc_before) / cpu if cpu else 0.0
    result["rps"] = result["requests"] / result["seconds"]
    return result


def _check_stock_available() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("opentelemetry-distro")
    except PackageNotFoundError:
        raise SystemExit(
            "the stock mode needs opentelemetry-distro: pip install -e '.[bench]'"
        ) from None


@contextmanager
def _servers(
    modes: tuple[str, ...],
    server_cpus: set[int],
    load_cpus: set[int],
    base_tree: str | None = None,
    count_gc: bool = False,
) -> Iterator[tuple[dict[str, tuple[int, int]], str]]:
    """Start the sink and one server per mode; yields (mode -> (port, pid), a work folder)."""
    sink_port, sentry_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as workdir, _processes() as started:
        started.append(_spawn(["--sink", str(sink_port), str(sentry_port)], load_cpus))
        _wait(sink_port, started[-1])
        servers = {}
        for mode in modes:
            port = _free_port()
            database = str(Path(workdir) / f"{mode}.db")
            args = ["--serve", mode.removesuffix(BASE), str(port), str(sentry_port), database]
            env = server_env(mode, sink_port, base_tree)
            if count_gc:
                env[GC_FILE] = str(Path(workdir) / f"{mode}.gc")
            log = Path(workdir) / f"{mode}.log"
            auto = mode.removesuffix(BASE) in AUTO_MODES
            started.append(_spawn(args, server_cpus, env, auto=auto, log=log))
            try:
                _wait(port, started[-1])
            except RuntimeError:
                print(log.read_text(errors="replace"), file=sys.stderr)
                raise
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(LOADED_FROM):
                    print(f"{mode}: {line}", file=sys.stderr)
            servers[mode] = (port, started[-1].pid)
        yield servers, workdir


def run(
    requests: int,
    connections: int,
    rounds: int,
    warmup: int,
    modes: tuple[str, ...] = MODES,
    endpoints: tuple[str, ...] = tuple(ENDPOINTS),
    base_tree: str | None = None,
    count_gc: bool = False,
) -> None:
    if "stock" in modes:
        _check_stock_available()
    if base_tree:
        modes += tuple(mode + BASE for mode in modes if mode.startswith("otelkit"))
    server_cpus, load_cpus = _cpus()
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        endpoint: {mode: [] for mode in modes} for endpoint in endpoints
    }
    with _servers(modes, server_cpus, load_cpus, base_tree, count_gc) as (servers, workdir):
        for port, pid in servers.values():
            for endpoint in endpoints:
                _measure(port, pid, ENDPOINTS[endpoint], warmup, connections, load_cpus)
        for _ in range(rounds):
            for endpoint in endpoints:
                path = ENDPOINTS[endpoint]
                for mode in modes:
                    port, pid = servers[mode]
                    gc_file = Path(workdir) / f"{mode}.gc" if count_gc else None
                    results[endpoint][mode].append(
                        _measure(port, pid, path, requests, connections, load_cpus, gc_file)
                    )
    print(
        f"app_overhead: FastAPI on uvicorn (1 worker), {requests} requests x {rounds} "
        f"round(s) per endpoint, {connections} keep-alive connections; app CPUs "
        f"{sorted(server_cpus)}, load generator + sink CPUs {sorted(load_cpus)}; medians over "
        "rounds"
    )
    for endpoint, by_mode in results.items():
        _report(endpoint, by_mode)
    print(
        "CPU us/req: the app process's CPU time per request (all threads). CPU-bound req/s = "
        "1e6 / CPU us per request: what one dedicated core would serve, steadier than req/s "
        "when other work shares the machine; 'of bare' is the CPU-bound throughput as a "
        "share of bare's, 'CPU vs stock' the CPU per request as a share of stock's, 'added vs "
        "stock' the CPU added over bare as a share of what stock adds"
        + ("; 'GC %' the share of it spent in garbage collection." if count_gc else ".")
    )


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def _report(endpoint: str, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{endpoint}: GET {ENDPOINTS[endpoint].format(n='{id}')}")
    bare_cpu = _median(results["bare"], "cpu_us_per_request") if "bare" in results else nan
    stock_cpu = _median(results["stock"], "cpu_us_per_request") if "stock" in results else nan
    counted_gc = all("gc_share" in row for rows in results.values() for row in rows)
    print(
        f"{'mode':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'added':>6} {'CPU-bound req/s':>15} {'of bare':>8} {'CPU vs stock':>12} "
        f"{'added vs stock':>14}" + (f" {'GC %':>5}" if counted_gc else "")
    )
    for mode, rows in results.items():
        cpu = _median(rows, "cpu_us_per_request")
        gc_share = f" {_median(rows, 'gc_share') * 100:>5.1f}" if counted_gc else ""
        print(
            f"{mode:<22} {_median(rows, 'rps'):>7.0f} {_median(rows, 'p50_ms'):>7.2f} "
            f"{_median(rows, 'p99_ms'):>7.2f} {cpu:>10.0f} {cpu - bare_cpu:>6.0f} "
            f"{1e6 / cpu:>15.0f} {bare_cpu / cpu:>8.2f} {cpu / stock_cpu:>12.2f} "
            f"{(cpu - bare_cpu) / (stock_cpu - bare_cpu):>14.2f}{gc_share}"
        )


# --- where the microseconds go -------------------------------------------------------

# (category, substrings of a frame's file or function): a sample belongs to the category
# of its innermost frame that matches one, so SDK work done for the middleware counts as
# SDK work, not middleware.
CATEGORIES = [
    ("OTLP encoding and sending (exporter threads)", ("opentelemetry/exporter/", "presets/encoder.py", "presets/logexport.py", "grpc/_channel", "google/protobuf")),
    ("batch processors (queue, export loop)", ("sdk/_shared_internal", "sdk/trace/export", "sdk/_logs/_internal/export")),
    ("metrics (SDK measurements)", ("opentelemetry/sdk/metrics/",)),
    ("attribute cleaning (SDK)", ("opentelemetry/attributes/",)),
    ("log records (SDK)", ("opentelemetry/sdk/_logs/",)),
    ("span start/end (SDK, sampler, ids)", ("opentelemetry/sdk/trace/", "presets/sampling.py", "opentelemetry/sdk/util")),
    ("context, propagation, trace API", ("opentelemetry/context/", "opentelemetry/propagat", "opentelemetry/baggage/", "opentelemetry/trace/", "opentelemetry/util/_decorator")),
    ("semconv helpers, URL and header parsing", ("instrumentation/_semconv", "opentelemetry/util/http/")),
    ("span name: the package's route matching", ("instrumentation/fastapi/",)),
    ("ASGI server-span middleware (the package's)", ("instrumentation/asgi/",)),
    ("otelkit server-span middleware", ("presets/asgi.py",)),
    ("SQLAlchemy tracing", ("instrumentation/sqlalchemy/", "presets/sql.py", "presets/dbtrace.py")),
    ("request ID and access record", ("presets/requestid.py", "presets/access.py", "presets/context.py")),
    ("log formatting, stdout, logging module", ("presets/logs.py", "/logging/__init__.py", "instrumentation/logging/")),
    ("sentry-sdk", ("sentry_sdk/",)),
    ("app: SQLAlchemy ORM and SQLite", ("site-packages/sqlalchemy/", "sqlite3/")),
    ("app: FastAPI, Starlette, pydantic", ("site-packages/fastapi/", "site-packages/starlette/", "pydantic", "/json/")),
    ("server: uvicorn, asyncio, threads", ("site-packages/uvicorn/", "/asyncio/", "site-packages/anyio/", "/threading.py", "/concurrent/", "/queue.py")),
]  # fmt: skip


def categorize(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def _profile_one(
    mode: str, path: str, seconds: float, connections: int
) -> tuple[float, Counter[str]]:
    """(CPU us per request, py-spy samples by category) of one mode's server under load."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    server_cpus, load_cpus = _cpus()
    with _servers((mode,), server_cpus, load_cpus) as (servers, workdir):
        port, pid = servers[mode]
        _measure(port, pid, path, 1000, connections, load_cpus)
        raw = Path(workdir) / "profile.txt"
        sampler = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", "1000", "--gil", "--full-filenames",
             "--nonblocking", "--format", "raw", "--output", str(raw),
             "--duration", str(int(seconds))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.sched_setaffinity(sampler.pid, load_cpus)
        time.sleep(1)
        before = _cpu_seconds(pid)
        served = 0
        deadline = time.monotonic() + seconds - 2
        while time.monotonic() < deadline:
            served += int(_measure(port, pid, path, 2000, connections, load_cpus)["requests"])
        cpu_us = (_cpu_seconds(pid) - before) / served * 1e6
        sampler.wait(seconds + 30)
        samples: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():  # a frame name with a line break leaves a partial line
                samples[categorize(stack)] += int(count)
    return cpu_us, samples


def profile(mode: str, endpoint: str, seconds: float, connections: int) -> None:
    """Where each microsecond of a request goes, for bare and for ``mode``: the CPU per
    request split by the share of py-spy samples in each category."""
    path = ENDPOINTS[endpoint]
    shares: dict[str, dict[str, float]] = {}
    cpu: dict[str, float] = {}
    for name in ("bare", mode):
        cpu[name], samples = _profile_one(name, path, seconds, connections)
        total = sum(samples.values()) or 1
        shares[name] = {key: count / total * cpu[name] for key, count in samples.items()}
    print(
        f"GET {path.format(n='{id}')}: CPU per request bare {cpu['bare']:.0f} us, {mode} "
        f"{cpu[mode]:.0f} us; split by py-spy --gil samples (innermost matching frame)"
    )
    print(f"{'where':<48} {'bare us':>8} {mode + ' us':>12} {'added':>7}")
    names = sorted(set(shares["bare"]) | set(shares[mode]), key=lambda k: -shares[mode].get(k, 0))
    for key in names:
        ours, theirs = shares[mode].get(key, 0.0), shares["bare"].get(key, 0.0)
        print(f"{key:<48} {theirs:>8.1f} {ours:>12.1f} {ours - theirs:>+7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--requests", type=int, help="requests per server per round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--profile", action="store_true", help="profile one mode instead")
    parser.add_argument("--mode", choices=MODES, default="otelkit", help="profiled with bare")
    parser.add_argument(
        "--endpoint", choices=list(ENDPOINTS), help="only this one (--profile: realistic)"
    )
    parser.add_argument("--modes", help="comma-separated modes to run (bare and stock for ratios)")
    parser.add_argument("--base-tree", help="also run each otelkit mode with otelkit from here")
    parser.add_argument("--gc", action="store_true", help="also the CPU share of GC")
    parser.add_argument("--seconds", type=float, default=20, help="for --profile")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--sink", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, port, sentry_port, database = args.serve
        serve(mode, int(port), int(sentry_port), database)
    elif args.sink:
        run_sink(*args.sink)
    elif args.loadgen:
        port, path, requests, connections = args.loadgen
        loadgen(int(port), path, int(requests), int(connections))
    elif args.profile:
        profile(args.mode, args.endpoint or "realistic", args.seconds, args.connections)
    else:
        requests = args.requests or (1000 if args.quick else 2000)
        rounds = args.rounds or (1 if args.quick else 5)
        modes = tuple(args.modes.split(",")) if args.modes else MODES
        unknown = set(modes) - set(MODES)
        if unknown:
            parser.error(f"unknown modes {sorted(unknown)}")
        endpoints = (args.endpoint,) if args.endpoint else tuple(ENDPOINTS)
        warmup = 200 if args.quick else 1000
        run(requests, args.connections, rounds, warmup, modes, endpoints, args.base_tree, args.gc)


if __name__ == "__main__":
    main()
