"""One access record per request, written by otelkit, on stdout and over OTLP.

Each server mode a user runs (uvicorn, under ``opentelemetry-instrument``, with
``--workers``, gunicorn with uvicorn workers) answers a handful of requests; its stdout
must be pure JSON with exactly one access line per request (and none of the server's own
access lines), and the OTLP sink must hold exactly one access log record per request,
correlated with its server span and no longer than it.
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
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otelkit.presets.logs import ACCESS_LOGGER_NAME, JsonFormatter, OtlpHandler, StdoutHandler
from tests.presets import procs
from tests.presets.sink import Log, OtlpSink, Span
from tests.support.collector import shipped_collector

SERVER = 2
ACCESS_FIELDS = ("http.request.method", "url.path", "http.response.status_code", "duration_ms")
# request ID -> (path, status, level on stdout, OTLP severity text, route)
REQUESTS: dict[str, tuple[str, int, str, str, str | None]] = {
    "acc-echo": ("/echo?token=hunter2", 200, "INFO", "INFO", "/echo"),
    "acc-order": ("/orders/5?delay_ms=30&token=hunter2", 200, "INFO", "INFO", "/orders/{order_id}"),
    "acc-invalid": ("/orders/abc", 422, "WARNING", "WARN", "/orders/{order_id}"),
    "acc-missing": ("/no/such/page", 404, "WARNING", "WARN", None),
    "acc-crash": ("/crash", 500, "ERROR", "ERROR", "/crash"),
}
# case -> (server, APP_MODE, server options, capture PII)
MODES = {
    "uvicorn-pii": ("uvicorn", "manual", [], True),
    "uvicorn-instrument": ("uvicorn", "auto", [], False),
    "uvicorn-workers-instrument": ("uvicorn", "auto", ["--workers", "2"], False),
    # gunicorn's own access log to stdout, as many deployments run it: otelkit's replaces it
    "gunicorn": ("gunicorn", "manual", ["-w", "2", "--access-logfile", "-"], False),
    "gunicorn-instrument": ("gunicorn", "auto", ["-w", "2", "--access-logfile", "-"], False),
}


@dataclass
class Served:
    stdout: list[str]
    log: str
    spans: list[Span]
    logs: list[Log]
    capture_pii: bool


@pytest.fixture(scope="module", params=list(MODES))
def served(
    request: pytest.FixtureRequest, sink: OtlpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    case = request.param
    server, mode, options, pii = MODES[case]
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
    )
    with procs.server(build, env, tmp_path, case, separate_stdout=True) as running:
        for request_id, (path, status, *_) in REQUESTS.items():
            response = httpx.get(running.url + path, headers={"X-Request-ID": request_id})
            assert response.status_code == status, (path, response.text)
        assert httpx.get(f"{running.url}/health/live").status_code == 200
        assert running.stop() in procs.CLEAN_EXIT, running.log()
        yield Served(running.stdout_lines(), running.log(), sink.spans(), sink.logs(), pii)


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


def test_one_access_record_per_request_over_otlp_within_its_server_span(
    served: Served,
) -> None:
    records: dict[str, list[Log]] = {}
    for log in served.logs:
        if "duration_ms" in log.attributes:
            records.setdefault(log.attributes["request_id"], []).append(log)
    assert sorted(records) == sorted(REQUESTS), [log.body for log in served.logs]
    spans = {
        span.attributes["request_id"]: span
        for span in served.spans
        if span.kind == SERVER and "request_id" in span.attributes
    }
    stdout = _stdout_access(served)
    for request_id, (_, status, _, severity, route) in REQUESTS.items():
        (record,) = records[request_id]
        span = spans[request_id]
        assert record.severity_text == severity
        assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
        fields = (*ACCESS_FIELDS, "http.response.body.size", "http.route", "client.address")
        assert {key: record.attributes.get(key) for key in fields} == {
            key: stdout[request_id][0].get(key) for key in fields
        }
        assert record.attributes["http.response.status_code"] == status
        assert record.attributes.get("http.route") == route
        assert record.attributes["duration_ms"] * 1e6 <= span.end_ns - span.start_ns
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
    service = "access-slow"
    requests = {
        **{f"fast-{i}": f"/orders/{i}?delay_ms={FAST}" for i in range(4)},
        **{f"slow-{i}": f"/orders/{i}?delay_ms={SLOW}" for i in range(2)},
        "slow-elsewhere": "/slow",  # 200 ms, another route
    }
    with shipped_collector(tmp_path) as collector:
        with procs.instrumented_app(collector.ports["grpc"], service, tmp_path) as app:
            for request_id, path in requests.items():
                response = httpx.get(app.url + path, headers={"X-Request-ID": request_id})
                assert response.status_code == 200, response.text
            assert app.stop() in procs.CLEAN_EXIT, app.log()
        url = f"sqlite:///{tmp_path / 'otelkit-data' / 'logs.db'}"
        deadline = time.monotonic() + 30
        stored: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            stored = procs.logs_query(url, "--service", service, "--attr", "duration_ms>=0")
            if len(stored) >= len(requests):
                break
            time.sleep(0.5)
        assert sorted(r["attributes"]["request_id"] for r in stored) == sorted(requests)
        slow = procs.logs_query(
            url, "--service", service, "--since", "1h",
            "--attr", "http.route=/orders/{order_id}", "--attr", f"duration_ms>={SLOW - 50}",
        )  # fmt: skip
        assert sorted(r["attributes"]["request_id"] for r in slow) == ["slow-0", "slow-1"]
        assert collector.stop() == 0, collector.log()
