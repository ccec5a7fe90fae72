"""Hostile stack traces and bodies cost bounded time, and never stall the collector.

The bound in the parser tests is generous (a loaded 2-core machine): before the parser
was made linear, 40k newlines took 6 s and a 200 KB trace froze a collector for 36 s.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.exporters.sentry.common import ResourceInfo
from otelkit.collector.exporters.sentry.events import EventContext, log_error_event
from otelkit.collector.exporters.sentry.stacktrace import parse
from otelkit.collector.runtime.scrub import Scrubber
from tests.support.collector import allocate_ports, collector

from .hostile import HOSTILE, MB, SIZES
from .standin import sentry_standin
from .support import kv, logs_request, random_id, raw_span, relay_check, run, trace_request

BOUND = 5.0  # seconds for one 1-4 MB text; linear parsing takes well under 0.1 s


@pytest.mark.parametrize("size", SIZES, ids=["1MB", "4MB"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_parser_takes_bounded_time_on_hostile_text(name: str, size: int) -> None:
    text = HOSTILE[name](size)
    assert MB <= len(text) <= 4.1 * MB
    started = time.perf_counter()
    parsed = parse(text, "HostileError", "hostile")
    elapsed = time.perf_counter() - started
    assert elapsed < BOUND, f"{name}: {elapsed:.2f}s"
    assert parsed.values
    relay_check({"platform": parsed.platform or "other", "exception": {"values": parsed.values}})


@pytest.mark.parametrize("name", ["newlines", "python frames", "v8 nested eval", "mixed shapes"])
def test_error_event_from_hostile_log_record_is_bounded(name: str) -> None:
    """The whole event (parse, scrub, body) stays bounded in time and within Sentry's limits."""
    text = HOSTILE[name](4 * MB)
    record = LogRecord(severity_number=17)
    record.body.string_value = text
    record.attributes.extend(
        [kv("exception.type", "HostileError"), kv("exception.stacktrace", text)]
    )
    context = EventContext(Scrubber(), False, time.time)
    resource = ResourceInfo.of(logs_request([]).resource_logs[0].resource, Scrubber())
    started = time.perf_counter()
    event = log_error_event(record, resource, "hostile", context)
    assert time.perf_counter() - started < BOUND
    assert len(event["logentry"]["formatted"]) <= 8192
    relay_check(event)


def test_conversion_runs_on_a_worker_thread_not_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from otelkit.collector.exporters.sentry import events

    threads: list[str] = []
    real_parse = events.stacktrace.parse

    def recording_parse(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(events.stacktrace, "parse", recording_parse)
    exception = {"exception.type": "ValueError", "exception.stacktrace": "ValueError: x"}
    span = raw_span(random_id(16), random_id(8), error=True, exception=exception)
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([span])])
        assert standin.items("event")
    assert threads and all(name.startswith("otelkit-sentry") for name in threads), threads


# Through a running collector -----------------------------------------------------------
CONFIG = """
receivers:
  otlp:
    protocols:
      http: {endpoint: "127.0.0.1:{http}"}
exporters:
  sentry:
    dsn: "DSN"
    trace_wait: 200ms
    logs: true
    retry_on_failure: {initial_interval: 50ms, max_interval: 100ms}
extensions:
  health_check: {endpoint: "127.0.0.1:{health}"}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [otlp], exporters: [sentry]}
    logs: {receivers: [otlp], exporters: [sentry]}
"""
REAL_ERRORS = 1500  # error log records with a real traceback per request: ~1 s of CPU


def _hostile_spans(texts: list[str]) -> ExportTraceServiceRequest:
    spans = []
    for text in texts:
        exception = {"exception.type": "HostileError", "exception.stacktrace": text}
        spans.append(
            raw_span(
                random_id(16),
                random_id(8),
                name="GET /hostile",
                kind=Span.SPAN_KIND_SERVER,
                error=True,
                exception=exception,
            )
        )
    return trace_request(spans)


def _hostile_logs(texts: list[str]) -> ExportLogsServiceRequest:
    records = []
    for text in texts:
        record = LogRecord(severity_number=17)
        record.body.string_value = text
        record.attributes.extend(
            [kv("exception.type", "HostileError"), kv("exception.stacktrace", text)]
        )
        records.append(record)
    return logs_request(records)


def _post(port: int, path: str, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def test_health_answers_within_a_second_while_the_collector_chews_on_hostile_data(
    tmp_path: Path,
) -> None:
    names = ["newlines", "python frames", "v8 nested eval", "gecko colons", "mixed shapes"]
    hostile = [HOSTILE[name](4 * MB) for name in names]
    real = HOSTILE["python tracebacks"](1)
    requests = [
        ("/v1/traces", _hostile_spans(hostile[:3]).SerializeToString()),
        ("/v1/logs", _hostile_logs(hostile[3:]).SerializeToString()),
        ("/v1/logs", _hostile_logs([real] * REAL_ERRORS).SerializeToString()),
    ]
    expected_events = len(hostile) + REAL_ERRORS
    ports = allocate_ports("http", "health")
    with sentry_standin() as standin:
        config = CONFIG.replace("DSN", standin.dsn)
        with collector(config, tmp_path, ports=ports) as running:
            answers: list[int] = []
            sender = threading.Thread(
                target=lambda: answers.extend(_post(ports["http"], p, b) for p, b in requests)
            )
            latencies = []
            sender.start()
            deadline = time.monotonic() + 60
            # Ask while the requests go in and while the collector converts them.
            while (
                sender.is_alive() or len(standin.items("event")) < expected_events
            ) and time.monotonic() < deadline:
                started = time.monotonic()
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{ports['health']}/health/live", timeout=10
                ) as response:
                    assert response.status == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)
            sender.join()
            standin.wait_for(lambda: len(standin.items("event")) >= expected_events, timeout=60)
            log_text = running.log()
    assert answers == [200] * len(requests)
    assert len(latencies) >= 5, "the load ended before health was asked"
    assert max(latencies) < 1.0, f"slowest health answer {max(latencies):.2f}s"
    assert "Traceback" not in log_text
    events = standin.items("event")
    hostile_events = [e for e in events if e["exception"]["values"][-1]["type"] == "HostileError"]
    assert len(hostile_events) == 5
    for event in hostile_events:
        relay_check(event)
