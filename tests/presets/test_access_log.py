"""One access record per request: a JSON line on stdout written by the app, and one record
in the log store, made by the collector's ``accesslog`` connector from the request's server
span (or, with ``OTELKIT_ACCESS_LOG=both``, exported by the app itself).

Each server mode a user runs (uvicorn, under ``opentelemetry-instrument``, with
``--workers``, gunicorn with uvicorn workers) answers a handful of requests; its stdout
must be pure JSON with exactly one access line per request (and none of the server's own
access lines), and what reaches the log store must be exactly one access record per
request, correlated with its server span, with the stdout line's fields.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otelkit.collector.connectors.accesslog import AccessLogConfig, AccessRecords
from otelkit.presets.logs import ACCESS_LOGGER_NAME, JsonFormatter, OtlpHandler, StdoutHandler
from tests.presets import procs
from tests.presets.sink import Log, OtlpSink, Received, Span
from tests.support.collector import shipped_collector

SERVER = 2
# request ID -> (path, status, level on stdout, OTLP severity text, route)
REQUESTS: dict[str, tuple[str, int, str, str, str | None]] = {
    "acc-echo": ("/echo?token=hunter2", 200, "INFO", "INFO", "/echo"),
    "acc-order": ("/orders/5?delay_ms=30&token=hunter2", 200, "INFO", "INFO", "/orders/{order_id}"),
    "acc-invalid": ("/orders/abc", 422, "WARNING", "WARN", "/orders/{order_id}"),
    "acc-missing": ("/no/such/page", 404, "WARNING", "WARN", None),
    "acc-crash": ("/crash", 500, "ERROR", "ERROR", "/crash"),
}
# case -> (server, APP_MODE, server options, capture PII, OTELKIT_ACCESS_LOG or default)
MODES: dict[str, tuple[str, str, list[str], bool, str | None]] = {
    "uvicorn-pii": ("uvicorn", "manual", [], True, None),
    "uvicorn-instrument": ("uvicorn", "auto", [], False, None),
    "uvicorn-workers-instrument": ("uvicorn", "auto", ["--workers", "2"], False, None),
    # gunicorn's own access log to stdout, as many deployments run it: otelkit's replaces it
    "gunicorn-both": ("gunicorn", "manual", ["-w", "2", "--access-logfile", "-"], False, "both"),
    "gunicorn-instrument": ("gunicorn", "auto", ["-w", "2", "--access-logfile", "-"], False, None),
}


@dataclass
class Served:
    stdout: list[str]
    log: str
    spans: list[Span]
    logs: list[Log]
    traces: list[ExportTraceServiceRequest]
    capture_pii: bool
    exported_by_app: bool


@pytest.fixture(scope="module", params=list(MODES))
def served(
    request: pytest.FixtureRequest, sink: OtlpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    case = request.param
    server, mode, options, pii, access_log = MODES[case]
    tmp_path = tmp_path_factory.mktemp(case)
    sink.clear()

    def build(port: int) -> list[str]:
        command = (
            procs.gunicorn_command(port, *options)
            if server == "gunicorn"
            else procs.uvicorn_command(port, *options)
        )
        return procs.auto(command) if mode == "auto" else command

    env = procs.telemetry_env(
        sink.endpoint,
        f"access-{case}",
        APP_MODE=mode,
        OTELKIT_ENVIRONMENT="staging",
        OTELKIT_CAPTURE_PII="true" if pii else "false",
        **({"OTELKIT_ACCESS_LOG": access_log} if access_log else {}),
    )
    with procs.server(build, env, tmp_path, case, separate_stdout=True) as running:
        for request_id, (path, status, *_) in REQUESTS.items():
            response = httpx.get(running.url + path, headers={"X-Request-ID": request_id})
            assert response.status_code == status, (path, response.text)
        assert httpx.get(f"{running.url}/health/live").status_code == 200
        assert running.stop() in procs.CLEAN_EXIT, running.log()
        traces = list(sink.trace_requests)
        exported = access_log == "both"
        yield Served(
            running.stdout_lines(), running.log(), sink.spans(), sink.logs(), traces, pii, exported
        )


def test_every_stdout_line_is_json(served: Served) -> None:
    assert served.stdout, f"nothing on stdout; stderr:\n{served.log}"
    for line in served.stdout:
        try:
            assert isinstance(json.loads(line), dict), line
        except json.JSONDecodeError:
            pytest.fail(f"not JSON: {line!r}\nstderr:\n{served.log}")


def _stdout_access(served: Served) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in served.stdout:
        entry = json.loads(line)
        if entry["logger"] == ACCESS_LOGGER_NAME:
            found.setdefault(entry.get("request_id", "?"), []).append(entry)
    return found


def test_one_access_line_per_request_with_every_field(served: Served) -> None:
    found = _stdout_access(served)
    assert sorted(found) == sorted(REQUESTS), found
    for request_id, (path, status, level, _, route) in REQUESTS.items():
        (entry,) = found[request_id]
        assert entry["level"] == level
        assert entry["http.response.status_code"] == status
        assert entry["http.request.method"] == "GET"
        assert entry["url.path"] == path.split("?")[0]
        assert entry.get("http.route") == route
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        # An unhandled exception's 500 is written by the server after the record.
        assert entry.get("http.response.body.size", -1) > 0 or status == 500
        assert len(entry["trace_id"]) == 32 and len(entry["span_id"]) == 16
        assert entry["service"].startswith("access-") and entry["environment"] == "staging"
        assert ("client.address" in entry) is served.capture_pii
    assert found["acc-order"][0]["duration_ms"] >= 30
    assert not any("hunter2" in line for line in served.stdout)
    assert not any('HTTP/1.1"' in line for line in served.stdout + served.log.splitlines())


def _log_store_records(served: Served) -> list[Log]:
    """The access records the log store gets: those the app exported over OTLP and those
    the shipped collector's ``accesslog`` connector makes of the app's spans."""
    connector = AccessRecords(AccessLogConfig(client_address=served.capture_pii))
    made = Received.of([connector.logs(request) for request in served.traces]).logs()
    exported = [log for log in served.logs if "duration_ms" in log.attributes]
    assert bool(exported) is served.exported_by_app
    return exported + made


def test_the_log_store_gets_one_access_record_per_request_with_the_lines_fields(
    served: Served,
) -> None:
    records: dict[str, list[Log]] = {}
    for log in _log_store_records(served):
        records.setdefault(log.attributes["request_id"], []).append(log)
    assert sorted(records) == sorted(REQUESTS), [log.body for log in served.logs]
    spans = {
        span.attributes["request_id"]: span
        for span in served.spans
        if span.kind == SERVER and "request_id" in span.attributes
    }
    stdout = _stdout_access(served)
    for request_id, (path, status, _, severity, route) in REQUESTS.items():
        (record,) = records[request_id]
        (line,) = stdout[request_id]
        span = spans[request_id]
        assert record.severity_text == severity
        assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
        fields = ("http.request.method", "url.path", "http.response.status_code",
                  "http.response.body.size", "http.route", "client.address")  # fmt: skip
        assert {key: record.attributes.get(key) for key in fields} == {
            key: line.get(key) for key in fields
        }
        assert record.attributes["http.response.status_code"] == status
        assert record.attributes.get("http.route") == route
        assert record.body.startswith(f"GET {path.split('?')[0]} {status} ")
        # the app's measure runs within the span; the collector's is the span's
        duration_ms = record.attributes["duration_ms"]
        assert line["duration_ms"] <= duration_ms <= (span.end_ns - span.start_ns) / 1e6 + 5e-4
        assert record.resource["deployment.environment.name"] == "staging"
        assert ("client.address" in record.attributes) is served.capture_pii
    assert not [log for log in served.logs if "/health" in str(log.attributes.get("url.path"))]


def test_text_mode_writes_one_readable_line(sink: OtlpSink, tmp_path: Path) -> None:
    env = procs.telemetry_env(sink.endpoint, "access-text", OTELKIT_LOG_FORMAT="text")
    with procs.server(procs.uvicorn_command, env, tmp_path, "text", separate_stdout=True) as app:
        response = httpx.get(f"{app.url}/orders/9?token=hunter2", headers={"X-Request-ID": "txt"})
        assert response.status_code == 200
        httpx.get(f"{app.url}/health/live")
        assert app.stop() in procs.CLEAN_EXIT
        lines = [line for line in app.stdout_lines() if ACCESS_LOGGER_NAME in line]
        assert not any('HTTP/1.1"' in line for line in app.stdout_lines() + app.log().splitlines())
    assert len(lines) == 1, app.stdout_lines()
    line = lines[0]
    assert " INFO " in line and "[req=txt trace=" in line
    assert "GET /orders/9 200 " in line and "ms" in line
    assert "http.route=/orders/{order_id}" in line and "http.response.body.size=" in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("setting", "printed", "exported"),
    [("both", True, True), ("stdout", True, False), ("otlp", False, True)],
)
def test_the_setting_chooses_where_access_records_go(
    setting: Any, printed: bool, exported: bool
) -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    out = io.StringIO()
    stdout = StdoutHandler(JsonFormatter(), setting)
    stdout.setStream(out)
    handlers = [stdout, OtlpHandler(provider, setting, code_attributes=False)]
    for name in (ACCESS_LOGGER_NAME, "app"):
        record = logging.LogRecord(name, logging.INFO, __file__, 1, "line", (), None)
        for handler in handlers:
            handler.handle(record)
    printed_loggers = [json.loads(line)["logger"] for line in out.getvalue().splitlines()]
    exported_loggers = [
        item.instrumentation_scope.name
        for item in exporter.get_finished_logs()
        if item.instrumentation_scope is not None
    ]
    assert printed_loggers == ([ACCESS_LOGGER_NAME] if printed else []) + ["app"]
    assert exported_loggers == ([ACCESS_LOGGER_NAME] if exported else []) + ["app"]


def test_access_records_off_writes_none_and_keeps_stdout_json(
    sink: OtlpSink, tmp_path: Path
) -> None:
    sink.clear()
    env = procs.telemetry_env(sink.endpoint, "access-off", OTELKIT_ACCESS_LOG="off")
    with procs.server(procs.uvicorn_command, env, tmp_path, "off", separate_stdout=True) as app:
        assert httpx.get(f"{app.url}/echo").status_code == 200
        assert app.stop() in procs.CLEAN_EXIT
        lines = app.stdout_lines()
    assert [json.loads(line)["message"] for line in lines] == ["echo called"]
    assert sink.wait_for(lambda: any(log.body == "echo called" for log in sink.logs()))
    assert not [log for log in sink.logs() if "duration_ms" in log.attributes]


# --- slow requests to one route, found in the log store -------------------------------

FAST, SLOW = 0, 300


def test_the_log_store_finds_exactly_the_slow_requests_to_a_route(tmp_path: Path) -> None:
    """The default system: the shipped collector, and an app with no settings, whose access
    records reach the log store through the collector's ``accesslog`` connector."""
    service = "access-slow"
    requests = {
        **{f"fast-{i}": (f"/orders/{i}?delay_ms={FAST}", 200) for i in range(4)},
        **{f"slow-{i}": (f"/orders/{i}?delay_ms={SLOW}", 200) for i in range(2)},
        "slow-elsewhere": ("/slow", 200),  # 200 ms, another route
        "invalid": ("/orders/abc", 422),
        "crash": ("/crash", 500),
    }
    with shipped_collector(tmp_path) as collector:
        grpc = collector.ports["grpc"]
        with procs.instrumented_app(grpc, service, tmp_path, separate_stdout=True) as app:
            for request_id, (path, status) in requests.items():
                response = httpx.get(app.url + path, headers={"X-Request-ID": request_id})
                assert response.status_code == status, response.text
            assert httpx.get(f"{app.url}/health/live").status_code == 200
            assert app.stop() in procs.CLEAN_EXIT, app.log()
        lines: dict[str, list[dict[str, Any]]] = {}
        for text in app.stdout_lines():
            line = json.loads(text)
            if line["logger"] == ACCESS_LOGGER_NAME:
                lines.setdefault(line["request_id"], []).append(line)
        assert sorted(lines) == sorted(requests), app.stdout_lines()
        url = f"sqlite:///{tmp_path / 'otelkit-data' / 'logs.db'}"
        deadline = time.monotonic() + 30
        stored: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            stored = procs.logs_query(url, "--service", service, "--attr", "duration_ms>=0")
            if len(stored) >= len(requests):
                break
            time.sleep(0.5)
        assert sorted(r["attributes"]["request_id"] for r in stored) == sorted(requests)
        for record in stored:
            (line,) = lines[record["attributes"]["request_id"]]
            assert record["scope_name"] == ACCESS_LOGGER_NAME
            assert record["severity_text"] == {"WARNING": "WARN"}.get(line["level"], line["level"])
            assert (record["trace_id"], record["span_id"]) == (line["trace_id"], line["span_id"])
            assert record["body"].startswith(line["message"].rsplit(" ", 1)[0] + " ")
            assert record["attributes"]["duration_ms"] >= line["duration_ms"]
            fields = {key: value for key, value in line.items() if "." in key}
            assert {key: record["attributes"].get(key) for key in fields} == fields
        slow = procs.logs_query(
            url, "--service", service, "--since", "1h",
            "--attr", "http.route=/orders/{order_id}", "--attr", f"duration_ms>={SLOW - 50}",
        )  # fmt: skip
        assert sorted(r["attributes"]["request_id"] for r in slow) == ["slow-0", "slow-1"]
        assert collector.stop() == 0, collector.log()
