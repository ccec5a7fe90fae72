"""App-side presets: one call for traces, metrics and logs with production defaults.

    import otelkit
    otelkit.configure(service_name="shop")
    otelkit.instrument_all(app=app, engine=engine)
    app.include_router(otelkit.health_router([otelkit.presets.DatabaseCheck(engine)]))

or, with no code change, ``opentelemetry-instrument uvicorn shop:app`` (the otelkit
distro and configurator are registered as entry points).
"""

from __future__ import annotations

from typing import Any

from otelkit.presets.context import current_request_id, set_user
from otelkit.presets.health import (
    CallableCheck,
    DatabaseCheck,
    HealthCheck,
    HttpCheck,
    health_router,
)
from otelkit.presets.instrument import (
    instrument_all,
    instrument_fastapi,
    instrument_httpx,
    instrument_logging,
    instrument_sqlalchemy,
)
from otelkit.presets.logs import HumanFormatter, JsonFormatter
from otelkit.presets.pipeline import shutdown
from otelkit.presets.requestid import RequestIdMiddleware


def configure(**arguments: Any) -> None:
    """Set up tracing, metrics and logs (idempotent: later calls do nothing).

    Arguments (each also read from the environment): ``service_name``
    (``OTEL_SERVICE_NAME``), ``service_version``, ``service_namespace``
    (``OTELKIT_SERVICE_VERSION``/``_NAMESPACE``), ``environment`` (``OTELKIT_ENVIRONMENT``),
    ``endpoint`` and ``protocol`` (``OTEL_EXPORTER_OTLP_*``), ``sample_ratio``,
    ``log_level`` (``OTELKIT_LOG_LEVEL``/``OTEL_PYTHON_LOG_LEVEL``), ``log_format``
    (``OTELKIT_LOG_FORMAT``: json, text, none), ``capture_pii`` (``OTELKIT_CAPTURE_PII``),
    ``resource_attributes``.
    """
    from otelkit.presets import pipeline

    pipeline.configure(**arguments)


__all__ = [
    "CallableCheck",
    "DatabaseCheck",
    "HealthCheck",
    "HttpCheck",
    "HumanFormatter",
    "JsonFormatter",
    "RequestIdMiddleware",
    "configure",
    "current_request_id",
    "health_router",
    "instrument_all",
    "instrument_fastapi",
    "instrument_httpx",
    "instrument_logging",
    "instrument_sqlalchemy",
    "set_user",
    "shutdown",
]
