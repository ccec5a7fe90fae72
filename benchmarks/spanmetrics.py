"""Span-derived metrics: pipeline throughput against ``nop``, per-span cost, scrape time.

    python benchmarks/spanmetrics.py [--quick] [--seconds 8]

1. Pipeline throughput. A load process sends one pre-serialized request of 512 realistic
   server spans (10 attributes, 3 services, 20 routes, 3 status codes) over OTLP/gRPC with
   8 requests in flight, and scrapes ``/metrics`` once a second, to an ``otelkit
   collector run`` process running either

   * ``nop``:          ``otlp -> nop``
   * ``spanmetrics``:  ``otlp -> spanmetrics -> prometheus`` (three dimensions, exemplars on,
                       1s flush)

   Runs alternate (nop, spanmetrics, nop, spanmetrics ...) and the best of each is kept.
   Reported: spans/s, collector CPU per span (``/proc/<pid>/stat``), and spanmetrics as a
   ratio to nop measured in the same run. The machine is shared: the load process needs a
   core too, so absolute spans/s is bounded by both.

2. Per-span CPU cost in-process: ``SpanMetricsConnector.aggregate`` on the parsed request,
   against ``ParseFromString`` of the same bytes (the receiver's unavoidable work); then on
   the app traffic of ``benchmarks/collector_throughput.py`` (DB, HTTP client and server
   spans, 512 a request) with the shipped ``collector/otelkit.yaml``'s spanmetrics
   settings. ``--baseline-tree DIR`` measures DIR's ``spanmetrics.py`` on that traffic
   too, in interleaved rounds (best of each), and reports the ratio: a same-run
   comparison on a shared machine. The baseline module is loaded from its file and uses
   this checkout's other modules.

3. Scrape time at 10k series: 10,000 span-metric series (calls counter plus duration
   histogram, 16 buckets each) in the ``prometheus`` exporter, rendered as text and as
   OpenMetrics, uncached (the store changed since the last scrape) and cached, against
   ``prometheus_client.generate_latest`` of a registry holding the same series.

4. Count error (``--count-error`` runs only this): 2,000 requests of an app on the real
   OpenTelemetry SDK, without head sampling and with a 0.25 head sampler that writes
   ``ot=th`` (``tests.support.head_sampling.head_sampler``), through the connector;
   reported: the span-metrics request count divided by the true 2,000, for one seeded
   run and over 20 seeds, beside counting each kept span once (upstream's behaviour).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))  # collector_throughput's app traffic

BATCH = 512
IN_FLIGHT = 8
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(20)]
STATUS = [200, 200, 200, 200, 404, 500]
CONFIGS = {
    "nop": """
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:%(grpc)d"}}}}
exporters: {nop: {}}
service:
  pipelines: {traces: {receivers: [otlp], exporters: [nop]}}
  telemetry: {metrics: {address: "127.0.0.1:%(telemetry)d"}}
""",
    "spanmetrics": """
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:%(grpc)d"}}}}
connectors:
  spanmetrics:
    metrics_flush_interval: 1s
    exemplars: {enabled: true}
    dimensions: [{name: http.route}, {name: http.request.method}, {name: http.response.status_code}]
exporters: {prometheus: {endpoint: "127.0.0.1:%(scrape)d"}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [spanmetrics]}
    metrics: {receivers: [spanmetrics], exporters: [prometheus]}
  telemetry: {metrics: {address: "127.0.0.1:%(telemetry)d"}}
""",
}


def build_request(batch: int = BATCH, seed: int = 7) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def attr(key: str, value: str | int) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    for service in ("checkout", "catalog", "accounts"):
        rs = request.resource_spans.add()
        for key, value in (("service.name", service), ("service.version", "2.14.1"),
                           ("deployment.environment.name", "production"),
                           ("host.name", f"{service}-7d9f8c-x2x9k"),
                           ("telemetry.sdk.language", "python")):  # fmt: skip
            rs.resource.attributes.append(attr(key, value))
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.fastapi"
        for _ in range(batch // 3 + (1 if service == "checkout" else 0)):
            route = rng.choice(ROUTES)
            status = rng.choice(STATUS)
            start = 1_700_000_000_000_000_000 + rng.randrange(10**12)
            span = ss.spans.add(
                name=f"GET {route}",
                kind=2,
                trace_id=rng.randbytes(16),
                span_id=rng.randbytes(8),
                start_time_unix_nano=start,
                end_time_unix_nano=start + rng.randrange(200_000, 900_000_000),
            )
            span.status.code = 2 if status >= 500 else 0
            for key, value in (("http.request.method", "GET"), ("http.route", route),
                               ("url.path", route.replace("{id}", str(rng.randrange(10**6)))),
                               ("url.scheme", "https"), ("server.address", "shop.example.com"),
                               ("http.response.status_code", status),
                               ("network.protocol.version", "1.1"),
                               ("client.address", f"10.0.{rng.randrange(255)}.{rng.randrange(255)}"),
                               ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"),
                               ("server.port", 443)):  # fmt: skip
                span.attributes.append(attr(key, value))
    return request.SerializeToString()


# 1. Pipeline throughput -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("collector exited during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(conn: Connection, grpc_port: int, scrape_port: int, seconds: float, body: bytes) -> None:
    """Runs in its own process: keep IN_FLIGHT exports going, scrape once a second."""
    import grpc
    import httpx

    async def run() -> tuple[int, int, int]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        export = channel.unary_unary(TRACE_EXPORT)
        ok = refused = scrapes = 0
        stop = time.monotonic() + seconds

        async def sender() -> None:
            nonlocal ok, refused
            while time.monotonic() < stop:
                try:
                    await export(body, timeout=10)
                    ok += 1
                except grpc.aio.AioRpcError:
                    refused += 1
                    await asyncio.sleep(0.01)

        async def scraper() -> None:
            nonlocal scrapes
            if not scrape_port:
                return
            async with httpx.AsyncClient() as client:
                while time.monotonic() < stop:
                    await client.get(f"http://127.0.0.1:{scrape_port}/metrics")
                    scrapes += 1
                    await asyncio.sleep(1)

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)), scraper())
        await channel.close()
        return ok, refused, scrapes

    conn.send(asyncio.run(run()))


def measure_pipeline(name: str, seconds: float, body: bytes, spans: int) -> dict[str, float]:
    ports = {"grpc": free_port(), "scrape": free_port(), "telemetry": free_port()}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIGS[name] % ports)
        process = subprocess.Popen(
            [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(ports["grpc"], process)
            warm_seconds = 1.0
            _run_load(ports["grpc"], 0, warm_seconds, body)
            cpu_before = cpu_seconds(process.pid)
            started = time.monotonic()
            ok, refused, scrapes = _run_load(
                ports["grpc"], ports["scrape"] if name == "spanmetrics" else 0, seconds, body
            )
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(process.pid) - cpu_before
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    return {
        "spans_per_s": ok * spans / elapsed,
        "cpu_us_per_span": cpu / max(ok * spans, 1) * 1e6,
        "refused": refused,
        "scrapes": scrapes,
    }


def _run_load(
    grpc_port: int, scrape_port: int, seconds: float, body: bytes
) -> tuple[int, int, int]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=load, args=(child, grpc_port, scrape_port, seconds, body))
    proc.start()
    result: tuple[int, int, int] = parent.recv()
    proc.join(10)
    return result


# 2. Per-span cost in-process ------------------------------------------------------------
def per_span_cost(body: bytes, spans: int, seconds: float) -> tuple[float, float, float]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from otelkit.collector.connectors.spanmetrics import SpanMetricsConfig, SpanMetricsConnector
    from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
    from otelkit.collector.runtime.telemetry import SelfTelemetry

    config = SpanMetricsConfig.model_validate({
        "exemplars": {"enabled": True},
        "dimensions": [{"name": "http.route"}, {"name": "http.request.method"},
                       {"name": "http.response.status_code"}],
    })  # fmt: skip
    settings = CreateSettings(ComponentID("spanmetrics"), Kind.CONNECTOR, SelfTelemetry())
    connector = SpanMetricsConnector(settings, config, next_consumer=None)  # type: ignore[arg-type]
    plain = SpanMetricsConnector(settings, SpanMetricsConfig(), next_consumer=None)  # type: ignore[arg-type]

    def timed(work: Any) -> float:
        """CPU microseconds per span (process time: fair on a shared machine)."""
        rounds, started = 0, time.process_time()
        while time.process_time() - started < seconds:
            work()
            rounds += 1
        return (time.process_time() - started) / (rounds * spans) * 1e6

    request = ExportTraceServiceRequest.FromString(body)
    parse_us = timed(lambda: ExportTraceServiceRequest.FromString(body))
    aggregate_us = timed(lambda: connector.aggregate(request.resource_spans))
    plain_us = timed(lambda: plain.aggregate(request.resource_spans))
    return aggregate_us, plain_us, parse_us


def default_config_cost(baseline_tree: str | None, rounds: int) -> dict[str, float]:
    """CPU microseconds per span of ``aggregate`` on the app traffic with the shipped
    configuration's settings: this checkout's module and, if given, the baseline's."""
    import importlib.util

    import yaml
    from collector_throughput import build_app_traffic, renewed
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from otelkit.collector.connectors import spanmetrics
    from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
    from otelkit.collector.runtime.telemetry import SelfTelemetry

    modules: dict[str, Any] = {"this checkout": spanmetrics}
    if baseline_tree:
        path = Path(baseline_tree) / "otelkit/collector/connectors/spanmetrics.py"
        spec = importlib.util.spec_from_file_location("baseline_spanmetrics", path)
        assert spec is not None and spec.loader is not None
        baseline = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = baseline
        spec.loader.exec_module(baseline)
        modules["baseline"] = baseline
    shipped = Path(__file__).parent.parent / "collector" / "otelkit.yaml"
    settings = yaml.safe_load(shipped.read_text())["connectors"]["spanmetrics"]
    bodies = build_app_traffic().bodies
    requests = [ExportTraceServiceRequest.FromString(renewed(body, round_number))
                for round_number in range(2) for body in bodies]  # fmt: skip
    spans = sum(len(ss.spans) for q in requests for rs in q.resource_spans
                for ss in rs.scope_spans)  # fmt: skip
    connectors = {
        name: module.SpanMetricsConnector(
            CreateSettings(ComponentID("spanmetrics"), Kind.CONNECTOR, SelfTelemetry()),
            module.SpanMetricsConfig.model_validate(settings),
            None,
        )
        for name, module in modules.items()
    }
    best = dict.fromkeys(connectors, float("inf"))
    for round_number in range(rounds):
        for name, connector in connectors.items():
            started = time.process_time()
            for request in requests:
                connector.aggregate(request.resource_spans)
            best[name] = min(best[name], (time.process_time() - started) / spans * 1e6)
            if round_number % 4 == 3:  # a flush now and then: exemplar slots free again
                connector.build_request()
    return best


def report_default_config_cost(baseline_tree: str | None, rounds: int) -> None:
    best = default_config_cost(baseline_tree, rounds)
    print(f"  app traffic, shipped configuration (best of {rounds} rounds):")
    for name, us in best.items():
        print(f"    {name:<36}{us:6.2f} us/span")
    if "baseline" in best:
        print(
            f"    ratio this checkout / baseline      {best['this checkout'] / best['baseline']:6.2f}"
        )


# 3. Scrape time at 10k series -----------------------------------------------------------
def scrape_times(series: int, repeats: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from otelkit.collector.connectors.spanmetrics import (
        DEFAULT_BUCKETS_MS,
        SpanMetricsConfig,
        SpanMetricsConnector,
    )
    from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig, PrometheusExporter
    from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
    from otelkit.collector.runtime.telemetry import SelfTelemetry
    from tests.prometheus.payloads import span, traces_request

    telemetry = SelfTelemetry()
    config = SpanMetricsConfig.model_validate({"dimensions": [{"name": "http.route"}],
                                               "aggregation_cardinality_limit": 0})  # fmt: skip
    connector = SpanMetricsConnector(
        CreateSettings(ComponentID("spanmetrics"), Kind.CONNECTOR, telemetry),
        config,
        None,  # type: ignore[arg-type]
    )
    spans = [
        span("GET /r", 5 + i % 900, attrs={"http.route": f"/route/{i}"}) for i in range(series)
    ]
    connector.aggregate(traces_request(*spans).resource_spans)
    exporter = PrometheusExporter(
        CreateSettings(ComponentID("prometheus"), Kind.EXPORTER, telemetry),
        PrometheusConfig.model_validate({"endpoint": "127.0.0.1:0"}),
    )

    registry = CollectorRegistry()
    labels = ("job", "span_name", "span_kind", "status_code", "http_route", "otel_scope_name")
    calls = Counter("traces_span_metrics_calls", "calls", labels, registry=registry)
    duration = Histogram("traces_span_metrics_duration_milliseconds", "duration", labels,
                         registry=registry, buckets=DEFAULT_BUCKETS_MS)  # fmt: skip
    for i in range(series):
        values = ("shop", "GET /r", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", f"/route/{i}", "x")
        calls.labels(*values).inc()
        duration.labels(*values).observe(5 + i % 900)

    async def run() -> dict[str, float]:
        results: dict[str, list[float]] = {k: [] for k in ("text", "openmetrics", "cached",
                                                          "ingest", "stall", "ingest_stall",
                                                          "idle_stall")}  # fmt: skip
        for _ in range(repeats):
            stall = _StallMeter()
            task = asyncio.create_task(stall.run())
            await asyncio.sleep(0.3)  # nothing to do: the machine's own scheduling noise
            task.cancel()
            results["idle_stall"].append(stall.worst)
            request = connector.build_request()
            stall = _StallMeter()
            task = asyncio.create_task(stall.run())
            await asyncio.sleep(0.005)
            started = time.perf_counter()
            await exporter.consume(request)
            results["ingest"].append(time.perf_counter() - started)
            task.cancel()
            results["ingest_stall"].append(stall.worst)
            for fmt in ("text", "openmetrics"):
                stall = _StallMeter()
                task = asyncio.create_task(stall.run())
                started = time.perf_counter()
                await exporter.exposition(fmt == "openmetrics")
                results[fmt].append(time.perf_counter() - started)
                task.cancel()
                results["stall"].append(stall.worst)
            started = time.perf_counter()
            await exporter.exposition(False)
            results["cached"].append(time.perf_counter() - started)
        return {k: statistics.median(v) for k, v in results.items()} | {
            "series": len(exporter.store)
        }

    figures = asyncio.run(run())
    started = time.perf_counter()
    generate_latest(registry)  # once: it takes seconds at this size
    figures["baseline"] = time.perf_counter() - started
    return figures


class _StallMeter:
    """The longest the event loop went without running a 1 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now


# 4. Count error ---------------------------------------------------------------------------
def measured_count(requests: int, ratio: float, seed: int) -> tuple[int, int]:
    """(the connector's request count, the spans the app kept) for one app run."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from otelkit.collector.connectors.spanmetrics import SpanMetricsConfig, SpanMetricsConnector
    from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
    from otelkit.collector.runtime.telemetry import SelfTelemetry
    from tests.support.head_sampling import SeededIds, head_sampler

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}),
                              sampler=head_sampler(ratio), id_generator=SeededIds(seed))  # fmt: skip
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    for _ in range(requests):
        tracer.start_span("GET /items", kind=SpanKind.SERVER).end()
    provider.shutdown()
    settings = CreateSettings(ComponentID("spanmetrics"), Kind.CONNECTOR, SelfTelemetry())
    connector = SpanMetricsConnector(settings, SpanMetricsConfig(), None)  # type: ignore[arg-type]
    connector.aggregate(encode_spans(exporter.get_finished_spans()).resource_spans)
    counted = sum(
        point.as_int
        for rm in connector.build_request().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name.endswith(".calls")
        for point in metric.sum.data_points
    )
    return counted, len(exporter.get_finished_spans())


def report_count_error(requests: int = 2000, ratio: float = 0.25, seeds: int = 20) -> None:
    print(f"\n4. span-metrics request count over {requests} requests (measured / true)")
    everything, _ = measured_count(requests, 1.0, 11)
    weighted, kept = measured_count(requests, ratio, 11)
    runs = [measured_count(requests, ratio, seed)[0] / requests for seed in range(seeds)]
    rows = [
        ("no head sampling", f"{everything / requests:.3f}"),
        (f"head sampling {ratio:g}, weighted (seed 11)", f"{weighted / requests:.3f}"),
        (
            f"head sampling {ratio:g}, weighted, {seeds} seeds",
            f"mean {statistics.mean(runs):.3f}, min {min(runs):.3f}, max {max(runs):.3f}",
        ),
        (f"head sampling {ratio:g}, each kept span once", f"{kept / requests:.3f}"),
    ]
    for label, value in rows:
        print(f"  {label:<48}{value}")


# Main -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 20 seconds in all")
    parser.add_argument("--seconds", type=float, default=None, help="per pipeline run")
    parser.add_argument("--count-error", action="store_true", help="only section 4")
    parser.add_argument("--baseline-tree", help="another checkout, for section 2's ratio")
    parser.add_argument(
        "--per-span-only", action="store_true", help="only section 2's app-traffic figures"
    )
    args = parser.parse_args()
    if args.count_error:
        report_count_error()
        return
    if args.per_span_only:
        report_default_config_cost(args.baseline_tree, 8 if args.quick else 24)
        return
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    rounds = 1 if args.quick else 2

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    body = build_request()
    spans = sum(len(ss.spans) for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans)  # fmt: skip
    print(f"request: {spans} spans, {len(body)} bytes; {IN_FLIGHT} in flight; "
          f"{rounds} x {seconds:.0f}s per pipeline; {os.cpu_count()} cores (shared)")  # fmt: skip

    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name in ("nop", "spanmetrics"):
            result = measure_pipeline(name, seconds, body, spans)
            if name not in best or result["spans_per_s"] > best[name]["spans_per_s"]:
                best[name] = result
    nop, sm = best["nop"], best["spanmetrics"]
    print("\n1. pipeline throughput (best of runs)")
    print(f"  {'pipeline':<40}{'spans/s':>10}{'CPU us/span':>13}{'refused':>9}{'scrapes':>9}")
    for name, label in (
        ("nop", "otlp -> nop"),
        ("spanmetrics", "otlp -> spanmetrics -> prometheus"),
    ):
        r = best[name]
        print(f"  {label:<40}{r['spans_per_s']:>10.0f}{r['cpu_us_per_span']:>13.2f}"
              f"{r['refused']:>9.0f}{r['scrapes']:>9.0f}")  # fmt: skip
    print(f"  ratio spanmetrics/nop: throughput {sm['spans_per_s'] / nop['spans_per_s']:.2f}, "
          f"CPU per span {sm['cpu_us_per_span'] / nop['cpu_us_per_span']:.2f}")  # fmt: skip

    aggregate_us, plain_us, parse_us = per_span_cost(body, spans, 1.0 if args.quick else 3.0)
    print("\n2. per-span CPU cost in-process")
    print(f"  ParseFromString (baseline)             {parse_us:6.2f} us/span")
    print(f"  spanmetrics, 3 dimensions + exemplars  {aggregate_us:6.2f} us/span  "
          f"(ratio {aggregate_us / parse_us:.1f})")  # fmt: skip
    print(f"  spanmetrics, default dimensions only   {plain_us:6.2f} us/span  "
          f"(ratio {plain_us / parse_us:.1f})")  # fmt: skip
    report_default_config_cost(args.baseline_tree, 8 if args.quick else 24)

    figures = scrape_times(10_000, 2 if args.quick else 3)
    base = figures["baseline"]
    print(f"\n3. scrape at 10k span-metric series ({figures['series']:.0f} store series; "
          "median)")  # fmt: skip
    print(f"  prometheus_client generate_latest (baseline)  {base * 1e3:7.1f} ms")
    for key, label in (("text", "text 0.0.4, uncached"), ("openmetrics", "OpenMetrics, uncached"),
                       ("cached", "cached (unchanged store)")):  # fmt: skip
        print(f"  {label:<46}{figures[key] * 1e3:7.1f} ms  (ratio {figures[key] / base:.2f})")
    print(f"  ingest of one 10k-series flush{'':<16}{figures['ingest'] * 1e3:7.1f} ms")
    print(
        f"  longest event-loop stall while ingesting it{'':<3}{figures['ingest_stall'] * 1e3:7.1f} ms"
    )
    print(f"  longest event-loop stall during a scrape{'':<6}{figures['stall'] * 1e3:7.1f} ms")
    print(
        f"  longest stall of an idle event loop (noise){'':<3}{figures['idle_stall'] * 1e3:7.1f} ms"
    )
    report_count_error(seeds=5 if args.quick else 20)


if __name__ == "__main__":
    main()
