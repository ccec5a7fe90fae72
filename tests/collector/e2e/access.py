"""Requests of one server span each, timed now, and the access records made from them:
for tests that count, by path, which requests' records reached the log store."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.collector.e2e.test_hostile_spans import server, with_fields
from tests.logstore.requests import to_any


def server_spans(first: int, count: int, prefix: str) -> ExportTraceServiceRequest:
    """Traces ``first`` .. ``first + count - 1``, one server span each for path
    ``{prefix}{trace}``, timed now (older ones would be pruned by the shipped retention)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=to_any("shop"))
    now = time.time_ns()
    rs.scope_spans.add().spans.extend(
        with_fields(
            server(n, f"{prefix}{n}"), start_time_unix_nano=now, end_time_unix_nano=now + 10**7
        )
        for n in range(first, first + count)
    )
    return request


def access_record_paths(database: Path, prefix: str) -> set[str]:
    """The paths of the stored access records whose path starts with ``prefix``."""
    if not database.exists():
        return set()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM logs WHERE body LIKE ?", (f"GET {prefix}%",))
        return {body.split()[1] for (body,) in rows}
