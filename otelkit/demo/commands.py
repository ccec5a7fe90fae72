"""``otelkit demo``: the whole system on this machine, in one command.

It runs the default collector (the packaged ``collector/otelkit.yaml``, with the log
search API on) and the demo shop under ``opentelemetry-instrument``, drives traffic that
produces every situation otelkit exists to catch, and prints where to look and what
arrived, each with the command that shows it. It exits 0 when every situation was seen
end to end (in the span metrics, the log store, and with ``--with-prometheus`` a page
through Alertmanager) and every request was counted, else 1 naming what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from otelkit.demo.observe import (
    PAGE,
    SERVICE,
    SITUATIONS,
    LogApi,
    Observation,
    Timeline,
    observe,
)
from otelkit.demo.stack import (
    Alerting,
    Collector,
    Process,
    StackError,
    alerting_binaries,
    choose_ports,
    start_alerting,
    start_collector,
    start_shop,
)
from otelkit.demo.traffic import Traffic

STATUS_EVERY = 10.0  # seconds between status lines
LOOK_EVERY = 2.0  # seconds between looks at what arrived (when each situation was seen)
SETTLE = 45.0  # at most this long after the traffic stops for the last data to arrive
QUIET = 20.0  # or until nothing new arrived for this long
EXIT_MISSING = 1
EXIT_CANNOT_START = 2


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the default collector and an instrumented demo shop, and show what arrives",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="send traffic this long (default: until Ctrl-C)"
    )  # fmt: skip
    demo.add_argument(
        "--data-dir",
        default="otelkit-demo",
        help="where the configuration, the log store and each process's log go "
        "(default: ./otelkit-demo)",
    )
    demo.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run `prometheus` and `alertmanager` (from PATH) on otelkit's rules "
        "and show the alerts that fired",
    )
    demo.set_defaults(handler=_demo)


class Demo:
    """The running system and what the demo has seen of it."""

    def __init__(self, data_dir: Path, with_prometheus: bool) -> None:
        self.data_dir = data_dir
        self.with_prometheus = with_prometheus
        self.collector: Collector | None = None
        self.shop: Process | None = None
        self.alerting: Alerting | None = None
        self.shop_url = ""
        situations = (*SITUATIONS, PAGE) if with_prometheus else SITUATIONS
        self.timeline = Timeline(situations)
        self.began = time.time()

    def start(self) -> None:
        names = ["grpc", "http", "prometheus", "health", "telemetry", "logs_api", "shop"]
        if self.with_prometheus:
            names += ["prometheus_server", "alertmanager"]
        ports = choose_ports(names)
        self.collector = start_collector(self.data_dir, ports)
        self.shop = start_shop(self.data_dir, ports["shop"], self.collector.url("grpc"))
        self.shop_url = f"http://127.0.0.1:{ports['shop']}"
        if self.with_prometheus:
            self.alerting = start_alerting(self.data_dir, ports)

    def stop(self) -> None:
        """Stop everything this demo started, the app first so its last data is sent."""
        for stop in (
            self.shop.stop if self.shop else None,
            self.collector.process.stop if self.collector else None,
            self.alerting.stop if self.alerting else None,
        ):
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:  # stop the others anyway; the verdict stands
                print(f"otelkit demo: could not stop cleanly: {exc}", file=sys.stderr)

    def look(self) -> Observation:
        collector = self.collector
        assert collector is not None
        logs = LogApi(collector.url("logs_api", "/api/logs"), collector.token, self.began)
        alerts = self.alerting.webhook.alerts if self.alerting else []
        return observe(
            collector.url("prometheus", "/metrics"),
            logs,
            collector.url("telemetry", "/metrics"),
            alerts,
        )


def _demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    demo = Demo(data_dir, args.with_prometheus)
    try:
        if args.with_prometheus:
            alerting_binaries()
        print(
            f"otelkit demo: starting the default collector and the demo shop (data in {data_dir})"
        )
        demo.start()
        _print_endpoints(demo)
        return asyncio.run(_run(demo, args.duration))
    except StackError as exc:
        print(f"otelkit demo: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    finally:
        demo.stop()


async def _run(demo: Demo, duration: float | None) -> int:
    traffic = Traffic(demo.shop_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    how_long = f"for {duration:g}s (Ctrl-C stops earlier)" if duration else "until Ctrl-C"
    print(f"\nSending traffic {how_long}; a status line every {STATUS_EVERY:g}s.")
    sending = asyncio.create_task(traffic.run(stop))
    deadline = time.monotonic() + duration if duration else None
    seen = Observation()
    next_status = time.monotonic() + STATUS_EVERY
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOOK_EVERY)
        if deadline is not None and time.monotonic() >= deadline:
            stop.set()
        seen = await _look(demo, traffic, seen)
        if time.monotonic() >= next_status or stop.is_set():
            print(_status(demo, traffic, seen), flush=True)
            next_status += STATUS_EVERY
    print(
        "\nTraffic stopped; waiting for the last spans, findings and metrics to arrive "
        "(Ctrl-C to skip) ..."
    )
    await sending
    hurry = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, hurry.set)
    try:
        seen = await _settle(demo, traffic, seen, hurry)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return _report(demo, traffic, seen)


async def _settle(
    demo: Demo, traffic: Traffic, seen: Observation, hurry: asyncio.Event
) -> Observation:
    """Looks again until everything is seen and counted, or nothing has changed for
    ``QUIET`` seconds (longer than the span metrics' flush interval), or ``SETTLE``."""
    until = time.monotonic() + SETTLE
    last_change = time.monotonic()
    while time.monotonic() < until and time.monotonic() - last_change < QUIET:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), 2.0)
        if hurry.is_set():
            return seen
        latest = await _look(demo, traffic, seen)
        if not demo.timeline.missing and not _uncounted(traffic, latest):
            return latest
        if latest != seen:
            seen, last_change = latest, time.monotonic()
    return seen


async def _look(demo: Demo, traffic: Traffic, last: Observation) -> Observation:
    try:
        seen = await asyncio.to_thread(demo.look)
    except Exception as exc:  # a status line must not end the demo; the next look retries
        print(f"  (could not read what arrived: {exc})", file=sys.stderr)
        return last
    demo.timeline.update(seen, traffic.started_at)
    return seen


def _uncounted(traffic: Traffic, seen: Observation) -> dict[str, tuple[int, int]]:
    """Routes whose span-metrics count differs from the answers the traffic got."""
    return {
        route: (int(seen.calls[route]), sent)
        for route, sent in sorted(traffic.sent.items())
        if int(seen.calls[route]) != sent
    }


def _status(demo: Demo, traffic: Traffic, seen: Observation) -> str:
    elapsed = time.time() - (traffic.started_at or time.time())
    found = sum(demo.timeline.first_seen.get(s.key) is not None for s in demo.timeline.situations)
    return (
        f"[{elapsed:4.0f}s] sent {sum(traffic.sent.values())} requests; span metrics "
        f"{sum(seen.calls.values()):.0f} calls, {sum(seen.errors.values()):.0f} errors; "
        f"findings {sum(seen.findings.values())}; log records {seen.log_records}; "
        f"situations seen {found}/{len(demo.timeline.situations)}"
    )


def _print_endpoints(demo: Demo) -> None:
    c = demo.collector
    assert c is not None
    rows = [
        ("span metrics", c.url("prometheus", "/metrics")),
        ("health", c.url("health", "/health")),
        ("collector's own metrics", c.url("telemetry", "/metrics")),
        ("log search API", _api_curl(c, "service=shop-api&limit=5")),
        ("the shop", f"{demo.shop_url}/products"),
    ]
    if demo.alerting:
        rows += [
            ("Prometheus alerts", f"{demo.alerting.prometheus_url}/alerts"),
            ("Alertmanager", demo.alerting.alertmanager_url),
        ]
    rows.append(("files", f"{demo.data_dir}/ (collector.yaml, logs.db, *.log)"))
    print("\nOpen:")
    for name, where in rows:
        print(f"  {name:24} {where}")


def _api_curl(collector: Collector, query: str) -> str:
    header = shlex.quote(f"Authorization: Bearer {collector.token}")
    url = shlex.quote(collector.url("logs_api", f"/api/logs?{query}"))
    return f"curl -s -H {header} {url}"


def _logs_query(collector: Collector, *args: str) -> str:
    return shlex.join(["otelkit", "logs", "query", "--url", collector.store_url, *args])


def _report(demo: Demo, traffic: Traffic, seen: Observation) -> int:
    c = demo.collector
    assert c is not None
    print("\nWhat arrived since the demo started:")
    grep = shlex.quote(f'traces_span_metrics_calls_total{{.*service_name="{SERVICE}"')
    line(
        "requests per route (span metrics)",
        "",
        f"curl -s {c.url('prometheus', '/metrics')} | grep {grep}",
    )
    for route in sorted(seen.calls):
        sent = traffic.sent.get(route)
        note = f"({sent} sent)" if sent is not None else "(the shop's calls to itself)"
        line(f"  {route}", f"{seen.calls[route]:.0f}", note)
    line("errors (span metrics)", f"{sum(seen.errors.values()):.0f}",
         _logs_query(c, "--service", SERVICE, "--severity", "error"))  # fmt: skip
    line("unhandled exceptions in the log store", str(seen.exception_records),
         _logs_query(c, "--service", SERVICE, "--attr", "exception.type=ZeroDivisionError"))  # fmt: skip
    line("findings by type", str(sum(seen.findings.values())), "")
    for kind, count in sorted(seen.findings.items()):
        line(f"  {kind}", str(count), _logs_query(c, "--attr", f"otelkit.finding.type={kind}"))
    line("budget breaches", str(sum(seen.breaches.values())),
         _logs_query(c, "--attr", "otelkit.finding.kind=budget_breach"))  # fmt: skip
    line("log records stored", str(seen.log_records), _api_curl(c, "limit=10"))
    line("Sentry", "", _sentry(seen))
    if demo.alerting:
        _report_alerts(demo.alerting, seen)
    return _verdict(demo, traffic, seen)


def line(what: str, value: str, how: str) -> None:
    """One row of the report: what, how many, and the command that shows it."""
    print(f"  {what:38} {value:>6}   {how}".rstrip())


def _sentry(seen: Observation) -> str:
    dsn = os.environ.get("SENTRY_DSN", "")
    if not dsn:
        return "disabled: set SENTRY_DSN"
    sent = ", ".join(f"{n:.0f} {what}" for what, n in sorted(seen.sentry.items())) or "nothing yet"
    # The DSN's user part is the project key: only the host is shown.
    return f"to {urlsplit(dsn).hostname}: {sent} (envelopes by category and outcome)"


def _report_alerts(alerting: Alerting, seen: Observation) -> None:
    print(f"\nAlerts Alertmanager delivered (curl -s {alerting.prometheus_url}/api/v1/alerts):")
    firing = {}
    for alert in seen.alerts:
        if alert.get("status") == "firing":
            labels = alert["labels"]
            firing[(labels["alertname"], labels.get("severity", ""))] = alert["annotations"]
    if not firing:
        print("  none yet")
    for (name, severity), notes in sorted(firing.items()):
        print(f"  {severity:6} {name}: {notes.get('summary', '')}")
        print(f"         runbook: {notes.get('runbook_url', '(none)')}")


def _verdict(demo: Demo, traffic: Traffic, seen: Observation) -> int:
    timeline = demo.timeline
    print("\nSituations:")
    for situation in timeline.situations:
        at = timeline.first_seen.get(situation.key)
        state = f"seen     after {at:.0f}s" if at is not None else "MISSING"
        print(f"  {situation.title:38} {state}")
    uncounted = _uncounted(traffic, seen)
    if uncounted:
        differ = "; ".join(f"{r}: {c} of {n}" for r, (c, n) in uncounted.items())
        print(f"  {'every request counted':38} MISSING  span metrics counted {differ}")
    if traffic.failures:
        print(f"  requests without an answer: {dict(traffic.failures)}")
    missing = [s.title for s in timeline.missing] + (["every request counted"] if uncounted else [])
    _write_summary(demo, traffic, seen, missing)
    if missing:
        print(f"\nNot seen end to end: {', '.join(missing)}.")
        print(f"Look at {demo.data_dir}/collector.log and {demo.data_dir}/shop.log.")
        return EXIT_MISSING
    print(
        f"\nEvery situation was seen end to end, the last {timeline.all_seen_after:.0f}s "
        "after the first request; every request was counted."
    )
    return 0


def _write_summary(demo: Demo, traffic: Traffic, seen: Observation, missing: list[str]) -> None:
    """The verdict as JSON (``summary.json`` in the data directory), for scripts and CI."""
    summary = {
        "seen_after_seconds": {s.key: demo.timeline.first_seen.get(s.key) for s in demo.timeline.situations},
        "all_seen_after_seconds": demo.timeline.all_seen_after,
        "missing": missing,
        "sent": dict(traffic.sent),
        "counted": dict(seen.calls),
        "errors": dict(seen.errors),
        "findings": dict(seen.findings),
        "budget_breaches": dict(seen.breaches),
        "exception_records": seen.exception_records,
        "log_records": seen.log_records,
        "sentry_envelopes": dict(seen.sentry),
        "alerts": sorted({a["labels"]["alertname"] for a in seen.alerts if a.get("status") == "firing"}),
    }  # fmt: skip
    (demo.data_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
