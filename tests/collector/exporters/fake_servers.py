"""In-process OTLP servers that record requests and answer as a test scripts them."""

from __future__ import annotations

import gzip
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelkit.collector.pdata import otlp_json
from otelkit.collector.pdata.signals import Payload, signal_of
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, read_body, respond

SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    ),
    "opentelemetry.proto.collector.metrics.v1.MetricsService": (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    ),
    "opentelemetry.proto.collector.logs.v1.LogsService": (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    ),
}
PATHS = {
    "/v1/traces": SERVICES["opentelemetry.proto.collector.trace.v1.TraceService"],
    "/v1/metrics": SERVICES["opentelemetry.proto.collector.metrics.v1.MetricsService"],
    "/v1/logs": SERVICES["opentelemetry.proto.collector.logs.v1.LogsService"],
}


@dataclass
class GrpcFailure:
    code: grpc.StatusCode
    retry_delay: float | None = None
    bare_retry_info: bool = False  # the SDK's google.rpc.retryinfo-bin trailer


@dataclass
class FakeGrpcServer:
    """Answers each call with the next scripted failure, or success once they run out."""

    failures: deque[GrpcFailure] = field(default_factory=deque)
    received: list[Payload] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    partial: Callable[[Any], None] | None = None
    tls: tuple[bytes, bytes] | None = None  # (private key, certificate chain) in PEM
    max_receive: int | None = None  # gRPC's receive limit in bytes (default 4 MiB)
    refuse: Callable[[Payload], bool] | None = None  # INVALID_ARGUMENT for such requests
    host: str = "127.0.0.1"  # any 127.0.0.0/8 address, to stand for several machines
    port: int = 0  # 0: any free port
    _server: Any = None

    async def start(self) -> None:
        options = (
            [("grpc.max_receive_message_length", self.max_receive)] if self.max_receive else []
        )
        self._server = grpc.aio.server(options=options)
        handlers = {}
        for service, (request_type, response_type) in SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._handle(response_type),
                request_deserializer=request_type.FromString,
                response_serializer=lambda r: r.SerializeToString(),
            )
            handlers[service] = grpc.method_handlers_generic_handler(service, {"Export": handler})
        self._server.add_generic_rpc_handlers(tuple(handlers.values()))
        if self.tls is None:
            self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        else:
            credentials = grpc.ssl_server_credentials([self.tls])
            self.port = self._server.add_secure_port(f"{self.host}:{self.port}", credentials)
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(None)

    def _handle(self, response_type: Any) -> Any:
        async def export(request: Payload, context: grpc.aio.ServicerContext) -> Any:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})
            if self.failures:
                failure = self.failures.popleft()
                if failure.retry_delay is not None:
                    info = error_details_pb2.RetryInfo(
                        retry_delay=Duration(nanos=int(failure.retry_delay * 1e9))
                    )
                    status = status_pb2.Status(code=failure.code.value[0], message="busy")
                    status.details.add().Pack(info)
                    trailer = (
                        ("google.rpc.retryinfo-bin", info.SerializeToString())
                        if failure.bare_retry_info
                        else ("grpc-status-details-bin", status.SerializeToString())
                    )
                    context.set_trailing_metadata((trailer,))
                await context.abort(failure.code, "scripted failure")
            if self.refuse is not None and self.refuse(request):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid item")
            self.received.append(request)
            response = response_type()
            if self.partial is not None:
                self.partial(response)
            return response

        return export


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = "application/x-protobuf"


@dataclass
class FakeHttpServer:
    """OTLP/HTTP: records decoded requests, answers scripted statuses, then 200."""

    answers: deque[HttpAnswer] = field(default_factory=deque)
    received: list[Payload] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    success_body: bytes = b""
    success_type: str = "application/x-protobuf"
    max_body: int | None = None  # larger decoded bodies are answered 413
    _server: HttpServer | None = None

    async def start(self) -> None:
        self._server = HttpServer("127.0.0.1:0", self._app, name="fake-otlp-http")
        await self._server.start()

    async def stop(self) -> None:
        assert self._server is not None
        await self._server.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.port}"

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["path"], headers))
        body = await read_body(receive, 64 * 1024 * 1024) or b""
        if self.answers:
            answer = self.answers.popleft()
            extra = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
            await respond(send, answer.status, answer.body, answer.content_type, extra)
            return
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.max_body is not None and len(body) > self.max_body:
            await respond(send, 413, b"request body too large", "text/plain")
            return
        request_type, _ = PATHS[scope["path"]]
        if headers.get("content-type") == "application/json":
            self.received.append(otlp_json.decode_request(signal_of(request_type()), body))
        else:
            self.received.append(request_type.FromString(body))
        await respond(send, 200, self.success_body, self.success_type)
