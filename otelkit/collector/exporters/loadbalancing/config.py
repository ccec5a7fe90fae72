"""Configuration of the ``loadbalancing`` exporter, in the upstream Collector's shape."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from otelkit.collector.exporters.otlp import OTLPExporterConfig
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import ComponentConfig
from otelkit.collector.runtime.types import Duration, parse_endpoint

DEFAULT_PORT = 4317

RoutingKey = Literal["traceID", "service", "resource", "metric", "streamID"]
# Which routing keys each signal can be routed by.
KEYS_FOR = {
    Signal.TRACES: ("traceID", "service", "resource"),
    Signal.LOGS: ("traceID", "service", "resource"),
    Signal.METRICS: ("service", "resource", "metric", "streamID"),
}


def with_port(hostname: str, port: int = DEFAULT_PORT) -> str:
    """``host:port`` for ``host`` or ``host:port`` (IPv6 addresses in brackets)."""
    text = hostname.strip()
    if text.startswith("["):
        return parse_endpoint(text if "]:" in text else f"{text}:{port}")
    if text.count(":") > 1:  # a bare IPv6 address
        return parse_endpoint(f"[{text}]:{port}")
    return parse_endpoint(text if ":" in text else f"{text}:{port}")


class OTLPTemplate(OTLPExporterConfig):
    """Every ``otlp`` exporter setting; the endpoint is each backend's, from the resolver."""

    endpoint: str = ""

    @field_validator("endpoint")
    @classmethod
    def _no_endpoint(cls, endpoint: str) -> str:
        if endpoint:
            raise ValueError(
                "the endpoint of each backend comes from the resolver; remove "
                "protocol.otlp.endpoint"
            )
        return endpoint


class ProtocolConfig(ComponentConfig):
    otlp: OTLPTemplate = OTLPTemplate()


class StaticResolverConfig(ComponentConfig):
    hostnames: list[str] = Field(min_length=1, description="host or host:port (port 4317)")

    @field_validator("hostnames")
    @classmethod
    def _endpoints(cls, hostnames: list[str]) -> list[str]:
        endpoints = [with_port(h) for h in hostnames]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("a backend is listed twice")
        return endpoints


class DNSResolverConfig(ComponentConfig):
    hostname: str = Field(min_length=1, description="Name whose A/AAAA records are the backends")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    interval: Duration = Field(5.0, gt=0, description="How often the name is resolved again")
    timeout: Duration = Field(1.0, gt=0, description="Longest wait for one resolution")


_UNSUPPORTED = {
    "k8s": "the k8s resolver is not supported by otelkit; resolve a headless Service "
    "with the dns resolver instead",
    "aws_cloud_map": "the aws_cloud_map resolver is not supported by otelkit; use the dns "
    "or static resolver",
}


class ResolverConfig(ComponentConfig):
    """Exactly one resolver, as newer upstream versions require; upstream's ``k8s`` and
    ``aws_cloud_map`` are refused with a message saying so."""

    static: StaticResolverConfig | None = None
    dns: DNSResolverConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in _UNSUPPORTED.items():
                if key in data:
                    raise ValueError(why)
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("static", "dns") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one resolver: static (hostnames) or dns (hostname)"
                + (f"; got {' and '.join(given)}" if given else "")
            )
        return self


class LoadBalancingConfig(ComponentConfig):
    routing_key: RoutingKey = Field(
        "traceID", description="What keeps data together on one backend"
    )
    protocol: ProtocolConfig = ProtocolConfig()
    resolver: ResolverConfig

    def signal_problem(self, signal: Signal) -> str | None:
        """Why this config cannot route ``signal`` (None: it can)."""
        if self.routing_key in KEYS_FOR[signal]:
            return None
        if self.routing_key == "traceID":
            return (
                "routing_key traceID cannot route metrics (data points carry no trace ID); "
                "set routing_key to service, resource, metric or streamID"
            )
        return (
            f"routing_key {self.routing_key} routes metrics only; for {signal} use "
            f"{', '.join(KEYS_FOR[signal])}"
        )
