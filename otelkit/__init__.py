"""otelkit: production observability for Python web services, built on OpenTelemetry.

The app-side API (``otelkit.configure``, ``otelkit.instrument_*``) lives in
:mod:`otelkit.presets`; the collector in :mod:`otelkit.collector`. Imports are lazy so
that the collector does not pay for the instrumentation packages and vice versa.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PRESET_NAMES = frozenset(
    {
        "configure",
        "shutdown",
        "instrument_fastapi",
        "instrument_sqlalchemy",
        "instrument_httpx",
        "instrument_logging",
        "instrument_all",
        "set_user",
        "health_router",
        "current_request_id",
        "DatabaseCheck",
        "HttpCheck",
        "CallableCheck",
        "HealthCheck",
        "RequestIdMiddleware",
        "JsonFormatter",
        "HumanFormatter",
    }
)


def __getattr__(name: str) -> Any:
    if name in _PRESET_NAMES:
        from otelkit import presets

        return getattr(presets, name)
    raise AttributeError(f"module 'otelkit' has no attribute {name!r}")
