"""The ``opentelemetry_distro`` entry point: ``opentelemetry-instrument`` with otelkit's presets.

The instrumentation loader calls :meth:`OtelkitDistro.load_instrumentor` for every
installed instrumentation; FastAPI, SQLAlchemy, httpx and logging are routed through
otelkit's ``instrument_*`` functions (and so get its defaults), the rest load as usual.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from otelkit.presets import instrument, pipeline

_CLASS_MARK = "_otelkit_patched_class"


def patch_fastapi_class() -> None:
    """Apps created after this (``app = FastAPI()``) are instrumented by otelkit."""
    import fastapi
    import fastapi.applications

    original = fastapi.FastAPI
    if getattr(original, _CLASS_MARK, False):
        return

    class FastAPI(original):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            instrument.instrument_fastapi(self)

    FastAPI.__module__ = original.__module__
    FastAPI.__qualname__ = original.__qualname__
    setattr(FastAPI, _CLASS_MARK, True)
    fastapi.FastAPI = FastAPI  # type: ignore[misc]
    fastapi.applications.FastAPI = FastAPI  # type: ignore[misc]


class OtelkitDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "otelkit")
        pipeline.apply_env_defaults()

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        name = entry_point.name
        if name == "fastapi":
            patch_fastapi_class()
        elif name == "sqlalchemy":
            instrument.instrument_sqlalchemy()
        elif name == "httpx":
            instrument.instrument_httpx()
        elif name == "logging":
            instrument.instrument_logging()
        else:
            super().load_instrumentor(entry_point, **kwargs)
