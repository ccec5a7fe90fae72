"""App-side overhead: one FastAPI route on uvicorn (1 worker), three ways, in one run.

    python benchmarks/app_overhead.py [--quick] [--requests N] [--connections C] [--rounds R]

``bare``     no instrumentation;
``stock``    the upstream FastAPI instrumentation (its defaults) with the SDK's batch span
             processor, OTLP/gRPC span exporter and periodic OTLP metric reader;
``otelkit``  ``otelkit.instrument_all(app=app)`` with OTLP/gRPC export (its default: the
             upstream FastAPI instrumentation with otelkit's settings, lean span encoder);
``otelkit-native``  the same with ``OTELKIT_FASTAPI_NATIVE=true``: FastAPI's own request
             telemetry instead of the instrumentation package (FastAPI 0.165+).

Both instrumented servers sample every request and export to the same OTLP/gRPC sink (a
separate process that accepts and discards requests). The load generator is another
process (Python asyncio, keep-alive connections, a bounded number of requests). Where
the machine allows it, the servers are pinned to CPU 0 and the load generator and sink
to the other CPUs. Rounds alternate between the three servers; each figure is the median
over rounds. Server CPU per request is the server process's user+system time (all its
threads, the exporter's included) over the measured requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bare", "stock", "otelkit", "otelkit-native")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server ------------------------------------------------------------------------


def build_app(mode: str, sink: str) -> object:
    from fastapi import FastAPI

    if mode == "otelkit-native":
        os.environ["OTELKIT_FASTAPI_NATIVE"] = "true"
    if mode.startswith("otelkit"):
        import otelkit

        otelkit.configure(
            service_name="bench", endpoint=sink, log_format="none", environment="production"
        )
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, object]:
        return {"id": user_id, "name": "user"}

    if mode == "stock":
        _stock_sdk(sink)
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    elif mode.startswith("otelkit"):
        import otelkit

        otelkit.instrument_all(app=app)
    return app


def _stock_sdk(sink: str) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "bench"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink)))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=sink))
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource))


def serve(mode: str, port: int, sink: str) -> None:
    import uvicorn

    app = build_app(mode, sink)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]


# --- the sink --------------------------------------------------------------------------


def run_sink(port: int) -> None:
    from concurrent import futures

    import grpc

    counts = {"requests": 0, "bytes": 0}

    def accept(request: bytes, context: object) -> bytes:
        counts["requests"] += 1
        counts["bytes"] += len(request)
        return b""  # an empty Export*ServiceResponse

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(accept)},
    )
    metrics_handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        {"Export": grpc.unary_unary_rpc_method_handler(accept)},
    )
    logs_handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {"Export": grpc.unary_unary_rpc_method_handler(accept)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler, metrics_handler, logs_handler))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


# --- the load generator ----------------------------------------------------------------


async def _connection(port: int, requests: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /users/42 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n"
    for _ in range(requests):
        started = time.perf_counter()
        writer.write(request)
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


async def _load(port: int, requests: int, connections: int) -> dict[str, float]:
    latencies: list[float] = []
    per_connection = requests // connections
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, per_connection, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def loadgen(port: int, requests: int, connections: int) -> None:
    print(json.dumps(asyncio.run(_load(port, requests, connections))))


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


def _wait(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
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


def _spawn(args: list[str], cpus: set[int]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OTEL_TRACES_SAMPLER", None)
    process = subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=ROOT)
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
    port: int, pid: int, requests: int, connections: int, cpus: set[int]
) -> dict[str, float]:
    before = _cpu_seconds(pid)
    loader = subprocess.Popen(
        [sys.executable, __file__, "--loadgen", str(port), str(requests), str(connections)],
        stdout=subprocess.PIPE,
    )
    os.sched_setaffinity(loader.pid, cpus)
    output, _ = loader.communicate()
    if loader.returncode != 0:
        raise RuntimeError(f"load generator failed with {loader.returncode}")
    result: dict[str, float] = json.loads(output)
    result["cpu_us_per_request"] = (_cpu_seconds(pid) - before) / result["requests"] * 1e6
    result["rps"] = result["requests"] / result["seconds"]
    return result


def run(requests: int, connections: int, rounds: int, warmup: int) -> None:
    server_cpus, load_cpus = _cpus()
    sink_port = _free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    with _processes() as started:
        started.append(_spawn(["--sink", str(sink_port)], load_cpus))
        _wait(sink_port, started[-1])
        servers = {}
        for mode in MODES:
            port = _free_port()
            started.append(_spawn(["--serve", mode, str(port), sink], server_cpus))
            _wait(port, started[-1])
            servers[mode] = (port, started[-1].pid)
        for port, pid in servers.values():
            _measure(port, pid, warmup, connections, load_cpus)
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode in MODES:
                port, pid = servers[mode]
                results[mode].append(_measure(port, pid, requests, connections, load_cpus))
    _report(results, requests, connections, rounds, server_cpus, load_cpus)


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def _report(
    results: dict[str, list[dict[str, float]]],
    requests: int,
    connections: int,
    rounds: int,
    server_cpus: set[int],
    load_cpus: set[int],
) -> None:
    print(
        f"app_overhead: GET /users/{{id}} on uvicorn (1 worker), {requests} requests x {rounds} "
        f"round(s), {connections} keep-alive connections; server CPUs {sorted(server_cpus)}, "
        f"load generator + sink CPUs {sorted(load_cpus)}; medians over rounds"
    )
    bare_rps = _median(results["bare"], "rps")
    bare_cpu = _median(results["bare"], "cpu_us_per_request")
    print(
        f"{'mode':<15} {'req/s':>7} {'vs bare':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/req':>10} {'added':>6} {'CPU-bound req/s':>15} {'vs bare':>8}"
    )
    for mode in MODES:
        rows = results[mode]
        rps, cpu = _median(rows, "rps"), _median(rows, "cpu_us_per_request")
        print(
            f"{mode:<15} {rps:>7.0f} {rps / bare_rps:>8.0%} {_median(rows, 'p50_ms'):>7.2f} "
            f"{_median(rows, 'p99_ms'):>7.2f} {cpu:>10.0f} {cpu - bare_cpu:>6.0f} "
            f"{1e6 / cpu:>15.0f} {bare_cpu / cpu:>8.0%}"
        )
    print(
        "CPU-bound req/s = 1e6 / (server CPU us per request): what one dedicated core would "
        "serve; steadier than req/s when other work shares the machine."
    )
    stock_rps = _median(results["stock"], "rps")
    stock_cpu = _median(results["stock"], "cpu_us_per_request")
    for mode in ("otelkit", "otelkit-native"):
        print(
            f"{mode} vs stock: req/s {_median(results[mode], 'rps') / stock_rps:.2f}x, "
            f"CPU-bound req/s {stock_cpu / _median(results[mode], 'cpu_us_per_request'):.2f}x"
        )
    print(
        "per-round req/s: "
        + "; ".join(
            f"{mode} " + ", ".join(f"{row['rps']:.0f}" for row in results[mode]) for mode in MODES
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 20 seconds")
    parser.add_argument("--requests", type=int, help="requests per server per round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int)
    parser.add_argument(
        "--serve", nargs=3, metavar=("MODE", "PORT", "SINK"), help=argparse.SUPPRESS
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
    elif args.sink:
        run_sink(args.sink)
    elif args.loadgen:
        loadgen(*args.loadgen)
    else:
        requests = args.requests or (1500 if args.quick else 3000)
        rounds = args.rounds or (1 if args.quick else 3)
        run(requests, args.connections, rounds, warmup=300 if args.quick else 1000)


if __name__ == "__main__":
    main()
