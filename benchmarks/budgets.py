"""Throughput of budget + perf_issues + tail_sampling against the nop pipeline, and the
memory the whole-trace processors hold per thousand traces in flight.

    python benchmarks/budgets.py [--quick]
    python benchmarks/budgets.py --app [--baseline-tree DIR] [--rounds N]

Each round parses the same OTLP requests afresh (as a receiver would) and pushes them
through (a) the nop exporter alone and (b) budget (ten budgets) -> perf_issues ->
tail_sampling -> nop, alternating so that noise from other work on the machine hits
both. Reported: spans/s of each and their ratio. Memory: traces held by tail_sampling
(decision_wait long enough that nothing is released), measured as RSS growth and as
a ratio to the OTLP bytes of the same traces.

``--app``: the ``budget`` processor alone, with the shipped ``collector/budgets.yaml``, on
the throughput benchmark's app traffic (512-span requests of interleaved server, DB and
HTTP client spans of ``shop-api``): CPU microseconds per span of its work on a request just
parsed (as in a live collector), best of each run's rounds. With ``--baseline-tree``, the
same is measured on that tree in subprocesses, alternating with this tree's, and the
ratio is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelkit.collector.exporters.nop import factory as nop_factory
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.processors.budget import factory as budget_factory
from otelkit.collector.processors.perf_issues import factory as perf_factory
from otelkit.collector.processors.tail_sampling import factory as tail_factory
from otelkit.collector.runtime.component import ComponentID, Consumer, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry

ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(10)]
SPANS_PER_TRACE = 8
TRACES_PER_REQUEST = 64  # 512 spans per request, the SDK's default batch
BUDGETS = (
    "budgets:\n"
    + "".join(
        f"""  route{i}:
    match: {{service: shop-api, span_kind: server, route: "{ROUTES[i]}"}}
    max: 2s
    objectives: ["p95 < 300ms over 1m", "p(99)<800"]
    slos: {{availability: {{objective: 99.9, bad: [error, http_5xx]}}}}
"""
        for i in range(9)
    )
    + """  database:
    match: {span_kind: client, db_system: postgresql}
    max: 500ms
    objectives: ["p99 < 100ms over 1m"]
"""
)


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_request(rng: random.Random, start_ns: int) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        [
            kv("service.name", "shop-api"),
            kv("service.version", "1.4.2"),
            kv("deployment.environment", "prod"),
            kv("host.name", "web-1"),
            kv("telemetry.sdk.language", "python"),
        ]
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.fastapi"
    for _ in range(TRACES_PER_REQUEST):
        trace_id = rng.randbytes(16)
        root_id = rng.randbytes(8)
        route = rng.choice(ROUTES)
        total_ms = rng.lognormvariate(4.0, 0.8)
        root = Span(
            trace_id=trace_id,
            span_id=root_id,
            name=f"GET {route}",
            kind=2,
            start_time_unix_nano=start_ns,
            end_time_unix_nano=start_ns + int(total_ms * 1e6),
        )
        root.attributes.extend(
            [
                kv("http.request.method", "GET"),
                kv("http.route", route),
                kv("url.scheme", "https"),
                kv("url.path", route.replace("{id}", "42")),
                kv("http.response.status_code", 200),
                kv("server.address", "shop"),
                kv("server.port", 443),
                kv("user_agent.original", "bench/1.0"),
                kv("network.protocol.version", "1.1"),
                kv("client.address", "10.0.0.1"),
            ]
        )
        if rng.random() < 0.01:
            root.status.code = Status.STATUS_CODE_ERROR
        spans = [root]
        same_query = rng.random() < 0.05  # some requests do N+1 queries
        for i in range(SPANS_PER_TRACE - 3):
            query = (
                "SELECT * FROM items WHERE id = %s"
                if same_query
                else f"SELECT * FROM t{i} WHERE x = %s"
            )
            begin = start_ns + i * 3_000_000
            db = Span(
                trace_id=trace_id,
                span_id=rng.randbytes(8),
                parent_span_id=root_id,
                name=f"SELECT t{i}",
                kind=3,
                start_time_unix_nano=begin,
                end_time_unix_nano=begin + int(rng.uniform(0.5, 15) * 1e6),
            )
            db.attributes.extend(
                [
                    kv("db.system", "postgresql"),
                    kv("db.statement", query),
                    kv("db.name", "shop"),
                    kv("net.peer.name", "db"),
                    kv("net.peer.port", 5432),
                    kv("db.user", "shop"),
                ]
            )
            spans.append(db)
        for name in ("http send", "render"):
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=rng.randbytes(8),
                    parent_span_id=root_id,
                    name=name,
                    kind=1,
                    start_time_unix_nano=start_ns,
                    end_time_unix_nano=start_ns + 1_000_000,
                )
            )
        ss.spans.extend(spans)
    return request.SerializeToString()


def settings(kind: Kind, name: str, telemetry: SelfTelemetry) -> CreateSettings:
    return CreateSettings(ComponentID(name), kind, telemetry)


STAGES = ("budget", "perf_issues", "tail_sampling")


def build(stages: tuple[str, ...], budgets_path: Path, telemetry: SelfTelemetry) -> list[Consumer]:
    """The given processors in pipeline order, ending in the nop exporter."""
    head: Consumer = nop_factory.create(
        settings(Kind.EXPORTER, "nop", telemetry),
        nop_factory.config_class(),
        frozenset({Signal.TRACES}),
    )
    chain: list[Consumer] = [head]
    for stage in reversed(stages):
        if stage == "tail_sampling":
            config = tail_factory.config_class.model_validate(
                {
                    "decision_wait": "500ms",
                    "policies": [
                        {
                            "name": "tenth",
                            "type": "probabilistic",
                            "probabilistic": {"sampling_percentage": 10},
                        }
                    ],
                }
            )
            head = tail_factory.create(
                settings(Kind.PROCESSOR, stage, telemetry), config, Signal.TRACES, head
            )
        elif stage == "perf_issues":
            head = perf_factory.create(
                settings(Kind.PROCESSOR, stage, telemetry),
                perf_factory.config_class.model_validate({"wait": "200ms"}),
                Signal.TRACES,
                head,
            )
        else:
            head = budget_factory.create(
                settings(Kind.PROCESSOR, stage, telemetry),
                budget_factory.config_class(budgets_file=str(budgets_path)),
                Signal.TRACES,
                head,
            )
        chain.insert(0, head)
    return chain


async def run_once(stages: tuple[str, ...], requests: list[bytes], budgets_path: Path) -> float:
    """Seconds to parse and push every request through, including the final flush."""
    telemetry = SelfTelemetry()
    components = build(stages, budgets_path, telemetry)
    for component in reversed(components):
        await component.start(None)  # type: ignore[arg-type]
    head = components[0]
    began = time.perf_counter()
    for data in requests:
        payload = ExportTraceServiceRequest()
        payload.ParseFromString(data)
        await head.consume(payload)
        await asyncio.sleep(0)  # let the release timers run, as in a live collector
    for component in components:
        await component.shutdown()
    elapsed = time.perf_counter() - began
    sent = telemetry.total("otelcol_exporter_sent_spans_total")
    dropped = telemetry.total("otelcol_processor_dropped_spans_total")
    assert sent + dropped == len(requests) * TRACES_PER_REQUEST * SPANS_PER_TRACE
    return elapsed


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def memory_per_thousand_traces(
    requests: list[bytes], budgets_path: Path
) -> tuple[float, float]:
    telemetry = SelfTelemetry()
    nop = build((), budgets_path, telemetry)[0]
    tail = tail_factory.create(
        settings(Kind.PROCESSOR, "tail_sampling", telemetry),
        tail_factory.config_class.model_validate({"decision_wait": "1h"}),
        Signal.TRACES,
        nop,
    )
    gc.collect()
    before = rss_bytes()
    for data in requests:
        payload = ExportTraceServiceRequest()
        payload.ParseFromString(data)
        await tail.consume(payload)
    gc.collect()
    held = rss_bytes() - before
    traces = len(tail.buffer.traces)  # type: ignore[attr-defined]
    otlp_bytes = sum(len(r) for r in requests)
    await tail.shutdown()
    return held / traces * 1000, held / otlp_bytes


def app_us_per_span(tree: Path, rounds: int) -> float:
    """CPU microseconds per span of the ``budget`` processor of ``tree`` (this
    interpreter's imports) on the app traffic, best round."""
    sys.path.insert(0, str(tree / "benchmarks"))
    from collector_throughput import build_app_traffic

    bodies = build_app_traffic().bodies
    telemetry = SelfTelemetry()
    processor = budget_factory.create(
        settings(Kind.PROCESSOR, "budget", telemetry),
        budget_factory.config_class(budgets_file=str(tree / "collector" / "budgets.yaml")),
        Signal.TRACES,
        build((), Path(), telemetry)[0],
    )
    now = time.time()
    best = float("inf")
    for _ in range(rounds):
        spent, spans = 0.0, 0
        for data in bodies:
            payload = ExportTraceServiceRequest.FromString(data)
            spans += sum(len(ss.spans) for rs in payload.resource_spans for ss in rs.scope_spans)
            began = time.thread_time()
            processor.observe(payload, now)  # type: ignore[attr-defined]
            spent += time.thread_time() - began
        best = min(best, spent / spans * 1e6)
    return best


def app_main(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve().parent.parent
    trees = [("this tree", here)]
    if args.baseline_tree:
        trees.insert(0, ("baseline", Path(args.baseline_tree).resolve()))
    figures: dict[str, list[float]] = {name: [] for name, _ in trees}
    for _ in range(args.runs):  # alternating, so that load from elsewhere hits both
        for name, tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(
                [sys.executable, __file__, "--app-child", str(tree), "--rounds", str(args.rounds)],
                env=env,
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            figures[name].append(float(out.split()[-1]))
    print(
        f"budget processor on the app traffic (collector/budgets.yaml): CPU us per span, "
        f"best of {args.rounds} rounds per run, median of {args.runs} runs"
    )
    for name, values in figures.items():
        print(
            f"{name:10s} {statistics.median(values):6.3f}  runs: {', '.join(f'{v:.3f}' for v in values)}"
        )
    if args.baseline_tree:
        ratio = statistics.median(figures["this tree"]) / statistics.median(figures["baseline"])
        print(f"this tree / baseline: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20 seconds")
    parser.add_argument("--app", action="store_true", help="the budget processor on app traffic")
    parser.add_argument("--baseline-tree", help="with --app: also measure this tree")
    parser.add_argument("--rounds", type=int, default=8, help="with --app: rounds per run")
    parser.add_argument("--runs", type=int, default=3, help="with --app: runs per tree")
    parser.add_argument("--app-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app_child:
        print(app_us_per_span(Path(args.app_child), args.rounds))
        return
    if args.app:
        app_main(args)
        return
    rounds, per_round = (3, 40) if args.quick else (9, 160)
    rng = random.Random(1)
    start = time.time_ns()
    requests = [make_request(rng, start + i * 10_000_000) for i in range(per_round)]
    spans = per_round * TRACES_PER_REQUEST * SPANS_PER_TRACE
    setups: list[tuple[str, tuple[str, ...]]] = [
        ("nop pipeline (parse + nop exporter)", ()),
        ("budget (10 budgets) + perf_issues + tail_sampling", STAGES),
        *((f"  {stage} alone", (stage,)) for stage in STAGES),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in setups}
    with tempfile.TemporaryDirectory() as tmp:
        budgets_path = Path(tmp) / "budgets.yaml"
        budgets_path.write_text(BUDGETS)
        for _ in range(rounds):  # interleaved, so load from elsewhere hits every setup
            for name, stages in setups:
                times[name].append(asyncio.run(run_once(stages, requests, budgets_path)))
        memory_requests = [make_request(rng, start) for _ in range(80 if args.quick else 160)]
        per_thousand, vs_otlp = asyncio.run(
            memory_per_thousand_traces(memory_requests, budgets_path)
        )
    base_rate = spans / statistics.median(times[setups[0][0]])
    print(
        f"spans per request: {TRACES_PER_REQUEST * SPANS_PER_TRACE} "
        f"({TRACES_PER_REQUEST} traces x {SPANS_PER_TRACE} spans, 6-10 attributes each); "
        f"{spans} spans per round, {rounds} rounds, medians"
    )
    for name, _ in setups:
        rate = spans / statistics.median(times[name])
        print(f"{name:52s} {rate:>12,.0f} spans/s  ratio to nop {rate / base_rate:.3f}")
    print(
        f"memory held by tail_sampling: {per_thousand / 1024 / 1024:.2f} MiB per 1000 traces in "
        f"flight ({SPANS_PER_TRACE} spans each); {vs_otlp:.1f}x their OTLP protobuf size"
    )


if __name__ == "__main__":
    main()
