"""The default configuration's log path: CPU per log record, from released traces to the store.

    python benchmarks/log_path.py [--batches 480] [--rounds 3] [--baseline-tree DIR]

The app traffic of ``benchmarks/collector_throughput.py`` (requests of 512 spans of
interleaved traces) goes through ``redaction``, ``budget`` and ``perf_issues`` in process,
once, to get the batches ``perf_issues`` releases, findings attached. Then, in a fresh
process per round and checkout, those batches are handed one after another, as
``perf_issues`` releases them on its timer, to ``collector/otelkit.yaml``'s log path:
the ``findings`` and ``accesslog`` connectors, the ``logs`` pipeline (``memory_limiter``,
``redaction``) and its exporters, ``logstore`` (SQLite, ``durability: commit``,
``synchronous: full``) and ``sentry`` (no DSN). The clock stops once every record is
stored (the collector's shutdown). Printed: the process's CPU time per record stored
and per span released, records stored and write transactions, for this checkout and
``--baseline-tree``'s (the same batches), in alternating rounds; each checkout's round of
least CPU and the ratio to this checkout.

The traffic replays the same timestamps every round (only trace IDs are renewed), so
``ts`` repeats and the store's time indexes take entries all over their range, not at
their end as with live traffic: the SQLite share here is higher than in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARMUP_BATCHES = 40
CAPTURE_RATE = 60.0  # requests per second into perf_issues: about 30k spans/s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CAPTURE_CONFIG = """
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{grpc}}}}}}}
processors:
  redaction: {{allow_all_keys: true, summary: silent}}
  budget: {{budgets_file: collector/budgets.yaml}}
  perf_issues: {{}}
exporters:
  nop: {{}}
service:
  telemetry: {{metrics: {{address: 127.0.0.1:{metrics}}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [redaction, budget, perf_issues], exporters: [nop]}}
"""

FEED_CONFIG = """
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{grpc}}}}}}}
processors:
  memory_limiter: {{limit_mib: 512, check_interval: 1s}}
  redaction: {{allow_all_keys: true, summary: silent}}
connectors:
  findings: {{}}
  accesslog: {{}}
exporters:
  nop: {{}}
  sentry: {{dsn: ""}}
  logstore: {{url: "sqlite:///{data}/logs.db", retention: 0, durability: commit}}
service:
  telemetry: {{metrics: {{address: 127.0.0.1:{metrics}}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [], exporters: [findings, accesslog, nop]}}
    logs:
      receivers: [otlp, findings, accesslog]
      processors: [memory_limiter, redaction]
      exporters: [logstore, sentry]
"""


async def capture(requests: int) -> list[bytes]:
    """The batches perf_issues releases for ``requests`` requests of app traffic."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from benchmarks.collector_throughput import build_app_traffic, renewed
    from otelkit.collector.pdata.signals import Payload, Signal
    from otelkit.collector.runtime.config import parse_config
    from otelkit.collector.runtime.registry import Registry
    from otelkit.collector.runtime.service import Service

    text = CAPTURE_CONFIG.format(grpc=free_port(), metrics=free_port())
    service = Service(parse_config(text, Registry.discover(), os.environ))
    released: list[bytes] = []

    async def keep(payload: Payload) -> None:
        released.append(payload.SerializeToString())

    for exporter in service.graph.exporters.values():
        exporter.consume = keep  # type: ignore[method-assign]
    await service.start()
    head = service.graph.receiver_pipelines[("otlp", Signal.TRACES)]
    traffic = build_app_traffic()
    start = time.monotonic()
    for n in range(requests):
        round_number, index = divmod(n, len(traffic.bodies))
        body = renewed(traffic.bodies[index], round_number + 1)
        await head.consume(ExportTraceServiceRequest.FromString(body))
        await asyncio.sleep(max(0.0, start + (n + 1) / CAPTURE_RATE - time.monotonic()))
    await service.shutdown()  # releases what is still held
    return released


async def feed(batches_file: str) -> dict[str, Any]:
    """Hands the batches to the log path one after another; CPU until all is stored."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with open(batches_file, "rb") as f:
        batches = [ExportTraceServiceRequest.FromString(b) for b in pickle.load(f)]
    with tempfile.TemporaryDirectory(prefix="otelkit-log-path-") as data:
        return await _feed(batches, data)


async def _feed(batches: list[Any], data: str) -> dict[str, Any]:
    import gc

    from otelkit.collector.pdata.signals import Signal, count_items
    from otelkit.collector.runtime.config import parse_config
    from otelkit.collector.runtime.registry import Registry
    from otelkit.collector.runtime.service import Service
    from otelkit.logstore import sqlite as sqlite_backend

    transactions = [0]
    write = sqlite_backend.SqliteBackend.write

    def counted(backend: Any, rows: Any) -> None:
        transactions[0] += 1
        write(backend, rows)

    sqlite_backend.SqliteBackend.write = counted  # type: ignore[method-assign]
    text = FEED_CONFIG.format(grpc=free_port(), metrics=free_port(), data=data)
    service = Service(parse_config(text, Registry.discover(), os.environ))
    await service.start()
    gc.freeze()  # as the collector does (otelkit.collector.commands._steady_gc)
    gc.set_threshold(20_000, 10, 10)
    head = service.graph.receiver_pipelines[("otlp", Signal.TRACES)]
    for batch in batches[:WARMUP_BATCHES]:
        await head.consume(batch)
    rows_before = await _settled_rows(data)
    before, stored_before = time.process_time(), transactions[0]
    for batch in batches[WARMUP_BATCHES:]:
        await head.consume(batch)
    await service.shutdown()  # every record is written by the time it returns
    cpu = time.process_time() - before
    return {
        "cpu": cpu,
        "records": _rows(data) - rows_before,
        "spans": sum(count_items(b) for b in batches[WARMUP_BATCHES:]),
        "transactions": transactions[0] - stored_before,
    }


async def _settled_rows(data: str) -> int:
    """The rows stored once writes still under way have finished."""
    rows, previous = _rows(data), -1
    while rows != previous:
        await asyncio.sleep(0.2)
        rows, previous = _rows(data), rows
    return rows


def _rows(data: str) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"{data}/logs.db")) as conn:
        return int(conn.execute("SELECT count(*) FROM logs").fetchone()[0])


def run_case(tree: str, batches_file: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--feed", batches_file, "--tree", tree]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=480, help="requests of app traffic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", help="another checkout, measured beside this one")
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        sys.path.insert(0, args.tree)
        os.chdir(args.tree)
        print(json.dumps(asyncio.run(feed(args.feed))))
        return
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    trees = [("this checkout", str(ROOT))]
    if args.baseline_tree:
        trees.append((args.baseline_tree, str(Path(args.baseline_tree).resolve())))
    with tempfile.TemporaryDirectory(prefix="otelkit-log-path-") as tmp:
        batches_file = os.path.join(tmp, "batches.pickle")
        with open(batches_file, "wb") as f:
            pickle.dump(asyncio.run(capture(args.batches)), f)
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for name, tree in trees:
                result = run_case(tree, batches_file)
                if name not in best or result["cpu"] < best[name]["cpu"]:
                    best[name] = result
    report(best, args)


def report(best: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    first = next(iter(best.values()))
    print(
        f"log path of collector/otelkit.yaml: {args.batches} released batches "
        f"({WARMUP_BATCHES} of them warm-up), best of {args.rounds} alternating rounds"
    )
    header = (
        f"{'checkout':<28} {'records':>8} {'us/record':>9} {'us/span':>8} "
        f"{'transactions':>12} {'CPU ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in best.items():
        print(
            f"{name:<28} {r['records']:>8,} {r['cpu'] / r['records'] * 1e6:>9.2f} "
            f"{r['cpu'] / r['spans'] * 1e6:>8.2f} {r['transactions']:>12,} "
            f"{r['cpu'] / first['cpu']:>9.2f}"
        )


if __name__ == "__main__":
    main()
