"""Build auth extensions the way the collector does, for in-process tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from otelkit.collector.runtime.component import Component, ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.telemetry import SelfTelemetry

TOKEN = "s3cret-token-0123456789"


def extension(component_id: str, **config: Any) -> Component:
    """The extension ``component_id`` (``bearertokenauth``, ``basicauth/server``...) built
    through the registry, exactly as a configuration would build it."""
    cid = ComponentID.parse(component_id)
    factory = Registry.discover().get(Kind.EXTENSION, cid.type)
    settings = CreateSettings(cid, Kind.EXTENSION, SelfTelemetry())
    created: Component = factory.create(settings, factory.config_class.model_validate(config))
    return created


def exporter(component_id: str, signals: frozenset[Any] | None = None, **config: Any) -> Any:
    """An exporter built through the registry from ``config``, not started."""
    from otelkit.collector.pdata.signals import Signal

    cid = ComponentID.parse(component_id)
    factory = Registry.discover().get(Kind.EXPORTER, cid.type)
    settings = CreateSettings(cid, Kind.EXPORTER, SelfTelemetry())
    return factory.create(
        settings, factory.config_class.model_validate(config), signals or frozenset(Signal)
    )


def collector_command(action: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``otelkit collector <action> --config <config>``, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", action, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
