"""What each stage of collector/otelkit.yaml costs: CPU per span with it and without it.

    python benchmarks/pipeline_stages.py [--quick] [--rounds 2] [--seconds 12] [--warmup 8]
        [--stages budget,accesslog] [--core 1] [--glibc-defaults]

The shipped configuration, and copies of it with one stage taken out, run one after
another from this checkout, each pinned to one core (``--core``) and fed the app traffic
of ``benchmarks/collector_throughput.py`` (interleaved multi-span traces over gRPC) as fast
as it answers. A stage's cost is the shipped configuration's CPU per span minus that of
the copy without it. The copies are measured in interleaved rounds and each shows its
round of least CPU per span, as in ``collector_throughput.py``.

Taking a stage out also takes out what only it made: without ``budget`` there are no
budget findings to store, without ``findings`` no finding records reach the log store.
So the costs overlap and need not add up to the whole; each answers "what would this
configuration cost without that stage", which is what a change to that stage can win.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import collector_throughput as ct

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "collector/otelkit.yaml"
Config = dict[str, Any]


def _drop(pipeline: dict[str, list[str]], role: str, name: str) -> None:
    pipeline[role] = [c for c in pipeline[role] if c != name]


def _without_spanmetrics(config: Config) -> None:
    pipelines = config["service"]["pipelines"]
    del pipelines["traces/metrics"]
    _drop(pipelines["metrics"], "receivers", "spanmetrics")


def _without_processor(name: str) -> Callable[[Config], None]:
    def edit(config: Config) -> None:
        _drop(config["service"]["pipelines"]["traces/findings"], "processors", name)

    return edit


def _without_connector(name: str) -> Callable[[Config], None]:
    def edit(config: Config) -> None:
        pipelines = config["service"]["pipelines"]
        _drop(pipelines["traces/findings"], "exporters", name)
        _drop(pipelines["logs"], "receivers", name)

    return edit


def _without_sampling(config: Config) -> None:
    pipelines = config["service"]["pipelines"]
    _drop(pipelines["traces/findings"], "exporters", "forward")
    del pipelines["traces"]


def _without_log_store(config: Config) -> None:
    config["exporters"]["nop"] = {}
    logs = config["service"]["pipelines"]["logs"]
    logs["exporters"] = ["nop" if e == "logstore" else e for e in logs["exporters"]]


def _without_log_redaction(config: Config) -> None:
    _drop(config["service"]["pipelines"]["logs"], "processors", "redaction")


# stage -> (what is taken out, how)
STAGES: dict[str, tuple[str, Callable[[Config], None]]] = {
    "spanmetrics": ("the traces/metrics pipeline (span metrics)", _without_spanmetrics),
    "redaction": ("redaction of traces", _without_processor("redaction")),
    "budget": ("the budget processor", _without_processor("budget")),
    "perf_issues": ("the perf_issues processor", _without_processor("perf_issues")),
    "findings": ("the findings connector", _without_connector("findings")),
    "accesslog": ("the accesslog connector", _without_connector("accesslog")),
    "sampling": ("the traces pipeline (tail sampling, batch, sentry, debug)", _without_sampling),
    "logstore": ("the log store (a nop exporter instead)", _without_log_store),
    "log-redaction": ("redaction of log records", _without_log_redaction),
}


def variant(shipped: Config, stage: str) -> Config:
    """The shipped configuration without ``stage``."""
    config = copy.deepcopy(shipped)
    STAGES[stage][1](config)
    return config


def measure_config(name: str, config: str, workdir: Path, args: argparse.Namespace) -> ct.Figure:
    env = {} if args.glibc_defaults else ct.STEADY_MALLOC
    target = ct.start_default("default", workdir / name, env, str(ROOT), args.core, config)
    try:
        return ct.measure(target, "grpc", ct.build_app_traffic(), args)
    finally:
        ct.stop_target(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per case")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument(
        "--glibc-defaults", action="store_true", help="run without the malloc settings"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3.0, 2.0
    args.inflight, args.rate = 8, 0.0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := [s for s in stages if s not in STAGES]:
        parser.error(f"unknown stages {unknown}; known: {', '.join(STAGES)}")

    shipped = yaml.safe_load((ROOT / SHIPPED).read_text())
    workdir = Path(tempfile.mkdtemp(prefix="otelkit-stages-"))
    configs = {"shipped": SHIPPED}
    for stage in stages:
        path = workdir / f"without-{stage}.yaml"
        path.write_text(yaml.safe_dump(variant(shipped, stage), sort_keys=False))
        configs[stage] = str(path)

    least: dict[str, ct.Figure] = {}
    for round_number in range(args.rounds):
        for name, config in configs.items():
            figure = measure_config(f"{name}-{round_number}", config, workdir, args)
            print(f"  round {round_number + 1}: {name:<14} {figure.us_per_span:6.2f} us/span "
                  f"refused {figure.failures}", flush=True)  # fmt: skip
            if name not in least or figure.us_per_span < least[name].us_per_span:
                least[name] = figure
    report(least, stages, args)


def report(least: dict[str, ct.Figure], stages: list[str], args: argparse.Namespace) -> None:
    whole = least["shipped"]
    print()
    print(
        f"{SHIPPED} on CPU {args.core}, the app traffic over gRPC as fast as it answers; "
        f"each configuration's least CPU per span of {args.rounds} rounds of {args.seconds:g} s"
    )
    header = (
        f"{'taken out':<58} {'spans/s':>8} {'us/span':>8} {'saves us/span':>13} "
        f"{'share':>6} {'refused':>7}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'nothing (the shipped configuration)':<58} {whole.spans_per_second:>8,.0f} "
          f"{whole.us_per_span:>8.2f} {'':>13} {'':>6} {whole.failures:>7}")  # fmt: skip
    for stage in stages:
        f = least[stage]
        saves = whole.us_per_span - f.us_per_span
        print(f"{STAGES[stage][0]:<58} {f.spans_per_second:>8,.0f} {f.us_per_span:>8.2f} "
              f"{saves:>13.2f} {saves / whole.us_per_span:>6.0%} {f.failures:>7}")  # fmt: skip
    print(
        "note: a stage taken out takes what only it made with it (budget's findings, for "
        "one), so the savings overlap; 'refused' counts requests the memory limiter refused"
    )


if __name__ == "__main__":
    main()
