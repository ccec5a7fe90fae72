"""Loads the collector's YAML file (upstream shape) into validated component specs.

Every problem is collected rather than raised at the first one, so ``validate`` can list
them all; each names its path in the file (``exporters.sentry.dsn``) and line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.auth import AuthSettings
from otelkit.collector.runtime.component import (
    ChecksSignals,
    ComponentConfig,
    ComponentID,
    Factory,
    Kind,
)
from otelkit.collector.runtime.registry import Registry, RegistryError
from otelkit.collector.runtime.scrub import is_secret_setting, redact_text
from otelkit.collector.runtime.types import parse_endpoint

MAX_WORKERS = 256
SECTIONS = ("receivers", "processors", "connectors", "exporters", "extensions", "service")
_ENV = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TELEMETRY_LEVELS = ("none", "basic", "normal", "detailed")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{self.severity}: {where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class ComponentSpec:
    kind: Kind
    id: ComponentID
    factory: Factory[Any]
    config: ComponentConfig


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    signal: Signal
    receivers: tuple[ComponentID, ...]
    processors: tuple[ComponentID, ...]
    exporters: tuple[ComponentID, ...]


@dataclass(frozen=True)
class TelemetrySpec:
    metrics_address: str | None = "127.0.0.1:8888"
    log_level: str = "info"


@dataclass
class CollectorConfig:
    components: dict[tuple[Kind, ComponentID], ComponentSpec]
    pipelines: dict[str, PipelineSpec]
    extensions: tuple[ComponentID, ...]
    telemetry: TelemetrySpec
    warnings: list[Problem] = field(default_factory=list)
    workers: int = 1
    """Processes sharing the receivers' ports (``service.workers``; see docs/collector.md)."""

    def of_kind(self, kind: Kind) -> list[ComponentSpec]:
        return [spec for (k, _), spec in self.components.items() if k == kind]


def load_config(
    path: str | Path, registry: Registry | None = None, environ: Mapping[str, str] | None = None
) -> CollectorConfig:
    """Read, substitute, validate. Raises :class:`ConfigError` listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"cannot read the file: {exc.strerror}")]) from exc
    return parse_config(text, registry or Registry.discover(), environ or os.environ)


def parse_config(text: str, registry: Registry, environ: Mapping[str, str]) -> CollectorConfig:
    loader = _Loader(registry, environ)
    return loader.load(text)


class _Loader:
    def __init__(self, registry: Registry, environ: Mapping[str, str]) -> None:
        self.registry = registry
        self.environ = environ
        self.problems: list[Problem] = []
        self.lines: dict[str, int] = {}
        self.invalid: set[str] = set()  # defined, but already reported as broken

    # Reporting -------------------------------------------------------------------------
    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, redact_text(message), "error", self._line(path)))

    def warn(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, redact_text(message), "warning", self._line(path)))

    def _line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None

    # Loading ---------------------------------------------------------------------------
    def load(self, text: str) -> CollectorConfig:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            message = redact_text(f"not valid YAML: {exc}")
            raise ConfigError([Problem("<file>", message, line=line)]) from exc
        if node is not None:
            _index_lines(node, "", self.lines)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError([Problem("<file>", "expected a mapping with " + ", ".join(SECTIONS))])
        raw = self._substitute(raw, "")
        for key in raw:
            if key not in SECTIONS:
                self.error(
                    str(key), f"unknown top-level key; expected one of {', '.join(SECTIONS)}"
                )
        components = self._components(raw)
        service = self._mapping(raw.get("service"), "service")
        for key in service:
            if key not in ("extensions", "pipelines", "telemetry", "workers"):
                self.error(
                    f"service.{key}",
                    "unknown key; expected extensions, pipelines, telemetry, workers",
                )
        pipelines = self._pipelines(service.get("pipelines"), components)
        extensions = self._extensions(service.get("extensions"), components)
        telemetry = self._telemetry(service.get("telemetry"))
        workers = self._workers(service.get("workers", 1))
        self._check_authenticators(components, extensions)
        self._warn_unused(components, pipelines, extensions)
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            raise ConfigError(self.problems)
        return CollectorConfig(
            components, pipelines, extensions, telemetry,
            [p for p in self.problems if p.severity == "warning"], workers,
        )  # fmt: skip

    def _substitute(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {
                k: self._substitute(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._substitute(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _ENV.sub(lambda m: self._env(m, path), value)
        return value

    def _env(self, match: re.Match[str], path: str) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in self.environ:
            return self.environ[name]
        if default is not None:
            return default
        self.warn(path, f"environment variable {name} is not set; using an empty value")
        return ""

    def _mapping(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_describe(value)}")
            return {}
        return value

    def _components(self, raw: dict[str, Any]) -> dict[tuple[Kind, ComponentID], ComponentSpec]:
        specs: dict[tuple[Kind, ComponentID], ComponentSpec] = {}
        for kind in Kind:
            for key, body in self._mapping(raw.get(kind.section), kind.section).items():
                path = f"{kind.section}.{key}"
                spec = self._component(kind, str(key), body, path)
                if spec is not None:
                    specs[(kind, spec.id)] = spec
                else:
                    self.invalid.add(str(key).strip())
        return specs

    def _component(self, kind: Kind, key: str, body: Any, path: str) -> ComponentSpec | None:
        try:
            cid = ComponentID.parse(key)
            factory = self.registry.get(kind, cid.type)
        except (ValueError, RegistryError) as exc:
            self.error(path, str(exc))
            return None
        if body is not None and not isinstance(body, dict):
            self.error(path, f"expected a mapping of settings, got {_describe(body)}")
            return None
        try:
            config = factory.config_class.model_validate(body or {})
        except ValidationError as exc:
            for err in exc.errors():
                self._pydantic_error(path, err, factory.config_class)
            return None
        return ComponentSpec(kind, cid, factory, config)

    def _pydantic_error(self, path: str, err: Any, model: type[ComponentConfig]) -> None:
        loc = ".".join(str(part) for part in err["loc"])
        where = f"{path}.{loc}" if loc else path
        kind, message = err["type"], err["msg"]
        if kind == "extra_forbidden":
            message = "unknown key" + _known_keys(model, err["loc"][:-1])
        elif kind == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        else:
            message = f"{message} (got {_describe_setting(where, err.get('input'))})"
        self.error(where, message)

    def _pipelines(
        self, value: Any, components: dict[tuple[Kind, ComponentID], ComponentSpec]
    ) -> dict[str, PipelineSpec]:
        pipelines: dict[str, PipelineSpec] = {}
        raw = self._mapping(value, "service.pipelines")
        if not raw:
            self.error(
                "service.pipelines", "at least one pipeline is required (traces, metrics or logs)"
            )
        for name, body in raw.items():
            path = f"service.pipelines.{name}"
            signal_name, _, _ = str(name).partition("/")
            if signal_name not in Signal.__members__.values():
                self.error(path, "a pipeline ID is traces, metrics or logs, optionally /name")
                continue
            signal = Signal(signal_name)
            body = self._mapping(body, path)
            for key in body:
                if key not in ("receivers", "processors", "exporters"):
                    self.error(
                        f"{path}.{key}", "unknown key; expected receivers, processors, exporters"
                    )
            pipelines[str(name)] = PipelineSpec(
                str(name),
                signal,
                self._refs(body, "receivers", path, (Kind.RECEIVER, Kind.CONNECTOR), signal, components),
                self._refs(body, "processors", path, (Kind.PROCESSOR,), signal, components),
                self._refs(body, "exporters", path, (Kind.EXPORTER, Kind.CONNECTOR), signal, components),
            )  # fmt: skip
        self._check_connectors(pipelines, components)
        return pipelines

    def _refs(
        self,
        body: dict[str, Any],
        key: str,
        path: str,
        kinds: tuple[Kind, ...],
        signal: Signal,
        components: dict[tuple[Kind, ComponentID], ComponentSpec],
    ) -> tuple[ComponentID, ...]:
        items = body.get(key) or []
        if not isinstance(items, list):
            self.error(f"{path}.{key}", f"expected a list of component IDs, got {_describe(items)}")
            return ()
        if key != "processors" and not items:
            self.error(f"{path}.{key}", f"a pipeline needs at least one of its {key}")
        ids: list[ComponentID] = []
        for index, item in enumerate(items):
            where = f"{path}.{key}[{index}]"
            try:
                cid = ComponentID.parse(str(item))
            except ValueError as exc:
                self.error(where, str(exc))
                continue
            if cid in ids:
                self.error(where, f"{cid} is listed twice")
                continue
            spec = next((components.get((k, cid)) for k in kinds if (k, cid) in components), None)
            if spec is None:
                if str(cid) not in self.invalid:
                    sections = " or ".join(k.section for k in kinds)
                    self.error(where, f"{cid} is not defined in {sections}")
                continue
            if spec.kind != Kind.CONNECTOR and signal not in spec.factory.signals:
                supported = ", ".join(sorted(spec.factory.signals)) or "none"
                self.error(
                    where,
                    f"{spec.kind.value} {cid} does not support {signal}; it supports {supported}",
                )
            elif isinstance(spec.config, ChecksSignals):
                problem = spec.config.signal_problem(signal)
                if problem:
                    self.error(where, f"{spec.kind.value} {cid}: {problem}")
            ids.append(cid)
        return tuple(ids)

    def _check_connectors(
        self,
        pipelines: dict[str, PipelineSpec],
        components: dict[tuple[Kind, ComponentID], ComponentSpec],
    ) -> None:
        for spec in (s for (k, _), s in components.items() if k == Kind.CONNECTOR):
            sources = [p for p in pipelines.values() if spec.id in p.exporters]
            targets = [p for p in pipelines.values() if spec.id in p.receivers]
            path = f"connectors.{spec.id}"
            if bool(sources) != bool(targets):
                side = "as a receiver" if sources else "as an exporter"
                self.error(
                    path,
                    f"a connector must be used as an exporter in one pipeline and as a receiver in another; it is never used {side}",
                )
            for source in sources:
                for target in targets:
                    if (source.signal, target.signal) not in spec.factory.connects:
                        pairs = ", ".join(f"{a}->{b}" for a, b in sorted(spec.factory.connects))
                        self.error(
                            path,
                            f"cannot connect {source.name} to {target.name}; {spec.id.type} connects {pairs}",
                        )
        self._check_cycles(pipelines, components)

    def _check_cycles(
        self,
        pipelines: dict[str, PipelineSpec],
        components: dict[tuple[Kind, ComponentID], ComponentSpec],
    ) -> None:
        edges = {
            p.name: {
                q.name for q in pipelines.values()
                for c in p.exporters
                if (Kind.CONNECTOR, c) in components and c in q.receivers
            }
            for p in pipelines.values()
        }  # fmt: skip
        visiting: set[str] = set()
        done: set[str] = set()

        def visit(name: str, trail: list[str]) -> None:
            if name in done:
                return
            if name in visiting:
                cycle = " -> ".join([*trail[trail.index(name) :], name])
                self.error("service.pipelines", f"connectors form a cycle: {cycle}")
                return
            visiting.add(name)
            for nxt in edges[name]:
                visit(nxt, [*trail, name])
            visiting.discard(name)
            done.add(name)

        for name in edges:
            visit(name, [])

    def _extensions(
        self, value: Any, components: dict[tuple[Kind, ComponentID], ComponentSpec]
    ) -> tuple[ComponentID, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(
                "service.extensions", f"expected a list of extension IDs, got {_describe(value)}"
            )
            return ()
        ids = []
        for index, item in enumerate(value):
            try:
                cid = ComponentID.parse(str(item))
            except ValueError as exc:
                self.error(f"service.extensions[{index}]", str(exc))
                continue
            if (Kind.EXTENSION, cid) not in components:
                if str(cid) not in self.invalid:  # already reported where it is defined
                    self.error(
                        f"service.extensions[{index}]", f"{cid} is not defined in extensions"
                    )
            else:
                ids.append(cid)
        return tuple(ids)

    def _check_authenticators(
        self,
        components: dict[tuple[Kind, ComponentID], ComponentSpec],
        extensions: tuple[ComponentID, ...],
    ) -> None:
        """Every ``auth.authenticator`` names an extension that runs (upstream's rule)."""
        for (kind, cid), spec in components.items():
            for path, auth in _auth_references(spec.config, f"{kind.section}.{cid}"):
                target = auth.extension_id
                if (Kind.EXTENSION, target) not in components:
                    if str(target) not in self.invalid:
                        self.error(
                            f"{path}.authenticator",
                            f"{target} is not defined in extensions (an auth extension such "
                            "as bearertokenauth or basicauth)",
                        )
                elif target not in extensions:
                    self.error(
                        f"{path}.authenticator",
                        f"extension {target} is not listed in service.extensions, so it "
                        "would not run",
                    )

    def _workers(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
            self.error("service.workers", f"expected a whole number from 1 to {MAX_WORKERS}")
            return 1
        return value

    def _telemetry(self, value: Any) -> TelemetrySpec:
        raw = self._mapping(value, "service.telemetry")
        metrics = self._mapping(raw.get("metrics"), "service.telemetry.metrics")
        logs = self._mapping(raw.get("logs"), "service.telemetry.logs")
        for key in raw:
            if key not in ("metrics", "logs"):
                self.error(f"service.telemetry.{key}", "unknown key; expected metrics, logs")
        address: str | None = metrics.get("address", "127.0.0.1:8888")
        level = str(metrics.get("level", "normal"))
        if level not in _TELEMETRY_LEVELS:
            self.error(
                "service.telemetry.metrics.level", f"expected one of {', '.join(_TELEMETRY_LEVELS)}"
            )
        if level == "none" or address in (None, ""):
            address = None
        else:
            try:
                address = parse_endpoint(address)
            except ValueError as exc:
                self.error("service.telemetry.metrics.address", str(exc))
        log_level = str(logs.get("level", "info")).lower()
        if log_level not in ("debug", "info", "warn", "warning", "error"):
            self.error("service.telemetry.logs.level", "expected debug, info, warn or error")
        return TelemetrySpec(address, log_level)

    def _warn_unused(
        self,
        components: dict[tuple[Kind, ComponentID], ComponentSpec],
        pipelines: dict[str, PipelineSpec],
        extensions: tuple[ComponentID, ...],
    ) -> None:
        used: set[tuple[Kind, ComponentID]] = {(Kind.EXTENSION, e) for e in extensions}
        for p in pipelines.values():
            used.update((Kind.RECEIVER, c) for c in p.receivers)
            used.update((Kind.PROCESSOR, c) for c in p.processors)
            used.update((Kind.EXPORTER, c) for c in p.exporters)
            used.update((Kind.CONNECTOR, c) for c in (*p.receivers, *p.exporters))
        for kind, cid in components:
            if (kind, cid) not in used:
                where = "service.extensions" if kind == Kind.EXTENSION else "any pipeline"
                self.warn(
                    f"{kind.section}.{cid}", f"defined but not used in {where}; it will not run"
                )


def _auth_references(model: BaseModel, path: str) -> list[tuple[str, AuthSettings]]:
    """Every ``auth`` setting inside a component's config, with its path in the file."""
    found: list[tuple[str, AuthSettings]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, AuthSettings):
            found.append((f"{path}.{name}", value))
        elif isinstance(value, BaseModel):
            found += _auth_references(value, f"{path}.{name}")
    return found


def _index_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path or "<file>"] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            lines[child] = key.start_mark.line + 1
            _index_lines(value, child, lines)
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, f"{path}[{index}]", lines)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _describe_setting(path: str, value: Any) -> str:
    """What a setting was given, unless it is a secret (a token, password, header, DSN)."""
    if is_secret_setting(path):
        return f"{type(value).__name__}, not shown"
    return _describe(value)


def _known_keys(model: type[ComponentConfig], loc: tuple[Any, ...]) -> str:
    for part in loc:
        field_info = model.model_fields.get(str(part))
        annotation = field_info.annotation if field_info else None
        if not (isinstance(annotation, type) and issubclass(annotation, ComponentConfig)):
            return ""
        model = annotation
    return "; known keys: " + ", ".join(model.model_fields)
