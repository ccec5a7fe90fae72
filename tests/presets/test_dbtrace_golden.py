"""Golden tests: otelkit's SQLAlchemy tracer exports what the instrumentation package's
``EngineTracer`` exports, spans and ``db.client.connections.usage`` alike.

Two engines on one database run the same statements, one traced by the package's
``EngineTracer``, one by otelkit's ``LeanEngineTracer``, each with its own tracer and
meter provider; the spans (encoded by the stock OTLP encoder) and the metric points are
compared field by field.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.sqlalchemy import __name__ as scope_name
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from otelkit.presets.dbtrace import CONNECTIONS_USAGE, LeanEngineTracer
from tests.presets.sink import value_of
from tests.support.services import require_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'golden.db'}"
    return require_postgres().replace("postgresql://", "postgresql+psycopg://")


def _workload(engine: Any, table: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER, email TEXT)"))
        connection.execute(text(f"INSERT INTO {table} VALUES (1, 'a@b.c')"))
        connection.execute(
            text(f"INSERT INTO {table} VALUES (:id, :email)"), {"id": 2, "email": "x"}
        )
    with engine.connect() as first, engine.connect() as second:  # two connections at once
        first.execute(text(f"SELECT email FROM {table} WHERE id = :id"), {"id": 1}).all()
        second.execute(text(f"SELECT count(*) FROM {table} WHERE email = 'a@b.c'")).all()
    with engine.connect() as connection, pytest.raises((OperationalError, ProgrammingError)):
        connection.execute(text("SELECT * FROM no_such_table_here"))
    done = threading.Event()

    def in_a_thread() -> None:
        with engine.connect() as connection:
            connection.execute(text(f"SELECT id FROM {table}")).all()
        done.set()

    threading.Thread(target=in_a_thread).start()
    assert done.wait(10)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {table}"))


def _run(
    url: str, table: str, trace: Callable[[Any, Any, Any], None]
) -> tuple[list[Any], list[Any]]:
    """The spans, and the connection metric while the pool holds connections and after."""
    resource = Resource({"service.name": "golden"})
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    engine = create_engine(url)
    trace(
        engine,
        tracer_provider.get_tracer(scope_name, "0.66b2"),
        meter_provider.get_meter(scope_name, "0.66b2"),
    )
    _workload(engine, table)
    pooled = _usage(reader.get_metrics_data())
    engine.dispose()
    return _spans(exporter), [pooled, _usage(reader.get_metrics_data())]


def _spans(exporter: InMemorySpanExporter) -> list[Any]:
    request = encode_spans(exporter.get_finished_spans())
    return [
        {
            "scope": (scope_spans.scope.name, scope_spans.scope.version),
            "name": span.name,
            "kind": span.kind,
            "attributes": {a.key: value_of(a.value) for a in span.attributes},
            "status": (span.status.code, span.status.message),
            "events": [event.name for event in span.events],
            "parent": bool(span.parent_span_id),
        }
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def _usage(data: Any) -> tuple[Any, ...]:
    (metric,) = [
        metric
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == CONNECTIONS_USAGE
    ]
    points = sorted(
        (tuple(sorted(point.attributes.items())), point.value) for point in metric.data.data_points
    )
    return (
        metric.unit,
        metric.description,
        type(metric.data).__name__,
        metric.data.is_monotonic,
        metric.data.aggregation_temporality,
        points,
    )


def _package(engine: Any, tracer: Any, meter: Any) -> None:
    usage = meter.create_up_down_counter(
        name=CONNECTIONS_USAGE,
        unit="connections",
        description="The number of connections that are currently in state described by the state attribute.",
    )
    EngineTracer(tracer, engine, usage, False, {}, False)  # type: ignore[no-untyped-call]


def _otelkit(engine: Any, tracer: Any, meter: Any) -> None:
    LeanEngineTracer(tracer, engine, meter, enable_commenter=False)


def test_the_same_spans_and_connection_metric(database_url: str) -> None:
    table = f"golden_{uuid.uuid4().hex[:8]}"
    theirs, their_metrics = _run(database_url, table, _package)
    ours, our_metrics = _run(database_url, table, _otelkit)
    assert len(theirs) >= 8
    assert ours == theirs
    assert our_metrics == their_metrics
    failed = [span for span in theirs if span["status"][0] == 2]
    assert len(failed) == 1 and "no_such_table_here" in failed[0]["status"][1]
    pooled, disposed = (
        {dict(points)["state"]: value for points, value in usage[-1]} for usage in their_metrics
    )
    assert pooled["used"] == 0 and pooled["idle"] >= 1
    assert disposed == {"used": 0, "idle": 0}
