"""The default configuration's trace path in process: CPU per span, and proof of same output.

    python benchmarks/trace_path.py [--rounds 16] [--runs 6] [--baseline-tree DIR]
        [--entry remote] [--budget]

Feeds the app traffic of ``benchmarks/collector_throughput.py`` (16 requests of 512
interleaved spans, new trace IDs each round) through what ``collector/otelkit.yaml``
does to traces after ``budget``: ``perf_issues`` (wait 2 s) -> a fan-out to a reader
that changes nothing (as the ``findings`` and ``accesslog`` connectors) and a
``forward`` connector -> ``tail_sampling`` (decision wait 10 s, its shipped policies)
-> ``batch`` -> a sink. The buffers' clocks advance 20 ms per request (about 25,000
spans/s), and both release every five requests. Requests are parsed before the clock
starts: the figure is process CPU per span of the trace path alone. ``--entry remote``
gives every server span a parent in another process (a service behind a traced caller
that sends its spans elsewhere): no trace's root arrives, so ``perf_issues`` reads each
trace due to tell whether it is still running. ``--budget`` first passes each request
through the checkout's own ``budget`` processor (its ``collector/budgets.yaml``), before the
clock starts: the trace path then carries the marks and findings it carries in the
collector, and the figure still excludes the budget processor's own work.

Each run is a fresh process (``--child``) with the collector's garbage-collector
settings (startup frozen, young threshold 20,000). With ``--baseline-tree DIR`` runs
alternate between this checkout and DIR's (same traffic, same machine, same moments),
and each checkout's best and mean are printed with the ratio of the bests. A last run
of each prints a digest of what reached the sink (every span kept), of the findings the
reader saw and of the self-metrics: equal digests mean the same output (the same spans and
findings, in whatever order: ``perf_issues`` sends a trace still waiting for its root
after the batches it came in).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_MARK = "CPU us/span"


def child(
    tree: str, rounds: int, digest: bool, remote_entry: bool = False, budget: bool = False
) -> None:
    """One run of the trace path from ``tree``'s modules; prints one line."""
    sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
    import collector_throughput as ct
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from otelkit.collector.connectors.forward import ForwardConnector
    from otelkit.collector.pdata.signals import Signal
    from otelkit.collector.processors.batch import BatchConfig, BatchProcessor
    from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
    from otelkit.collector.processors.tail_sampling import (
        TailSamplingConfig,
        TailSamplingProcessor,
    )
    from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
    from otelkit.collector.runtime.graph import Fanout
    from otelkit.collector.runtime.telemetry import SelfTelemetry

    class Sink:
        mutates_data = False

        def __init__(self) -> None:
            self.spans = 0
            self.items: list[bytes] = []  # digested in sorted order: the order may differ

        def digest(self) -> str:
            return hashlib.sha256(b"".join(sorted(self.items))).hexdigest()[:16]

        async def consume(self, payload: Any) -> None:
            for rs in payload.resource_spans:
                for ss in rs.scope_spans:
                    self.spans += len(ss.spans)
                    for span in ss.spans if digest else ():
                        self.items.append(_digest(span.SerializeToString(deterministic=True)))

    class Reader(Sink):
        async def consume(self, payload: Any) -> None:
            for rs in payload.resource_spans if digest else ():
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        for event in span.events:
                            self.items.append(_digest(event.SerializeToString(deterministic=True)))

    telemetry = SelfTelemetry()

    def settings(name: str) -> CreateSettings:
        return CreateSettings(ComponentID(name), Kind.PROCESSOR, telemetry)

    sink = Sink()
    batch = BatchProcessor(settings("batch"), BatchConfig(), Signal.TRACES, sink)
    shipped = {
        "decision_wait": "10s",
        "num_traces": 50_000,
        "policies": [
            {"name": "one-in-ten", "type": "probabilistic",
             "probabilistic": {"sampling_percentage": 10}},
        ],
    }  # fmt: skip
    tail_config = TailSamplingConfig.model_validate(shipped)
    tail = TailSamplingProcessor(settings("tail_sampling"), tail_config, batch)
    reader = Reader()
    fanout = Fanout([reader, ForwardConnector(tail)])
    perf = PerfIssuesProcessor(settings("perf_issues"), PerfIssuesConfig(), fanout)
    now = [1000.0]
    perf.buffer._clock = tail.buffer._clock = lambda: now[0]  # type: ignore[method-assign]

    traffic = ct.build_app_traffic()
    bodies = [ct.renewed(body, r + 1) for r in range(rounds) for body in traffic.bodies]
    requests = [ExportTraceServiceRequest.FromString(body) for body in bodies]
    if remote_entry:
        _called_from_elsewhere(requests)
    if budget:
        _marked(tree, requests, settings("budget"))
    spans = sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)

    async def run() -> None:
        for i, request in enumerate(requests):
            await perf.consume(request)
            now[0] += 0.02
            if i % 5 == 4:
                await perf.release()
                await tail.release()
        await perf.release(flush=True)
        await tail.release(flush=True)
        await batch.shutdown()

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    started = time.process_time()
    asyncio.run(run())
    cpu = time.process_time() - started
    line = f"{CHILD_MARK} {1e6 * cpu / spans:.3f} spans {spans} kept {sink.spans}"
    if digest:
        metrics = hashlib.sha256(telemetry.exposition()).hexdigest()[:16]
        line += (
            f" kept-digest {sink.digest()}"
            f" findings-digest {reader.digest()} metrics-digest {metrics}"
        )
    print(line)


def _called_from_elsewhere(requests: list[Any]) -> None:
    """Each request's server span gets a parent in a caller's process (``--entry remote``):
    the traffic of a service behind a traced caller that sends its spans elsewhere, so no
    trace's root ever arrives."""
    for request in requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if span.kind == 2 and not span.parent_span_id:  # SPAN_KIND_SERVER
                        span.parent_span_id = span.span_id[::-1]
                        span.flags = 0x300  # the parent is remote, and that is known


def _marked(tree: str, requests: list[Any], settings: Any) -> None:
    """Each request marked by ``tree``'s budget processor, on the benchmark's clock
    (``--budget``)."""
    from otelkit.collector.processors.budget import BudgetConfig, BudgetProcessor

    config = BudgetConfig(budgets_file=os.path.join(tree, "collector", "budgets.yaml"))
    processor = BudgetProcessor(settings, config, None)  # type: ignore[arg-type]
    for i, request in enumerate(requests):
        processor.observe(request, 1000.0 + 0.02 * i)


def _digest(item: bytes) -> bytes:
    return hashlib.sha256(item).digest()


def run_child(
    tree: str, rounds: int, digest: bool, entry: str = "local", budget: bool = False
) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--child", tree, "--rounds", str(rounds)]
    command += ["--entry", entry]
    if budget:
        command.append("--budget")
    if digest:
        command.append("--digest")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return next(line for line in out.splitlines() if line.startswith(CHILD_MARK)).split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16, help="rounds of the traffic per run")
    parser.add_argument("--runs", type=int, default=6, help="runs per checkout")
    parser.add_argument("--baseline-tree", help="another checkout, measured alternately")
    parser.add_argument(
        "--entry",
        choices=["local", "remote"],
        default="local",
        help="remote: every server span's parent is in another process (no root arrives)",
    )
    parser.add_argument(
        "--budget",
        action="store_true",
        help="requests first marked by the checkout's budget processor (not timed)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--digest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds, args.digest, args.entry == "remote", args.budget)
        return
    trees = [("this checkout", ROOT)]
    if args.baseline_tree:
        trees.append((args.baseline_tree, os.path.abspath(args.baseline_tree)))
    figures: dict[str, list[float]] = {name: [] for name, _ in trees}
    for _ in range(args.runs):
        for name, tree in trees:
            words = run_child(tree, args.rounds, False, args.entry, args.budget)
            figures[name].append(float(words[2]))
    best = {name: min(values) for name, values in figures.items()}
    print(f"trace path in process, {args.rounds} rounds of 8,192 spans, {args.runs} runs each")
    print(f"{'checkout':<28} {'best us/span':>12} {'mean':>8} {'vs this':>8}  output digests")
    for name, tree in trees:
        words = run_child(tree, args.rounds, True, args.entry, args.budget)
        digests = " ".join(words[5:])
        mean = sum(figures[name]) / len(figures[name])
        ratio = best[name] / best["this checkout"]
        print(f"{name:<28} {best[name]:>12.2f} {mean:>8.2f} {ratio:>8.2f}  {digests}")


if __name__ == "__main__":
    main()
