"""A real FastAPI service (SQLAlchemy on PostgreSQL or SQLite, httpx to a second service)
exporting OTLP to a sink, configured from code or by ``opentelemetry-instrument`` alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.presets import procs
from tests.presets.sink import Log, OtlpSink, Point, Span
from tests.support.services import require_postgres

SERVER, CLIENT = 2, 3  # OTLP span kinds


@dataclass
class Run:
    database: str
    server_metrics: bool
    item: httpx.Response
    bad_id: httpx.Response
    boom: httpx.Response
    crash: httpx.Response
    spans: list[Span]
    logs: list[Log]
    points: list[Point]

    def server_span(self, route: str, service: str = "front", path: str | None = None) -> Span:
        found = [
            s
            for s in self.spans
            if s.kind == SERVER
            and s.attributes.get("http.route") == route
            and s.resource.get("service.name") == service
            and (path is None or s.attributes.get("url.path") == path)
        ]
        assert found, f"no server span for {route} in {[s.name for s in self.spans]}"
        return found[0]

    def children(self, parent: Span) -> list[Span]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]


def _database_url(kind: str, tmp_path: Path) -> str:
    if kind == "postgres":
        require_postgres()
        return "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(
    scope="module",
    params=[
        ("manual", "postgres"),
        ("manual-metrics", "sqlite"),
        ("auto", "postgres"),
        ("auto", "sqlite"),
        ("native", "postgres"),
        ("auto-native", "sqlite"),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def run(
    request: pytest.FixtureRequest, sink: OtlpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    variant, database = request.param
    tmp_path = tmp_path_factory.mktemp(f"{variant}-{database}")
    mode = "auto" if variant.startswith("auto") else "manual"
    native = {"OTELKIT_FASTAPI_NATIVE": "true"} if variant.endswith("native") else {}
    server_metrics = variant.endswith("metrics")
    if server_metrics:
        native["OTELKIT_HTTP_SERVER_METRICS"] = "true"
    url = _database_url(database, tmp_path)
    sink.clear()

    def build(port: int) -> list[str]:
        command = procs.uvicorn_command(port)
        return procs.auto(command) if mode == "auto" else command

    down_env = procs.telemetry_env(sink.endpoint, "downstream", APP_MODE=mode, **native)
    with procs.server(build, down_env, tmp_path, "downstream") as down:
        front_env = procs.telemetry_env(
            sink.endpoint,
            "front",
            APP_MODE=mode,
            APP_DATABASE_URL=url,
            APP_DOWNSTREAM_URL=down.url,
            **native,
        )
        with procs.server(build, front_env, tmp_path, "front") as front:
            item = httpx.get(f"{front.url}/items/7", headers={"X-Request-ID": "req-abc.123"})
            bad_id = httpx.get(f"{front.url}/items/8", headers={"X-Request-ID": "bad id <script>"})
            boom = httpx.get(f"{front.url}/boom")
            crash = httpx.get(f"{front.url}/crash")
            live = httpx.get(f"{front.url}/health/live")
            assert live.status_code == 200, front.log()
            assert front.stop() in procs.CLEAN_EXIT, front.log()
        assert down.stop() in procs.CLEAN_EXIT, down.log()
    yield Run(
        database,
        server_metrics,
        item,
        bad_id,
        boom,
        crash,
        sink.spans(),
        sink.logs(),
        sink.metric_points(),
    )


def test_request_succeeds_and_echoes_the_request_id(run: Run) -> None:
    assert run.item.status_code == 200, run.item.text
    assert run.item.headers["x-request-id"] == "req-abc.123"
    assert run.item.json()["value"] == 8


def test_invalid_request_id_is_replaced(run: Run) -> None:
    replaced = run.bad_id.headers["x-request-id"]
    assert replaced != "bad id <script>"
    assert len(replaced) == 32 and replaced.isalnum()
    assert run.bad_id.json()["request_id"] == replaced


def test_one_server_span_per_request(run: Run) -> None:
    servers = [s for s in run.spans if s.kind == SERVER and s.resource["service.name"] == "front"]
    assert sorted(s.name for s in servers) == [
        "GET /boom",
        "GET /crash",
        "GET /items/{item_id}",
        "GET /items/{item_id}",
    ]


def test_server_span_has_route_status_and_request_id(run: Run) -> None:
    span = run.server_span("/items/{item_id}", path="/items/7")
    assert span.name == "GET /items/{item_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["request_id"] == "req-abc.123"
    assert span.attributes["enduser.id"] == "u-42"
    assert "user.email" not in span.attributes


def test_no_asgi_receive_or_send_spans(run: Run) -> None:
    names = [s.name for s in run.spans]
    assert not [n for n in names if n.endswith((" http send", " http receive"))], names


def test_database_span_is_a_child_with_sanitized_query(run: Run) -> None:
    server = run.server_span("/items/{item_id}", path="/items/7")
    db_spans = [s for s in run.children(server) if "db.statement" in s.attributes]
    assert db_spans, [s.name for s in run.children(server)]
    db = db_spans[0]
    assert db.kind == CLIENT
    expected = "postgresql" if run.database == "postgres" else "sqlite"
    assert db.attributes["db.system"] == expected
    statement = db.attributes["db.statement"]
    assert "secret-literal" not in statement and "+ 1" not in statement
    assert statement.startswith("SELECT")


def test_client_span_links_to_the_second_service(run: Run) -> None:
    server = run.server_span("/items/{item_id}", path="/items/7")
    clients = [s for s in run.children(server) if "url.full" in s.attributes]
    assert clients, [s.name for s in run.children(server)]
    client = clients[0]
    assert client.kind == CLIENT
    downstream = run.server_span("/echo", service="downstream")
    assert downstream.parent_span_id == client.span_id
    assert downstream.trace_id == server.trace_id
    assert downstream.attributes["request_id"] == "req-abc.123"


def test_request_id_crosses_to_the_second_service(run: Run) -> None:
    echoed = run.item.json()["downstream"]
    assert echoed["header"] == "req-abc.123"
    assert echoed["request_id"] == "req-abc.123"
    assert "request_id=req-abc.123" in echoed["baggage"]


def test_logs_carry_trace_and_request_ids(run: Run) -> None:
    server = run.server_span("/items/{item_id}", path="/items/7")
    fetched = [log for log in run.logs if log.body == "fetched item 7"]
    assert len(fetched) == 1, [log.body for log in run.logs]
    record = fetched[0]
    assert record.trace_id == server.trace_id
    assert record.attributes["request_id"] == "req-abc.123"
    assert record.attributes["enduser.id"] == "u-42"
    assert "user.email" not in record.attributes
    echo = [log for log in run.logs if log.body == "echo called"]
    assert echo and echo[0].trace_id == server.trace_id
    assert echo[0].attributes["request_id"] == "req-abc.123"


def test_exception_logs_are_exported_once_with_exception_fields(run: Run) -> None:
    assert run.boom.status_code == 500
    failed = [log for log in run.logs if log.body == "division failed"]
    assert len(failed) == 1, "exactly one exporting log handler"
    attributes: dict[str, Any] = failed[0].attributes
    assert attributes["exception.type"] == "ZeroDivisionError"
    assert attributes["exception.message"] == "division by zero"
    assert "Traceback" in attributes["exception.stacktrace"]
    boom = run.server_span("/boom")
    assert failed[0].trace_id == boom.trace_id
    assert boom.attributes["http.response.status_code"] == 500


def test_request_metrics_only_when_asked_and_then_by_route(run: Run) -> None:
    """By default the collector derives request metrics from spans and the app records
    none; asked for, the duration histogram is keyed by route."""
    durations = [p for p in run.points if p.metric == "http.server.request.duration"]
    if not run.server_metrics:
        assert not [p for p in run.points if p.metric.startswith("http.server.")]
        return
    assert durations
    routes = {p.attributes.get("http.route") for p in durations}
    assert "/items/{item_id}" in routes
    for point in durations:
        assert "url.path" not in point.attributes and "http.target" not in point.attributes


def test_health_probes_are_not_traced(run: Run) -> None:
    assert not [s for s in run.spans if "/health" in s.name]


def test_unhandled_exception_is_one_error_record_of_its_request(run: Run) -> None:
    assert run.crash.status_code == 500
    span = run.server_span("/crash")
    assert span.status_code == 2  # ERROR
    assert span.attributes["http.response.status_code"] == 500
    records = [log for log in run.logs if "exception.type" in log.attributes]
    crashes = [log for log in records if log.attributes["exception.type"] == "RuntimeError"]
    assert len(crashes) == 1, [log.body for log in records]
    record = crashes[0]
    assert record.severity_text == "ERROR"
    assert record.body == "Unhandled exception in GET /crash"
    assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
    assert record.attributes["request_id"] == span.attributes["request_id"]
    assert record.attributes["exception.message"] == "unhandled failure"
    assert 'raise RuntimeError("unhandled failure")' in record.attributes["exception.stacktrace"]
