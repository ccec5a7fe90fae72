"""OTLP/gRPC: the TraceService, MetricsService and LogsService ``Export`` methods.

Handlers take the raw request bytes and parse them with ``ParseFromString`` themselves,
so a malformed message is answered ``INVALID_ARGUMENT`` with the parser's reason
(instead of the generic INTERNAL a failing deserializer gives) at no extra cost. The
service and method names come from opentelemetry-proto's descriptors; only services
whose signal has a pipeline are registered, so the others answer UNIMPLEMENTED, as the
upstream receiver does. gzip (and deflate) request compression is handled by gRPC.

With ``auth``, a server interceptor checks each call's metadata first; a refused call is
answered ``UNAUTHENTICATED`` by a handler that never asks for the request message, so
nothing of it is parsed (or decompressed) by the collector.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.receivers.otlp.config import MIB, GrpcConfig
from otelkit.collector.receivers.otlp.ingest import SignalIntake
from otelkit.collector.receivers.otlp.outcome import Refusal, invalid, refusal_for
from otelkit.collector.runtime.auth import AuthenticationError, AuthGate
from otelkit.collector.runtime.component import Host
from otelkit.collector.runtime.tls import ServerTLS
from otelkit.collector.runtime.types import split_endpoint

TRANSPORT = "grpc"
SHUTDOWN_GRACE_SECONDS = 5.0
_RETRY_INFO_TRAILER = "google.rpc.retryinfo-bin"
_STATUS_DETAILS_TRAILER = "grpc-status-details-bin"
_SERVICES = {
    Signal.TRACES: trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"],
    Signal.METRICS: metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"],
    Signal.LOGS: logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"],
}
# Export*ServiceResponse with no partial_success serializes to no bytes at all.
_EMPTY_RESPONSE = b""


class GrpcServer:
    """A grpc.aio server exporting the OTLP services of the signals that have pipelines."""

    def __init__(
        self,
        config: GrpcConfig,
        intakes: Mapping[Signal, SignalIntake],
        logger: logging.Logger,
        auth: AuthGate,
        share_port: bool = False,
    ) -> None:
        self._config = config
        self._share_port = share_port
        self._intakes = intakes
        self._logger = logger
        self._auth = auth
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: Host) -> None:
        self._auth.start(host)
        max_bytes = self._config.max_recv_msg_size_mib * MIB
        server = grpc.aio.server(
            interceptors=[_AuthInterceptor(self._auth)] if self._auth.enabled else None,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                # gRPC shares ports by default; a taken port must be a start error instead,
                # except between the worker processes of one collector (--workers N).
                ("grpc.so_reuseport", 1 if self._share_port else 0),
            ],
        )
        server.add_generic_rpc_handlers(self._handlers())
        bind_host, port = split_endpoint(self._config.endpoint)
        address = f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"
        try:
            if self._config.tls is not None:
                credentials = ServerTLS(self._config.tls).grpc_credentials()
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self._config.endpoint} (gRPC): {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {self._config.endpoint} (gRPC): address in use?")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish for a bounded time, then cancel."""
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None

    def _handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        handlers = []
        for signal, intake in self._intakes.items():
            service = _SERVICES[signal]
            export = grpc.unary_unary_rpc_method_handler(_ExportMethod(intake, self._logger).export)
            handlers.append(
                grpc.method_handlers_generic_handler(service.full_name, {"Export": export})
            )
        return handlers


class _ExportMethod:
    """One signal's ``Export``: parse, deliver, answer.

    gRPC recognises async handlers by ``inspect.iscoroutinefunction``, so the handler is
    the bound :meth:`export`, not the instance.
    """

    def __init__(self, intake: SignalIntake, logger: logging.Logger) -> None:
        self._intake = intake
        self._parse = intake.request_type.FromString
        self._logger = logger

    async def export(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if self._intake.takes_encoded:  # cut by trace between worker processes, then parsed
            try:
                await self._intake.deliver_encoded(request, TRANSPORT)
            except Exception as exc:
                await _abort(context, refusal_for(exc))
            return _EMPTY_RESPONSE
        try:
            payload = self._parse(request)
        except DecodeError as exc:
            reason = f"malformed {self._intake.request_type.__name__}: {exc}"
            self._intake.malformed(TRANSPORT, reason)
            await _abort(context, invalid(reason))
        try:
            await self._intake.deliver(payload, TRANSPORT)
        except Exception as exc:
            await _abort(context, refusal_for(exc))
        return _EMPTY_RESPONSE


class _AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls whose metadata the authenticator does not accept."""

    def __init__(self, gate: AuthGate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata: dict[str, str] = {}
        for key, value in details.invocation_metadata or ():
            if isinstance(value, str):  # binary (-bin) entries carry no credentials
                metadata.setdefault(key, value)
        error = await self._gate.refusal(metadata)
        if error is None:
            return await continuation(details)
        return grpc.stream_unary_rpc_method_handler(_refuse(error))


def _refuse(error: AuthenticationError) -> Callable[..., Awaitable[bytes]]:
    """A handler that answers UNAUTHENTICATED without reading the request stream."""

    async def refuse(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
        raise AssertionError("context.abort returns only by raising")

    return refuse


async def _abort(context: grpc.aio.ServicerContext[Any, Any], refusal: Refusal) -> NoReturn:
    trailers: list[tuple[str, bytes]] = [
        (_STATUS_DETAILS_TRAILER, refusal.status().SerializeToString())
    ]
    info = refusal.retry_info()
    if info is not None:
        trailers.append((_RETRY_INFO_TRAILER, info.SerializeToString()))
    await context.abort(refusal.grpc_code, refusal.message, trailing_metadata=tuple(trailers))
    raise AssertionError("context.abort returns only by raising")
