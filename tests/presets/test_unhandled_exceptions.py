"""Every unhandled exception in a FastAPI handler is one ERROR record in the log store.

The default system as a user runs it: ``collector/otelkit.yaml`` (listeners moved by its
variables, with and without Sentry) and the app under ``opentelemetry-instrument`` with no
settings but its service name and the collector's address; the records are read back with
``otelkit logs query``, where the docs say they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.presets import procs
from tests.sentry.standin import sentry_standin
from tests.support.collector import shipped_collector

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
# (case, app variables): what the application's own set-up may add
CASES = {
    "plain": {},
    "uvicorn-logs-to-root": {"APP_UVICORN_LOGS_TO_ROOT": "1"},
    "fastapi-native": {"OTELKIT_FASTAPI_NATIVE": "true"},
}
# request ID -> (path, body of the one record, exception message)
REQUESTS = {
    "crash-1": ("/crash", "Unhandled exception in GET /crash", "unhandled failure"),
    "crash-2": ("/crash", "Unhandled exception in GET /crash", "unhandled failure"),
    "logged-1": ("/crash-logged", "handler saw the failure", "logged failure"),
}


@contextmanager
def _sentry(configured: bool) -> Iterator[dict[str, str]]:
    if not configured:
        yield {}
        return
    with sentry_standin() as standin:
        yield {"SENTRY_DSN": standin.dsn}


def _query(url: str, service: str) -> list[dict[str, Any]]:
    return procs.logs_query(url, "--service", service, "--severity", "error")


def _run(case: str, sentry: bool, tmp_path: Path) -> list[dict[str, Any]]:
    service = f"crashes-{case}"
    with _sentry(sentry) as sentry_env, shipped_collector(tmp_path, sentry_env) as collector:
        with procs.instrumented_app(
            collector.ports["grpc"], service, tmp_path, **CASES[case]
        ) as app:
            for request_id, (path, _, _) in REQUESTS.items():
                response = httpx.get(
                    app.url + path,
                    headers={
                        "X-Request-ID": request_id,
                        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
                    },
                    timeout=10,
                )
                assert response.status_code == 500, response.text
                assert response.headers.get("X-Request-ID") == request_id
            assert app.stop() in procs.CLEAN_EXIT, app.log()
        assert collector.stop() == 0, collector.log()
    return _query(f"sqlite:///{tmp_path / 'otelkit-data' / 'logs.db'}", service)


@pytest.mark.parametrize(
    ("case", "sentry"),
    [("plain", False), ("plain", True), ("uvicorn-logs-to-root", False), ("fastapi-native", False)],
)
def test_each_unhandled_exception_is_one_error_record_in_the_log_store(
    case: str, sentry: bool, tmp_path: Path
) -> None:
    records = _run(case, sentry, tmp_path)
    with_exceptions = [r for r in records if "exception.type" in r["attributes"]]
    assert len(with_exceptions) == len(REQUESTS), [r["body"] for r in with_exceptions]
    for request_id, (_, body, message) in REQUESTS.items():
        found = [r for r in with_exceptions if r["attributes"].get("request_id") == request_id]
        assert len(found) == 1, (request_id, [r["body"] for r in with_exceptions])
        record = found[0]
        attributes = record["attributes"]
        assert record["body"] == body
        assert record["severity_text"] == "ERROR" and record["severity_number"] == 17
        assert attributes["exception.type"] == "RuntimeError"
        assert attributes["exception.message"] == message
        stacktrace = attributes["exception.stacktrace"]
        assert (
            stacktrace.startswith("Traceback") and f'raise RuntimeError("{message}")' in stacktrace
        )
        assert record["trace_id"] == TRACE_ID
        assert re.fullmatch("[0-9a-f]{16}", record["span_id"] or "")
        assert record["span_id"] not in (PARENT_SPAN_ID, "0" * 16)
