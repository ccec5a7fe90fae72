"""Preset settings: keyword arguments first, then ``OTELKIT_*`` and ``OTEL_*`` variables.

Kept free of OpenTelemetry imports so that reading settings is cheap and testable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["grpc", "http/protobuf"]
LogFormat = Literal["json", "text", "none"]
AccessLog = Literal["stdout", "otlp", "both", "off"]
ACCESS_LOG_CHOICES = ("stdout", "otlp", "both", "off")
DEFAULT_ACCESS_LOG: AccessLog = "stdout"

DEVELOPMENT_NAMES = frozenset({"development", "dev", "local", "test"})
DEFAULT_ENVIRONMENT = "production"
DEFAULT_SAMPLER = "parentbased_always_on"
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
DEFAULT_EXPORT_TIMEOUT_S = 5.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_HEALTH_PATHS = ("/health", "/health/live", "/health/ready")


def parse_resource_attributes(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` as in ``OTEL_RESOURCE_ATTRIBUTES`` (values are %-decoded)."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            result[key.strip()] = unquote(value.strip())
    return result


def _first(*values: str | None) -> str | None:
    for value in values:
        if value is not None and value.strip():
            return value.strip()
    return None


def _bool(value: str | None, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _exporter(env: Mapping[str, str], signal: str) -> str:
    value = _first(env.get(f"OTEL_{signal}_EXPORTER")) or "otlp"
    return value.split(",")[0].strip().lower()


@dataclass(frozen=True)
class Settings:
    """Everything :func:`otelkit.configure` decides, resolved once."""

    service_name: str | None
    service_version: str | None
    service_namespace: str | None
    environment: str
    protocol: Protocol
    endpoint: str | None
    traces_exporter: str
    metrics_exporter: str
    logs_exporter: str
    sampler: str
    sampler_arg: float | None
    export_timeout_s: float
    shutdown_timeout_s: float
    log_level: str
    log_format: LogFormat
    access_log: AccessLog
    capture_pii: bool
    sql_sanitize: bool
    exemplars: bool
    http_server_metrics: bool
    lean_encoder: bool
    gc_freeze: bool
    disabled: bool
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_development(self) -> bool:
        return self.environment.lower() in DEVELOPMENT_NAMES

    @classmethod
    def resolve(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        service_name: str | None = None,
        service_version: str | None = None,
        service_namespace: str | None = None,
        environment: str | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
        sample_ratio: float | None = None,
        log_level: str | None = None,
        log_format: str | None = None,
        access_log: str | None = None,
        capture_pii: bool | None = None,
        resource_attributes: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if env is None else env
        from_env = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        resolved_environment = (
            _first(
                environment,
                env.get("OTELKIT_ENVIRONMENT"),
                from_env.get("deployment.environment.name"),
                from_env.get("deployment.environment"),
            )
            or DEFAULT_ENVIRONMENT
        )
        development = resolved_environment.lower() in DEVELOPMENT_NAMES
        sampler, sampler_arg = _sampler(env, sample_ratio)
        return cls(
            service_name=_first(service_name, env.get("OTEL_SERVICE_NAME")),
            service_version=_first(
                service_version,
                env.get("OTELKIT_SERVICE_VERSION"),
                from_env.get("service.version"),
            ),
            service_namespace=_first(
                service_namespace,
                env.get("OTELKIT_SERVICE_NAMESPACE"),
                from_env.get("service.namespace"),
            ),
            environment=resolved_environment,
            protocol=_protocol(_first(protocol, env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))),
            endpoint=_first(endpoint),
            traces_exporter=_exporter(env, "TRACES"),
            metrics_exporter=_exporter(env, "METRICS"),
            logs_exporter=_exporter(env, "LOGS"),
            sampler=sampler,
            sampler_arg=sampler_arg,
            export_timeout_s=float(
                _first(env.get("OTEL_EXPORTER_OTLP_TIMEOUT")) or DEFAULT_EXPORT_TIMEOUT_S
            ),
            shutdown_timeout_s=float(
                _first(env.get("OTELKIT_SHUTDOWN_TIMEOUT")) or DEFAULT_SHUTDOWN_TIMEOUT_S
            ),
            log_level=(
                _first(log_level, env.get("OTELKIT_LOG_LEVEL"), env.get("OTEL_PYTHON_LOG_LEVEL"))
                or ("DEBUG" if development else "INFO")
            ).upper(),
            log_format=_log_format(_first(log_format, env.get("OTELKIT_LOG_FORMAT")), development),
            access_log=_access_log(_first(access_log, env.get("OTELKIT_ACCESS_LOG"))),
            capture_pii=(
                capture_pii
                if capture_pii is not None
                else _bool(env.get("OTELKIT_CAPTURE_PII"), False)
            ),
            sql_sanitize=_bool(env.get("OTELKIT_SQL_SANITIZE"), True),
            exemplars=_bool(env.get("OTELKIT_METRIC_EXEMPLARS"), False),
            http_server_metrics=_bool(env.get("OTELKIT_HTTP_SERVER_METRICS"), False),
            lean_encoder=_bool(env.get("OTELKIT_LEAN_SPAN_ENCODER"), True),
            gc_freeze=_bool(env.get("OTELKIT_GC_FREEZE"), True),
            disabled=_bool(env.get("OTEL_SDK_DISABLED"), False),
            resource_attributes=dict(resource_attributes or {}),
        )


def _protocol(value: str | None) -> Protocol:
    if value is None or value == "grpc":
        return "grpc"
    if value in {"http/protobuf", "http"}:
        return "http/protobuf"
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={value!r} is not supported: use 'grpc' or 'http/protobuf'"
    )


def _log_format(value: str | None, development: bool) -> LogFormat:
    if value is None:
        return "text" if development else "json"
    lowered = value.lower()
    if lowered in {"json", "text", "none"}:
        return lowered  # type: ignore[return-value]
    raise ValueError(f"OTELKIT_LOG_FORMAT={value!r} is not supported: use json, text or none")


def _access_log(value: str | None) -> AccessLog:
    if value is None:
        return DEFAULT_ACCESS_LOG
    lowered = value.lower()
    if lowered in ACCESS_LOG_CHOICES:
        return lowered  # type: ignore[return-value]
    raise ValueError(
        f"OTELKIT_ACCESS_LOG={value!r} is not supported: use {', '.join(ACCESS_LOG_CHOICES)}"
    )


def _ratio(value: float | str, source: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{source}={value!r} is not a sampling probability between 0 and 1")
    return ratio


def _sampler(env: Mapping[str, str], sample_ratio: float | None) -> tuple[str, float | None]:
    """Every trace is kept unless the user chose a sampler: span-derived metrics then count
    every request, and the collector's tail sampling decides what is stored."""
    if sample_ratio is not None:
        return "parentbased_traceidratio", _ratio(sample_ratio, "sample_ratio")
    name = (_first(env.get("OTEL_TRACES_SAMPLER")) or DEFAULT_SAMPLER).lower()
    arg_text = _first(env.get("OTEL_TRACES_SAMPLER_ARG"))
    if name not in RATIO_SAMPLERS or arg_text is None:
        return name, None
    return name, _ratio(arg_text, "OTEL_TRACES_SAMPLER_ARG")
