"""The ``opentelemetry_configurator`` entry point: ``otelkit.configure()`` from ``OTEL_*``
and ``OTELKIT_*`` variables, instead of the SDK's stock configurator (only one may run).

It also instruments SQLAlchemy here, before the instrumentation loader runs: the upstream
package pins ``sqlalchemy<2.1`` and the loader would skip it silently on 2.1, which
otelkit supports and tests. The loader's conflict message for it is then dropped, since
it would be false.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from opentelemetry.sdk._configuration import _BaseConfigurator

from otelkit.presets import instrument, pipeline

_LOADER_LOGGER = "opentelemetry.instrumentation.auto_instrumentation._load"
_HANDLED_DESPITE_PIN = ("sqlalchemy",)


def _disabled(name: str) -> bool:
    names = {
        item.strip()
        for item in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    return name in names or "*" in names


class _DropHandledConflicts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(
            message.startswith(f"{name} only instruments") for name in _HANDLED_DESPITE_PIN
        )


class OtelkitConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        pipeline.configure()
        if not _disabled("sqlalchemy"):
            logging.getLogger(_LOADER_LOGGER).addFilter(_DropHandledConflicts())
            with contextlib.suppress(ImportError):  # SQLAlchemy is not installed
                instrument.instrument_sqlalchemy()
