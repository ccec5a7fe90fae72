"""Fuzzing a collector that runs every exporter: mutated OTLP protobuf and JSON, and valid
messages with odd values everywhere, over gRPC and HTTP.

The collector is the shipped default configuration plus pipelines feeding the exporters
it does not use (``otlp`` and ``otlphttp`` to a downstream otelkit collector,
``prometheusremotewrite`` to a stand-in endpoint, ``file``), with the Sentry stand-in as
Sentry. Throughout, no request gets a 5xx (or a gRPC code that means the server failed),
the health check answers within a second, and the collector logs no traceback;
afterwards, valid data from the SDK still arrives everywhere it should. The cases come
from a fixed seed and are bounded in number, so the test is repeatable and bounded in time.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cramjam
import grpc
import httpx
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otelkit.collector.exporters.prometheusremotewrite import prompb
from otelkit.collector.pdata.signals import Signal
from otelkit.logstore.query import build_query
from otelkit.logstore.store import open_store
from tests.collector.e2e.clients import (
    expected_spans,
    make_logs,
    make_metrics,
    make_spans,
    read_output,
    send_all,
    span_keys,
    wait_until,
)
from tests.sentry.standin import sentry_standin
from tests.support.collector import (
    RunningCollector,
    allocate_ports,
    collector,
    downstream_config,
)
from tests.support.crash import DEFAULT, collector_ports, default_env, default_shaped
from tests.support.fuzz import Case, cases, describe, gzipped

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")

SEED = 20261205
CASES = 600
SENDERS = 4
HEALTH_BOUND = 1.0
# gRPC codes that say the server failed, not the request: a client error must never get one.
SERVER_FAILURES = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
METHODS = {
    Signal.TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    Signal.METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    Signal.LOGS: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


# Stand-ins ---------------------------------------------------------------------------------
@dataclass
class RemoteWriteStandIn:
    """Takes remote-write requests; notes any that do not decode (the exporter's bug)."""

    series: int = 0
    undecodable: list[str] = field(default_factory=list)
    port: int = 0


@contextmanager
def remote_write_standin() -> Iterator[RemoteWriteStandIn]:
    standin = RemoteWriteStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                request = prompb.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
                standin.series += len(request.timeseries)
                status = 204
            except Exception as exc:
                standin.undecodable.append(repr(exc))
                status = 400
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class HealthWatch:
    """Asks ``/health/live`` every 50 ms and keeps the slowest answer (and any failure)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health/live"
        self.slowest = 0.0
        self.failures: list[str] = []
        self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
            except Exception as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.asked += 1

    @contextmanager
    def watching(self) -> Iterator[HealthWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(15)


# The collector under test --------------------------------------------------------------------
def fuzz_config(down: dict[str, int], remote_write: int, out: Path) -> str:
    """The shipped default config (listeners moved by its variables) plus the others."""
    config = yaml.safe_load(DEFAULT.read_text())
    retry = {"initial_interval": "50ms", "max_interval": "200ms", "max_elapsed_time": "10s"}
    config["exporters"].update({
        "otlp": {"endpoint": f"127.0.0.1:{down['grpc']}", "tls": {"insecure": True},
                 "retry_on_failure": retry},
        "otlphttp": {"endpoint": f"http://127.0.0.1:{down['http']}", "encoding": "json",
                     "retry_on_failure": retry},
        "prometheusremotewrite": {"endpoint": f"http://127.0.0.1:{remote_write}/api/v1/write",
                                  "retry_on_failure": retry},
        "file": {"path": str(out), "flush_interval": "100ms"},
        "debug": {"verbosity": "detailed", "sampling_initial": 5, "sampling_thereafter": 50},
    })  # fmt: skip
    pipelines = config["service"]["pipelines"]
    pipelines["traces/fuzz"] = {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "batch"],
        "exporters": ["otlp", "otlphttp", "file"],
    }
    pipelines["metrics"]["exporters"] += ["prometheusremotewrite", "otlp", "file", "debug"]
    pipelines["logs"]["exporters"] += ["otlphttp", "file", "debug"]
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Outcome:
    case: Case
    transport: str
    answer: str
    server_failure: bool


def send_case(
    case: Case, ports: dict[str, int], http: httpx.Client, channel: grpc.Channel
) -> Outcome:
    if (
        case.content_type == "application/x-protobuf"
        and not case.content_encoding
        and (hash(case.name) % 3 == 0)
    ):
        call = channel.unary_unary(METHODS[case.signal])
        try:
            call(case.body, timeout=30)
            return Outcome(case, "grpc", "OK", False)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            return Outcome(case, "grpc", code.name, code in SERVER_FAILURES)
    headers = {"content-type": case.content_type}
    if case.content_encoding:
        headers["content-encoding"] = case.content_encoding
    url = f"http://127.0.0.1:{ports['http']}/v1/{case.signal.value}"
    response = http.post(url, content=case.body, headers=headers, timeout=30)
    return Outcome(case, "http", str(response.status_code), response.status_code >= 500)


def fuzz(ports: dict[str, int], count: int) -> list[Outcome]:
    rng = random.Random(SEED)
    work: queue.Queue[Case | None] = queue.Queue()
    for case in cases(SEED, count):
        work.put(gzipped(case, rng) if rng.random() < 0.15 else case)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def sender() -> None:
        with (
            httpx.Client() as http,
            grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel,
        ):
            while (case := work.get()) is not None:
                outcome = send_case(case, ports, http, channel)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return outcomes


def test_fuzzed_requests_get_no_5xx_health_stays_fast_and_valid_data_still_flows(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fuzz.jsonl"
    ports, down_ports = collector_ports(), allocate_ports("grpc", "http")
    with (
        sentry_standin() as sentry,
        remote_write_standin() as remote_write,
        collector(
            downstream_config([s.value for s in Signal], http=True),
            tmp_path,
            ports=down_ports,
            name="downstream",
        ),  # fmt: skip
    ):
        config = fuzz_config(down_ports, remote_write.port, out)
        env = {**default_env(ports, tmp_path / "data"), "SENTRY_DSN": sentry.dsn}
        with collector(config, tmp_path, ports=ports, env=env, name="fuzzed",
                       wait_ports=("grpc", "http", "health")) as fuzzed:  # fmt: skip
            with HealthWatch(ports["health"]).watching() as health:
                outcomes = fuzz(ports, CASES)
            check_answers(outcomes)
            assert health.failures == [], health.failures[:5]
            assert health.asked > 10
            assert health.slowest < HEALTH_BOUND, f"health took {health.slowest:.2f}s"
            still_delivers(fuzzed, ports, out, tmp_path / "data" / "logs.db")
            assert remote_write.undecodable == []
            assert fuzzed.stop(60) == 0
        log = fuzzed.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def check_answers(outcomes: list[Outcome]) -> None:
    assert len(outcomes) == CASES
    failures = [
        f"{o.transport} {o.answer}: {describe(o.case)}" for o in outcomes if o.server_failure
    ]
    assert failures == [], "\n".join(failures[:20])
    answers = {(o.transport, o.answer) for o in outcomes}
    # The fuzz reached both transports and got both acceptances and refusals.
    assert {t for t, _ in answers} == {"grpc", "http"}
    assert ("http", "200") in answers and ("http", "400") in answers


def still_delivers(running: RunningCollector, ports: dict[str, int], out: Path, db: Path) -> None:
    spans, logs = make_spans(20, tag="after-fuzz-"), make_logs(10, tag="after-fuzz-")
    send_all("grpc", f"127.0.0.1:{ports['grpc']}", spans, make_metrics(), logs)
    want = expected_spans(spans)
    wait_until(lambda: all(span_keys(read_output(out))[k] for k in want), timeout=30,
               what="valid spans in the file exporter's output")  # fmt: skip
    store = open_store(f"sqlite:///{db}", create=False)
    try:
        wait_until(
            lambda: len(store.query(build_query(grep="after-fuzz-", limit=100)).records) >= 10,
            timeout=30, what="valid log records in the log store",
        )  # fmt: skip
    finally:
        store.close()
    scrape = f"http://127.0.0.1:{ports['prometheus']}/metrics"
    wait_until(lambda: "orders_placed_total" in urllib.request.urlopen(scrape).read().decode(),
               timeout=30, what="valid metrics on the Prometheus endpoint")  # fmt: skip


def test_health_answers_while_sentry_reads_a_hostile_stack_trace(tmp_path: Path) -> None:
    """One log record whose ``exception.stacktrace`` is 200 KB of newlines, sent to a
    collector that forwards errors to Sentry: health keeps answering within a second."""
    ports = collector_ports()
    record = ExportLogsServiceRequest()
    log = record.resource_logs.add().scope_logs.add().log_records.add(severity_number=17)
    log.body.string_value = "payment failed"
    for key, value in (("exception.type", "ValueError"), ("exception.message", "boom"),
                       ("exception.stacktrace", "\n" * 200_000)):  # fmt: skip
        log.attributes.add(key=key).value.string_value = value
    body = record.SerializeToString()
    with sentry_standin() as sentry:
        env = {**default_env(ports, tmp_path / "data"), "SENTRY_DSN": sentry.dsn}
        with collector(default_shaped(), tmp_path, ports=ports, env=env,
                       wait_ports=("grpc", "http", "health")) as running:  # fmt: skip
            url = f"http://127.0.0.1:{ports['http']}/v1/logs"

            def send() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the collector is killed under it
                    headers = {"content-type": "application/x-protobuf"}
                    httpx.post(url, content=body, timeout=60, headers=headers)

            sender = threading.Thread(target=send, daemon=True)
            with HealthWatch(ports["health"]).watching() as health:
                sender.start()
                deadline = time.monotonic() + 30
                while (
                    time.monotonic() < deadline
                    and health.slowest < HEALTH_BOUND
                    and not sentry.items("event")
                ):
                    time.sleep(0.1)
            running.kill()  # do not wait for a frozen parser to finish
    assert health.slowest < HEALTH_BOUND, f"health took {health.slowest:.1f}s"
    [event] = sentry.items("event")  # the record was read, not skipped
    assert event["exception"]["values"][0]["type"] == "ValueError"
