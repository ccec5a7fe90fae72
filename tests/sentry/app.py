"""A small FastAPI + SQLAlchemy + httpx app, instrumented by the upstream instrumentors.

Its spans are what a real service sends; the tests turn them into OTLP and hand them to
the exporter (in-process) or to a collector (end to end).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, text
from sqlalchemy.pool import StaticPool

APP_FILE = str(Path(__file__).resolve())


class PaymentDeclinedError(Exception):
    pass


def charge_card(order_id: int) -> None:
    raise PaymentDeclinedError(f"card declined for order {order_id}")  # raise-line


def find_line(marker: str) -> int:
    for number, line in enumerate(Path(APP_FILE).read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


def build_app(provider: TracerProvider) -> FastAPI:
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO items VALUES (7, 'Teekanne ☕ grün')"))
    # The instrumentor declares SQLAlchemy < 2.1 and then does nothing; its engine tracer
    # (what ``instrument(engine=...)`` attaches) works with 2.1.
    usage = NoOpMeter("sqlalchemy").create_up_down_counter("db.client.connections.usage")
    EngineTracer(provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, usage)

    def inventory(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"stock": 3})

    client = httpx.Client(transport=httpx.MockTransport(inventory))
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)

    app = FastAPI()

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, object]:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT name FROM items WHERE id = :id"), {"id": item_id}).one()
        stock = client.get(
            f"http://svc-user:hunter2@inventory.internal/stock/{item_id}?api_key=sk_live_123456"
        ).json()
        return {"name": row[0], "stock": stock["stock"]}

    @app.get("/orders/{order_id}/pay")
    def pay(order_id: int) -> None:
        charge_card(order_id)  # call-line

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        http_capture_headers_server_request=["authorization", "x-request-id", "cookie"],
    )
    return app


@contextmanager
def stable_semconv() -> Iterator[None]:
    """Make the instrumentors emit stable and old HTTP/DB attribute names (``/dup``), and
    put the process-wide setting back afterwards for whatever test runs next."""
    key = "OTEL_SEMCONV_STABILITY_OPT_IN"
    before = os.environ.get(key)
    os.environ[key] = "http/dup,database/dup"
    _OpenTelemetrySemanticConventionStability._initialized = False
    _OpenTelemetrySemanticConventionStability._initialize()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
        _OpenTelemetrySemanticConventionStability._initialized = False
        _OpenTelemetrySemanticConventionStability._initialize()


def exercise(provider: TracerProvider) -> None:
    """One good request and one failing request."""
    with stable_semconv():
        app = build_app(provider)
        with TestClient(app, raise_server_exceptions=False) as client:
            headers = {
                "Authorization": "Bearer abcdefghijklmnop",
                "X-Request-Id": "req-1",
                "Cookie": "sid=42",
            }
            assert client.get("/items/7", headers=headers).status_code == 200
            assert client.get("/orders/12/pay?session=s3cr3t", headers=headers).status_code == 500
