"""Robustness figures: nothing acknowledged lost on a crash, recovery after overload, and
what durable defaults cost.

    python benchmarks/robustness.py [--quick] [--postgres URL | --no-postgres]

1. Crash cases. Real SDK exporters stream into a collector subprocess that is killed with
   SIGKILL once ``--kill-after`` items were acknowledged, then started again on the same
   data directory. Each line gives the items the SDK saw acknowledged and how many of them
   were delivered (log store rows; a downstream collector's file for traces and metrics),
   with duplicates (delivery is at least once). Cases: the production configuration
   (PostgreSQL log store behind a persistent queue; traces and metrics through pipelines
   of the same shape), the same with a ``batch`` processor in front of the persistent
   queues, and the default configuration's log store with today's settings and with the
   ones it shipped with before (in-memory queue behind a ``batch`` processor).
2. Overload, then recovery. The backend is down until the memory limiter refuses (its
   limit 40 MiB of held data above the collector's own footprint); then it returns. The
   time from its return until ``/health/ready`` passes again, and acknowledged versus
   delivered spans.
3. Throughput cost of durable defaults: ``benchmarks/logstore.py``'s durability section,
   records *stored* per second with today's settings as ratios to the previous defaults
   in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from logstore import POSTGRES, postgres_available, run_durability  # type: ignore[import-not-found]

from otelkit.logstore.postgres import PostgresBackend
from tests.sentry.standin import sentry_standin
from tests.support.crash import (
    CrashResult,
    collector_ports,
    crash_and_recover,
    default_env,
    default_shaped,
    downstream_standin,
    file_keys,
    logstore_bodies,
    production_env,
    production_shaped,
)
from tests.support.overload import overload_and_recover


def production_case(
    signal: str, postgres: str, directory: Path, previous_shape: bool, items: dict[str, int]
) -> CrashResult:
    url = f"{postgres}?schema=robustness_{uuid.uuid4().hex[:10]}"
    name = f"production{'+batch' if previous_shape else ''}-{signal}"
    work = directory / name
    work.mkdir()
    try:
        with sentry_standin() as sentry, downstream_standin(work) as (downstream, out):
            ports = collector_ports()
            delivered = logstore_bodies(url) if signal == "logs" else file_keys(out, signal)
            return crash_and_recover(
                name, signal, production_shaped(ports, downstream, previous_shape=previous_shape),
                work, ports, production_env(work / "data", url, sentry.dsn),
                delivered=delivered, **items,
            )  # fmt: skip
    finally:
        PostgresBackend(url).drop_schema()


def default_logs_case(directory: Path, previous: bool, items: dict[str, int]) -> CrashResult:
    name = f"default-logs{'-previous' if previous else ''}"
    work = directory / name
    work.mkdir()
    data = work / "data"
    ports = collector_ports()
    return crash_and_recover(
        name, "logs", default_shaped(previous_defaults=previous), work, ports,
        {**default_env(ports, data), "SENTRY_DSN": ""},
        delivered=logstore_bodies(f"sqlite:///{data / 'logs.db'}"), **items,
    )  # fmt: skip


def report(result: CrashResult) -> None:
    print(f"  {result.case:<28} acknowledged {result.acknowledged:>7,}  delivered "
          f"{result.delivered:>7,}  lost {result.lost:>6,}  duplicates {result.duplicates:>6,}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about two minutes")
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    postgres = None if args.no_postgres else postgres_available(args.postgres)
    items = (
        {"batches": 60, "kill_after": 1500}
        if args.quick
        else {"batches": 400, "kill_after": 10_000}
    )
    with tempfile.TemporaryDirectory(prefix="otelkit-robustness-") as tmp:
        directory = Path(tmp)
        print("1. SIGKILL mid-stream, then a restart on the same data directory")
        if postgres:
            for previous_shape in (False, True):
                for signal in ("traces", "metrics", "logs"):
                    report(production_case(signal, postgres, directory, previous_shape, items))
        for previous in (True, False):
            report(default_logs_case(directory, previous, items))

        print("2. Overload (backend down) until the memory limiter refuses, then recovery")
        work = directory / "overload"
        work.mkdir()
        result = overload_and_recover(work, batches=80 if args.quick else 200)
        print(f"  recovered {result.recovered_seconds:6.2f} s after the backend returned; "
              f"acknowledged {result.acknowledged:,} spans, delivered {result.delivered:,}; "
              f"readiness while refusing: {result.refused_readiness[:60]!r}")  # fmt: skip

        print("3. Throughput cost of the durable log store settings")
        records = 30_000 if args.quick else 200_000
        run_durability(records, postgres, directory)
    sys.stdout.flush()
    os._exit(0)  # SDK exporter threads of the crash cases must not delay the exit


if __name__ == "__main__":
    main()
