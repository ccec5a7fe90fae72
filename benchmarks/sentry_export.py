"""Sentry exporter conversion cost against the ``nop`` exporter, in one run.

    python benchmarks/sentry_export.py [--quick] [--seconds S]

Every case starts from the same serialized OTLP request (512 spans: traces of one
FastAPI-style SERVER span with a DB span, an HTTP client span and five internal spans,
realistic attributes, 3 services) and includes ``ParseFromString``, the receiver's
unavoidable work:

* ``nop``          parse + the ``nop`` exporter (the collector's baseline pipeline end);
* ``transactions`` parse + ``SentryExporter.consume`` (resource info, span intake into
                   the trace assembler) + building every transaction and its encoded
                   envelope, as the trace flush does (both on the exporter's conversion
                   thread, hand-over included). No network: envelopes are counted where
                   they would be queued;
* ``tracebacks``   the stack trace parser alone on a mix of real Python tracebacks (a
                   chained FastAPI/Starlette error, ~40 frames; an exception group) and
                   Java / Node.js traces;
* ``error events`` spans each carrying one ``exception`` event with a Python traceback ->
                   full error-event envelopes (parse, scrub, encode).

Cases alternate over rounds and the best round of each is kept (the machine is shared).
Figures are reported as items per second and as a ratio to ``nop`` spans per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelkit.collector.exporters.sentry import SentryConfig, SentryExporter
from otelkit.collector.exporters.sentry.stacktrace import parse
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.exporterhelper import QueuedItem
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.telemetry import SelfTelemetry

BATCH = 512
SPANS_PER_TRACE = 8
DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"


def _attr(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_request(seed: int = 7, exception: str | None = None) -> bytes:
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    per_service = BATCH // 3 // SPANS_PER_TRACE * SPANS_PER_TRACE
    for service in ("checkout", "catalog", "accounts"):
        rs = request.resource_spans.add()
        for key, value in (("service.name", service), ("service.version", "2.14.1"),
                           ("deployment.environment.name", "production"),
                           ("host.name", f"{service}-7d9f8c-x2x9k"),
                           ("telemetry.sdk.language", "python")):  # fmt: skip
            rs.resource.attributes.append(_attr(key, value))
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.fastapi"
        for _ in range(per_service // SPANS_PER_TRACE):
            _add_trace(ss, rng, exception)
    return request.SerializeToString()


def _add_trace(ss: Any, rng: random.Random, exception: str | None) -> None:
    trace_id, root_id = rng.randbytes(16), rng.randbytes(8)
    start = 1_790_000_000_000_000_000 + rng.randrange(10**12)
    route = f"/api/v1/resource{rng.randrange(20)}/{{id}}"
    root = ss.spans.add(name=f"GET {route}", kind=2, trace_id=trace_id, span_id=root_id,
                        start_time_unix_nano=start, end_time_unix_nano=start + 50_000_000)  # fmt: skip
    for key, value in (("http.request.method", "GET"), ("http.route", route),
                       ("url.path", route.replace("{id}", str(rng.randrange(10**6)))),
                       ("url.scheme", "https"), ("server.address", "shop.example.com"),
                       ("http.response.status_code", 200), ("network.protocol.version", "1.1"),
                       ("client.address", "10.0.3.7"), ("server.port", 443),
                       ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0")):  # fmt: skip
        root.attributes.append(_attr(key, value))
    if exception:
        event = root.events.add(name="exception", time_unix_nano=start + 40_000_000)
        for key, value in (("exception.type", "PaymentDeclinedError"),
                           ("exception.message", "card declined for order 12"),
                           ("exception.stacktrace", exception), ("exception.escaped", "True")):  # fmt: skip
            event.attributes.append(_attr(key, value))
    children = [
        ("SELECT shop", 3, (("db.system.name", "postgresql"), ("db.namespace", "shop"),
                            ("db.query.text", "SELECT id, name, price FROM items WHERE id = $1"),
                            ("db.operation.name", "SELECT"), ("server.address", "db.internal"))),
        ("GET", 3, (("http.request.method", "GET"), ("url.full", "https://inventory.internal/stock/7"),
                    ("http.response.status_code", 200), ("server.address", "inventory.internal"))),
    ] + [(f"render step {i}", 1, (("code.function.name", f"render_{i}"),)) for i in range(5)]  # fmt: skip
    for offset, (name, kind, attrs) in enumerate(children, start=1):
        child = ss.spans.add(name=name, kind=kind, trace_id=trace_id, span_id=rng.randbytes(8),
                             parent_span_id=root_id, start_time_unix_nano=start + offset * 1_000_000,
                             end_time_unix_nano=start + offset * 1_000_000 + 500_000)  # fmt: skip
        for key, value in attrs:
            child.attributes.append(_attr(key, value))


# Tracebacks -------------------------------------------------------------------------------
def python_tracebacks() -> list[str]:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    texts: list[str] = []
    app = FastAPI()

    @app.get("/fail")
    def fail() -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc

    with TestClient(app) as client:
        try:
            client.get("/fail")
        except RuntimeError as exc:
            texts.append("".join(traceback.format_exception(exc)))
    try:
        raise ExceptionGroup("batch", [ValueError("a"), TypeError("b")])
    except ExceptionGroup as exc:
        texts.append("".join(traceback.format_exception(exc)))
    return texts


JAVA = (
    "java.lang.IllegalStateException: order failed\n"
    + "".join(f"\tat com.shop.Layer{i}.call(Layer{i}.java:{10 + i})\n" for i in range(30))
    + "Caused by: java.sql.SQLException: deadlock\n\tat com.shop.Db.exec(Db.java:7)\n\t... 30 more\n"
)
NODE = "TypeError: x is undefined\n" + "".join(
    f"    at fn{i} (/app/src/mod{i}.js:{i + 1}:5)\n" for i in range(20)
)


# Measuring --------------------------------------------------------------------------------
class _CountingExporter(SentryExporter):
    """The real exporter, with envelopes counted where they would be queued."""

    envelopes = 0
    envelope_bytes = 0

    async def enqueue(self, items: Any) -> None:
        for item in items:
            assert isinstance(item, QueuedItem)
            self.envelopes += 1
            self.envelope_bytes += item.data.size


def sentry_exporter(telemetry: SelfTelemetry) -> _CountingExporter:
    settings = CreateSettings(ComponentID("sentry"), Kind.EXPORTER, telemetry)
    config = SentryConfig.model_validate({"dsn": DSN})
    return _CountingExporter(settings, config, frozenset({Signal.TRACES}))


def rate(func: Callable[[], int], seconds: float) -> float:
    """Items per second: call ``func`` (returns items done) until ``seconds`` pass."""
    func()  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += func()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20 seconds")
    parser.add_argument("--seconds", type=float, default=None, help="per case per round")
    args = parser.parse_args()
    seconds = args.seconds or (0.8 if args.quick else 4.0)
    rounds = 3 if args.quick else 5

    body = build_request()
    tracebacks = [*python_tracebacks(), JAVA, NODE]
    error_body = build_request(seed=8, exception=tracebacks[0])
    telemetry = SelfTelemetry()
    nop_factory = Registry.discover().get(Kind.EXPORTER, "nop")
    nop = nop_factory.create(
        CreateSettings(ComponentID("nop"), Kind.EXPORTER, telemetry),
        nop_factory.config_class(),
        frozenset({Signal.TRACES}),
    )
    exporter = sentry_exporter(telemetry)
    loop = asyncio.new_event_loop()
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(body)
    spans = sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
    traces = spans // SPANS_PER_TRACE

    def via_nop() -> int:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        loop.run_until_complete(nop.consume(request))
        return spans

    def via_transactions() -> int:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        loop.run_until_complete(exporter.consume(request))

        loop.run_until_complete(exporter._ship_traces(exporter.assembler.drain()))
        return spans

    def via_parser() -> int:
        for text in tracebacks:
            parse(text)
        return len(tracebacks)

    def via_error_events() -> int:
        request = ExportTraceServiceRequest()
        request.ParseFromString(error_body)
        loop.run_until_complete(exporter.consume(request))
        exporter.assembler.drain()  # transactions are measured above
        return traces

    cases = {
        "nop": via_nop,
        "transactions": via_transactions,
        "tracebacks": via_parser,
        "error events": via_error_events,
    }
    best: dict[str, float] = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, func in cases.items():
            best[name] = max(best[name], rate(func, seconds))
    before = exporter.envelopes
    via_transactions()
    per_batch = exporter.envelopes - before
    loop.close()
    print(f"sentry_export: {spans} spans per request ({traces} traces of "
          f"{SPANS_PER_TRACE}), {per_batch} transaction envelopes per request, "
          f"best of {rounds} rounds x {seconds:.1f}s per case, Python {sys.version.split()[0]}")  # fmt: skip
    nop_rate = best["nop"]
    rows = [
        ("nop pipeline (parse + nop exporter)", nop_rate, "spans/s"),
        ("span -> transaction conversion", best["transactions"], "spans/s"),
        ("stack trace parser", best["tracebacks"], "tracebacks/s"),
        ("exception span -> error event envelope", best["error events"], "events/s"),
    ]
    print(f"{'case':42} {'rate':>14}  {'unit':13} {'ratio to nop spans/s':>21}")
    for name, value, unit in rows:
        print(f"{name:42} {value:>14,.0f}  {unit:13} {value / nop_rate:>21.4f}")


if __name__ == "__main__":
    main()
