"""A real FastAPI + SQLAlchemy app with the usual performance mistakes, instrumented with
the upstream OpenTelemetry instrumentations into an in-memory exporter.

Endpoints: ``/authors/n-plus-one`` (one query per author), ``/reports/slow`` (a slow
SELECT), ``/reports/recursive`` (a slow ``WITH RECURSIVE`` query behind a comment),
``/books/touch`` (a slow UPDATE), ``/dashboard/sequential`` (three HTTP calls one after the other),
``/dashboard/fan-out`` (six calls of one shape at once), ``/authors`` (clean: one
query). The app calls its own ``/upstream/{n}`` endpoint over real HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, create_engine, event, text

from tests.support.services import free_port

SLOW_QUERY_SECONDS = 0.55  # over Sentry's 500 ms slow-query default
N_PLUS_ONE_QUERY_SECONDS = 0.012  # six of these exceed the 50 ms N+1 default
UPSTREAM_SECONDS = 0.06


def _engine(url: str) -> Engine:
    engine = create_engine(url)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sleep_function(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.create_function("sleep", 1, lambda s: time.sleep(s) or 0)

    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS books"))
        conn.execute(text("DROP TABLE IF EXISTS authors"))
        conn.execute(text("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(
            text("CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER, title TEXT)")
        )
        for i in range(1, 7):
            conn.execute(text("INSERT INTO authors VALUES (:i, :n)"), {"i": i, "n": f"author {i}"})
            conn.execute(text("INSERT INTO books VALUES (:i, :i, :t)"), {"i": i, "t": f"book {i}"})
    return engine


def _sleep_sql(engine: Engine, seconds: float) -> str:
    if engine.dialect.name == "postgresql":
        return f"pg_sleep({seconds})"
    return f"sleep({seconds})"


def build_app(engine: Engine, base_url: str, client: httpx.AsyncClient) -> FastAPI:
    app = FastAPI()

    @app.get("/authors")
    def authors() -> list[str]:
        with engine.connect() as conn:
            return [r.name for r in conn.execute(text("SELECT id, name FROM authors"))]

    @app.get("/authors/n-plus-one")
    def authors_with_books() -> dict[str, list[str]]:
        with engine.connect() as conn:
            out = {}
            rows = conn.execute(text("SELECT id, name FROM authors")).all()
            pause = _sleep_sql(engine, N_PLUS_ONE_QUERY_SECONDS)
            for row in rows:
                books = conn.execute(
                    text(f"SELECT title, {pause} FROM books WHERE author_id = :id"), {"id": row.id}
                )
                out[row.name] = [b.title for b in books]
            return out

    @app.get("/reports/slow")
    def slow_report() -> int:
        with engine.connect() as conn:
            pause = _sleep_sql(engine, SLOW_QUERY_SECONDS)
            return len(conn.execute(text(f"SELECT count(*), {pause} FROM books")).all())

    @app.get("/reports/recursive")
    def recursive_report() -> int:
        with engine.connect() as conn:
            pause = _sleep_sql(engine, SLOW_QUERY_SECONDS)
            query = (
                "/* report: depth */ WITH RECURSIVE depth(n) AS "
                "(SELECT 1 UNION ALL SELECT n + 1 FROM depth WHERE n < 3) "
                f"SELECT max(n), {pause} FROM depth"
            )
            return len(conn.execute(text(query)).all())

    @app.post("/books/touch")
    def touch_books() -> int:
        with engine.begin() as conn:
            pause = _sleep_sql(engine, SLOW_QUERY_SECONDS)
            query = f"UPDATE books SET title = title WHERE id > 0 AND (SELECT {pause}) IS NULL"
            return conn.execute(text(query)).rowcount

    @app.get("/upstream/{n}")
    async def upstream(n: int) -> dict[str, int]:
        await asyncio.sleep(UPSTREAM_SECONDS)
        return {"n": n}

    @app.get("/dashboard/sequential")
    async def sequential() -> list[int]:
        return [(await client.get(f"{base_url}/upstream/{n}")).json()["n"] for n in range(3)]

    @app.get("/dashboard/fan-out")
    async def fan_out() -> list[int]:
        calls = [client.get(f"{base_url}/upstream/{n}") for n in range(6)]
        return [r.json()["n"] for r in await asyncio.gather(*calls)]

    return app


@dataclass
class ShopApp:
    base_url: str
    exporter: InMemorySpanExporter
    resource: Resource

    def trace_of(self, path: str, method: str = "GET") -> ExportTraceServiceRequest:
        """Call ``path`` and return its whole trace, encoded as OTLP."""
        self.exporter.clear()
        response = httpx.request(method, self.base_url + path, timeout=10)
        response.raise_for_status()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            spans = self.exporter.get_finished_spans()
            roots = [s for s in spans if s.kind == SpanKind.SERVER and s.parent is None]
            if roots:
                trace_id = roots[0].context.trace_id
                return encode_spans([s for s in spans if s.context.trace_id == trace_id])
            time.sleep(0.01)
        raise AssertionError(f"no server span for {path}")

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@contextmanager
def running_shop(database_url: str) -> Iterator[ShopApp]:
    exporter = InMemorySpanExporter()
    resource = Resource.create({"service.name": "shop-api"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    engine = _engine(database_url)
    # The upstream instrumentation's engine tracer, for this engine only (instrument()
    # would also patch create_engine process-wide, and declares sqlalchemy < 2.1).
    EngineTracer(
        provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"),
        engine,
        NoOpMeter("test").create_up_down_counter("db.client.connections.usage"),
    )
    client = httpx.AsyncClient(timeout=10)
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    app = build_app(engine, base_url, client)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield ShopApp(base_url, exporter, resource)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()
        provider.shutdown()
