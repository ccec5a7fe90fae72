"""Calling configure and the instrument functions again doubles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, logging
import otelkit
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from sqlalchemy import create_engine, event
from otelkit.presets.logs import OtlpHandler, StdoutHandler

otelkit.configure(service_name="once")
otelkit.configure(service_name="twice")  # ignored, with a warning
engine = create_engine("sqlite://")
app = FastAPI()
for _ in range(2):
    otelkit.instrument_all(app=app, engine=engine)
    otelkit.instrument_fastapi(app)
    otelkit.instrument_sqlalchemy(engine)
    otelkit.instrument_logging()
    otelkit.instrument_httpx()
root = logging.getLogger()
provider = trace.get_tracer_provider()
print("COUNTS", json.dumps({
    "service": provider.resource.attributes["service.name"],
    "span_processors": len(provider._active_span_processor._span_processors),
    "otlp_log_handlers": sum(
        isinstance(h, OtlpHandler) or type(h).__name__ == "LoggingHandler" for h in root.handlers
    ),
    "stdout_handlers": sum(isinstance(h, StdoutHandler) for h in root.handlers),
    "request_id_middleware": sum(m.cls.__name__ == "RequestIdMiddleware" for m in app.user_middleware),
    "cursor_listeners": len(engine.dispatch.before_cursor_execute),
}))
"""


def test_everything_is_installed_once() -> None:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_METRICS_EXPORTER": "none",
        "OTELKIT_SHUTDOWN_TIMEOUT": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("COUNTS "))
    counts = json.loads(line.removeprefix("COUNTS "))
    assert counts == {
        "service": "once",
        "span_processors": 1,
        "otlp_log_handlers": 1,
        "stdout_handlers": 1,
        "request_id_middleware": 1,
        "cursor_listeners": 1,
    }
    assert "already called" in result.stdout + result.stderr


def test_an_application_console_handler_is_not_doubled() -> None:
    script = (
        "import logging, otelkit\n"
        "logging.basicConfig(format='APP %(message)s')\n"
        "otelkit.configure(service_name='x')\n"
        "logging.getLogger('app').warning('once')\n"
    )
    env = {**os.environ, "OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "none"}
    env.update({"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (result.stdout + result.stderr).count("once") == 1
