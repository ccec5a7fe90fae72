"""Configuration of the ``otlp`` receiver, in the upstream collector's shape.

A protocol is enabled only when its key is present (``protocols: {grpc:}`` enables gRPC
with its defaults), as upstream; at least one protocol is required. Default endpoints are
``localhost:4317`` and ``localhost:4318``, as upstream's since it stopped binding every
interface by default; a container configuration sets ``0.0.0.0`` itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from otelkit.collector.runtime.auth import AuthSettings
from otelkit.collector.runtime.component import ComponentConfig
from otelkit.collector.runtime.cors import CORSSettings
from otelkit.collector.runtime.listeners import Listener
from otelkit.collector.runtime.tls import TLSServerSettings
from otelkit.collector.runtime.types import ByteSize, Endpoint

MIB = 1024 * 1024


class GrpcConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:4317"
    max_recv_msg_size_mib: int = Field(default=4, gt=0, le=2047)
    auth: AuthSettings | None = None
    tls: TLSServerSettings | None = None

    @field_validator("tls")
    @classmethod
    def _grpc_tls(cls, tls: TLSServerSettings | None) -> TLSServerSettings | None:
        if tls is not None:
            tls.grpc_versions_supported()
        return tls


class HttpConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:4318"
    max_request_body_size: ByteSize = Field(default=20 * MIB, gt=0)
    traces_url_path: str = "/v1/traces"
    metrics_url_path: str = "/v1/metrics"
    logs_url_path: str = "/v1/logs"
    auth: AuthSettings | None = None
    tls: TLSServerSettings | None = None
    cors: CORSSettings | None = None

    @field_validator("traces_url_path", "metrics_url_path", "logs_url_path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            # Upstream prefixes a missing slash; do the same instead of refusing.
            value = "/" + value
        if "?" in value or "#" in value or " " in value:
            raise ValueError(f"{value!r} is not a URL path: expected a path such as /v1/traces")
        return value

    @model_validator(mode="after")
    def _distinct_paths(self) -> HttpConfig:
        paths = [self.traces_url_path, self.metrics_url_path, self.logs_url_path]
        if len(set(paths)) != len(paths):
            raise ValueError(f"traces, metrics and logs URL paths must differ, got {paths}")
        return self


class Protocols(ComponentConfig):
    grpc: GrpcConfig | None = None
    http: HttpConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _present_key_enables(cls, data: Any) -> Any:
        """``grpc:`` with no value (YAML null) means "enabled with defaults", as upstream."""
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data


class OtlpReceiverConfig(ComponentConfig):
    protocols: Protocols = Protocols()

    @model_validator(mode="after")
    def _at_least_one_protocol(self) -> OtlpReceiverConfig:
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ValueError(
                "must enable at least one protocol: add protocols.grpc (default endpoint "
                "localhost:4317) and/or protocols.http (default endpoint localhost:4318)"
            )
        return self

    def listeners(self) -> list[Listener]:
        found = []
        for name, protocol in (("grpc", self.protocols.grpc), ("http", self.protocols.http)):
            if protocol is not None:
                authenticated = protocol.auth is not None
                tls = protocol.tls is not None
                wire = (
                    ("gRPC with TLS" if tls else "gRPC")
                    if name == "grpc"
                    else ("HTTPS" if tls else "HTTP")
                )
                found.append(
                    Listener(f"OTLP/{name}", protocol.endpoint, authenticated, protocol=wire)
                )
        return found
