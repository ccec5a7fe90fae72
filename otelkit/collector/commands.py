"""``otelkit collector run``, ``validate`` and ``components``."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import typing
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from otelkit import defaults
from otelkit.budgets.model import BudgetsError, load_budgets
from otelkit.collector.rules import RULES_FILE, TESTS_FILE, collector_rules
from otelkit.collector.runtime.component import Kind, WorkerRole
from otelkit.collector.runtime.config import (
    MAX_WORKERS,
    CollectorConfig,
    ConfigError,
    load_config,
)
from otelkit.collector.runtime.listeners import warn_exposed
from otelkit.collector.runtime.registry import Registry, RegistryError
from otelkit.collector.runtime.scrub import MASK, RedactingFormatter, is_secret_setting, redact_text
from otelkit.collector.runtime.service import Service
from otelkit.collector.runtime.workers.process import run_worker
from otelkit.collector.runtime.workers.supervisor import Supervisor

EXIT_CONFIG_ERROR = 2
CONFIG_HELP = (
    "path to the YAML configuration (default: the one shipped with otelkit, the same as "
    "collector/otelkit.yaml, with the example budgets unless OTELKIT_BUDGETS_FILE is set)"
)


def register(subparsers: Any) -> None:
    collector = subparsers.add_parser("collector", help="run or check the otelkit collector")
    actions = collector.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run the collector until SIGTERM or SIGINT")
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="processes sharing the receivers' ports, each on its own core, spans of one "
        "trace always in one of them (default: service.workers, else 1)",
    )
    # Internal: how the supervisor of --workers N starts each worker process.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    run.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)
    validate = actions.add_parser("validate", help="check a configuration without running it")
    validate.add_argument("--config", help=CONFIG_HELP)
    validate.set_defaults(handler=_validate)
    rules = actions.add_parser(
        "rules", help="print the Prometheus alert rules that watch the collector itself"
    )
    rules.add_argument(
        "--budgets",
        required=True,
        metavar="FILE",
        help="the budgets file whose defaults.runbook_base_url the runbook links go under",
    )
    rules.add_argument(
        "--tests", action="store_true", help="print their `promtool test rules` file instead"
    )
    rules.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    rules.set_defaults(handler=_rules)
    components = actions.add_parser(
        "components", help="list the installed component types and their settings"
    )
    components.add_argument("--kind", choices=[k.value for k in Kind], help="only this kind")
    components.set_defaults(handler=_components)


def _load(path: str | None, *, warn: bool = True) -> CollectorConfig | None:
    """The configuration at ``path``, or the default one shipped in the package; its
    warnings printed unless ``warn`` is False."""
    try:
        if path is None:
            config = load_config(defaults.config_path(), environ=defaults.environment())
        else:
            config = load_config(path)
    except ConfigError as exc:
        path = path or str(defaults.config_path())
        print(f"{path}: invalid configuration ({len(exc.problems)} problems):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    for warning in config.warnings if warn else ():
        print(f"  {warning}", file=sys.stderr)
    return config


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG_ERROR
    print(f"{args.config or defaults.config_path()}: valid ({len(config.pipelines)} pipelines)")
    return 0


def _rules(args: argparse.Namespace) -> int:
    try:
        budgets = load_budgets(args.budgets)
    except BudgetsError as exc:
        print(f"invalid budgets file {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    text = collector_rules(budgets, TESTS_FILE if args.tests else RULES_FILE)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _components(args: argparse.Namespace) -> int:
    """What a configuration can name, found the way the collector finds it (entry points)."""
    registry = Registry.discover()
    for kind in Kind:
        if args.kind and kind.value != args.kind:
            continue
        print(f"{kind.section}:")
        for type_ in registry.known(kind):
            try:
                factory = registry.get(kind, type_)
            except RegistryError as exc:
                print(f"  {type_}: cannot be loaded: {redact_text(str(exc))}")
                continue
            signals = ", ".join(sorted(factory.signals)) if kind != Kind.EXTENSION else ""
            print(f"  {type_}" + (f" ({signals})" if signals else ""))
            for line in _settings(factory.config_class, "    "):
                print(line)
    return 0


def _settings(model: type[BaseModel], indent: str, path: str = "") -> list[str]:
    """One line per setting with its default (never a secret's); nested settings below."""
    lines = []
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        nested = _nested_model(field.annotation)
        if nested is not None:
            optional = field.default is None
            lines.append(f"{indent}{name}:" + ("  # optional: off unless set" if optional else ""))
            lines += _settings(nested, indent + "  ", where)
            continue
        if field.default is PydanticUndefined and field.default_factory is None:
            shown = "(required)"
        else:
            default = field.get_default(call_default_factory=True)
            hidden = is_secret_setting(where) and default not in (None, "", {}, [])
            shown = repr(MASK) if hidden else redact_text(repr(default))
        lines.append(f"{indent}{name}: {shown}")
    return lines


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model of a field typed ``Model`` or ``Model | None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _worker_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_WORKERS}")
    return count


def _run(args: argparse.Namespace) -> int:
    in_worker = args.worker_index is not None and args.runtime_dir is not None
    # A worker's supervisor loaded the same file and printed its warnings already (once,
    # rather than once more per worker and again at each restart).
    config = _load(args.config, warn=not in_worker)
    if config is None:
        return EXIT_CONFIG_ERROR
    workers = args.workers or config.workers
    _configure_logging(config, f"worker {args.worker_index} " if in_worker else "")
    log = logging.getLogger("otelkit.collector")
    _steady_heap()
    if in_worker:
        role = WorkerRole(args.worker_index, workers)
        runtime_dir = Path(args.runtime_dir)
        return _serve(lambda: run_worker(config, role, runtime_dir, args.supervisor_pid), log)
    warn_exposed(config, log)
    if workers > 1:
        supervisor = Supervisor(config, args.config, workers)
        return asyncio.run(supervisor.run())
    try:
        service = Service(config)
    except Exception as exc:
        log.error("cannot build the pipelines: %s", exc)
        return 1
    return _serve(service.run, log)


def _serve(main: Callable[[], Coroutine[Any, Any, None]], log: logging.Logger) -> int:
    _steady_gc()
    try:
        asyncio.run(main())
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _configure_logging(config: CollectorConfig, prefix: str) -> None:
    level = {"warn": "WARNING"}.get(config.telemetry.log_level, config.telemetry.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    # Every line the collector logs passes the scrubber: a URL with a password, a token in
    # an error from a client library, never reach the terminal or a log collector.
    handler.setFormatter(
        RedactingFormatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
    # Exporters' HTTP clients log every request at INFO, which would drown the collector's
    # log; at debug level they speak as asked.
    if logging.getLogger().level >= logging.INFO:
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


# Objects made per young collection: the pipelines make a few per span, so Python's
# default of 700 collects every few hundred spans.
_GC_YOUNG_THRESHOLD = 20_000


def _steady_gc() -> None:
    """Collect cyclic garbage less often, and never re-scan what startup made.

    Modules, configuration models and the running graph live as long as the process:
    frozen, full collections skip them. Fed the default configuration in process, the
    garbage collector took about 2 us per span with Python's thresholds and a tenth of
    that with these. What the pipelines free is still freed at once by reference
    counting; only cycles wait longer.
    """
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 10, 10)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _steady_heap() -> None:
    """Keep glibc from trimming and re-faulting the heap on every batch.

    Batches of a few hundred KiB cross glibc's dynamic thresholds, so by default memory is
    returned to the kernel and page-faulted back continuously, which costs more CPU than
    parsing. Fixed thresholds (128 MiB trim, 32 MiB mmap) keep the heap steady; resident
    memory stays bounded by the memory_limiter and queue sizes as before.
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024 * 1024)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    except (OSError, AttributeError):
        return
