"""``otlp`` receiver: OTLP over gRPC and HTTP (protobuf and JSON), traces, metrics, logs.

Decoded ``Export*ServiceRequest`` messages go whole to the signal's pipeline; the
receiver does no per-item work beyond counting. A signal with no pipeline is not served
(HTTP 404, gRPC UNIMPLEMENTED), as upstream. Backpressure from the pipeline becomes
UNAVAILABLE / 503 or RESOURCE_EXHAUSTED / 429 with a retry delay: see ``outcome``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.receivers.otlp.config import (
    GrpcConfig,
    HttpConfig,
    OtlpReceiverConfig,
    Protocols,
)
from otelkit.collector.receivers.otlp.grpc import GrpcServer
from otelkit.collector.receivers.otlp.http import HttpReceiverServer
from otelkit.collector.receivers.otlp.ingest import SignalIntake
from otelkit.collector.runtime.auth import AuthGate, AuthSettings
from otelkit.collector.runtime.component import (
    Consumer,
    CreateSettings,
    Host,
    Receiver,
    receiver_factory,
)

__all__ = ["GrpcConfig", "HttpConfig", "OtlpReceiver", "OtlpReceiverConfig", "Protocols", "factory"]


class OtlpReceiver(Receiver):
    def __init__(
        self,
        settings: CreateSettings,
        config: OtlpReceiverConfig,
        consumers: Mapping[Signal, Consumer],
    ) -> None:
        logger = settings.logger.getChild(f"receiver.{settings.id}")
        intakes = {
            signal: SignalIntake(signal, consumer, settings.telemetry, str(settings.id), logger)
            for signal, consumer in consumers.items()
        }
        protocols = config.protocols

        def gate(transport: str, auth: AuthSettings | None) -> AuthGate:
            def count() -> None:
                settings.telemetry.receiver_unauthenticated(str(settings.id), transport)

            if auth is not None:
                settings.telemetry.receiver_authenticating(str(settings.id), transport)
            return AuthGate(auth, f"{settings.label} ({transport})", logger, count)

        # Worker processes of one collector (--workers N) listen on the same ports.
        share = settings.worker is not None
        self._grpc = (
            GrpcServer(protocols.grpc, intakes, logger, gate("grpc", protocols.grpc.auth), share)
            if protocols.grpc
            else None
        )
        self._http = (
            HttpReceiverServer(
                protocols.http, intakes, logger, gate("http", protocols.http.auth), share
            )
            if protocols.http
            else None
        )
        transports = [
            name for name, on in (("grpc", protocols.grpc), ("http", protocols.http)) if on
        ]
        settings.telemetry.receiver_created(str(settings.id), transports, consumers)

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port (useful with port 0); 0 when gRPC is off or not started."""
        return self._grpc.port if self._grpc else 0

    @property
    def http_port(self) -> int:
        return self._http.port if self._http else 0

    async def start(self, host: Host) -> None:
        """Bind both servers; if the second cannot bind, the first is stopped again."""
        try:
            if self._grpc is not None:
                await self._grpc.start(host)
            if self._http is not None:
                await self._http.start(host)
        except BaseException:
            await self.shutdown()
            raise

    async def shutdown(self) -> None:
        """Stop accepting on both, let in-flight requests finish (bounded), then return."""
        servers = [server for server in (self._grpc, self._http) if server is not None]
        await asyncio.gather(*(server.stop() for server in servers))


def _create(
    settings: CreateSettings, config: OtlpReceiverConfig, consumers: Mapping[Signal, Consumer]
) -> OtlpReceiver:
    return OtlpReceiver(settings, config, consumers)


factory = receiver_factory("otlp", OtlpReceiverConfig, _create, frozenset(Signal))
