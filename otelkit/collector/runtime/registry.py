"""Finds component factories through entry points, the same way for built-ins and plugins.

Entry points are listed without importing them; a factory's module is imported only when
a configuration names its type, so one broken plugin cannot stop the collector unless it
is used, and then the error says which package failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from otelkit.collector.runtime.component import Factory, Kind


class RegistryError(Exception):
    pass


@dataclass
class Registry:
    """The known component types of each kind, loaded on demand."""

    _entry_points: dict[Kind, dict[str, EntryPoint]] = field(default_factory=dict)
    _loaded: dict[tuple[Kind, str], Factory[Any]] = field(default_factory=dict)

    @classmethod
    def discover(cls) -> Registry:
        registry = cls()
        for kind in Kind:
            found = entry_points(group=kind.entry_point_group)
            registry._entry_points[kind] = {ep.name: ep for ep in found}
        return registry

    def register(self, factory: Factory[Any]) -> None:
        """Add a factory directly (embedding and tests); entry points are the normal way."""
        self._loaded[(factory.kind, factory.type)] = factory
        self._entry_points.setdefault(factory.kind, {})

    def known(self, kind: Kind) -> list[str]:
        names = set(self._entry_points.get(kind, {}))
        names.update(type_ for k, type_ in self._loaded if k == kind)
        return sorted(names)

    def get(self, kind: Kind, type_: str) -> Factory[Any]:
        key = (kind, type_)
        if key in self._loaded:
            return self._loaded[key]
        entry = self._entry_points.get(kind, {}).get(type_)
        if entry is None:
            raise RegistryError(
                f"unknown {kind.value} type {type_!r}; known types: "
                f"{', '.join(self.known(kind)) or '(none)'}"
            )
        try:
            factory = entry.load()
        except Exception as exc:
            raise RegistryError(
                f"{kind.value} type {type_!r} could not be loaded from {entry.value}: {exc}"
            ) from exc
        if not isinstance(factory, Factory) or factory.kind != kind:
            raise RegistryError(
                f"entry point {entry.value} for {kind.value} {type_!r} is not a {kind.value} "
                "factory (expected an otelkit.collector.runtime.component.Factory)"
            )
        self._loaded[key] = factory
        return factory
