"""``otlp``: forwards data over OTLP/gRPC to another collector or backend.

Errors follow the OTLP specification: ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
``ABORTED``, ``CANCELLED``, ``OUT_OF_RANGE`` and ``DATA_LOSS`` are retried;
``RESOURCE_EXHAUSTED`` is retried only when the server sends ``RetryInfo`` (its delay
is honoured; a sender waiting on an exporter without a queue hears it as
``RESOURCE_EXHAUSTED`` / 429 in turn); ``INVALID_ARGUMENT`` may be one bad item, so the
batch is sent in halves to find it (at most 64 extra requests until the destination
takes a piece) and only it is dropped; everything else is permanent. gRPC's own retries
are turned off so that the shared exporter helper owns backoff and counting. A
``partial_success`` in the response is logged and its rejected items are counted as
failed (reason ``rejected``).

No request is larger than the receiver takes: a batch whose encoding passes
``max_request_bytes`` (default 4 MB, under the 4 MiB that gRPC servers, otelkit's and the
upstream collector's receivers among them, accept by default) is cut into requests that
fit. When the destination still refuses one as too large (``RESOURCE_EXHAUSTED``
"message larger than max", HTTP 413), the limit is lowered to what it said it takes and
the request is cut again and resent, not dropped. Only an item that alone is larger
than the limit is dropped (counted, reason ``invalid``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field, field_validator

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.pdata.split import append, pieces_within
from otelkit.collector.runtime.auth import AuthSettings, grpc_interceptors
from otelkit.collector.runtime.component import (
    CreateSettings,
    Host,
    Status,
    exporter_factory,
)
from otelkit.collector.runtime.errors import (
    InvalidDataError,
    OverloadedError,
    PermanentError,
    RetryableError,
)
from otelkit.collector.runtime.exporterhelper import ExporterHelperConfig, QueuedExporter
from otelkit.collector.runtime.listeners import Destination
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.collector.runtime.tls import (
    TLSClientSettings,
    grpc_channel_credentials,
    grpc_channel_options,
)
from otelkit.collector.runtime.types import ByteSize, Endpoint

log = logging.getLogger("otelkit.exporter.otlp")

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_REJECTED_FIELD = {
    Signal.TRACES: "rejected_spans",
    Signal.METRICS: "rejected_data_points",
    Signal.LOGS: "rejected_log_records",
}
_MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 4_000_000
# A limit learned from a refusal is never set below this (an item larger than it is rare).
_SMALLEST_LIMIT = 64 * 1024
# grpc-core and grpc-go both say "... message larger than max (4500000 vs. 4194304)".
_TOO_LARGE = re.compile(r"larger than max(?:imum)?(?: \((\d+) vs\.? (\d+)\))?", re.IGNORECASE)
# (gRPC method, response type) of each signal's Export call.
_METHODS: dict[Signal, tuple[str, Any]] = {
    Signal.TRACES: (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ExportTraceServiceResponse,
    ),
    Signal.METRICS: (
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        ExportMetricsServiceResponse,
    ),
    Signal.LOGS: (
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        ExportLogsServiceResponse,
    ),
}


Compression = Literal["gzip", "none"]


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    for key in headers:
        if not key or any(c.isspace() or c == ":" for c in key):
            raise ValueError(f"{key!r} is not a valid header name")
    return headers


class OTLPExporterConfig(ExporterHelperConfig):
    endpoint: Endpoint = Field(description="host:port of the OTLP/gRPC server")
    tls: TLSClientSettings = TLSClientSettings()
    compression: Compression = "gzip"
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthSettings | None = None
    max_request_bytes: ByteSize = Field(
        DEFAULT_MAX_REQUEST_BYTES,
        gt=0,
        le=_MAX_MESSAGE,
        description="Largest request sent (encoded, before compression); larger batches "
        "are cut. Default 4MB, under gRPC's 4MiB default receive limit.",
    )

    _check_headers = field_validator("headers")(check_headers)

    @field_validator("tls")
    @classmethod
    def _no_skip_verify(cls, tls: TLSClientSettings) -> TLSClientSettings:
        tls.grpc_versions_supported()
        if tls.insecure_skip_verify:
            raise ValueError(
                "insecure_skip_verify is not supported over gRPC; set ca_file to trust the "
                "server's certificate, or insecure: true for plain text"
            )
        return tls


def record_partial_success(
    telemetry: SelfTelemetry, exporter: str, signal: Signal, response: Any
) -> None:
    """Log and count what the server said it rejected from an accepted request."""
    if not response.HasField("partial_success"):
        return
    partial = response.partial_success
    rejected = int(getattr(partial, _REJECTED_FIELD[signal]))
    if rejected:
        telemetry.exporter_send_failed(exporter, signal, rejected, "rejected")
    if rejected or partial.error_message:
        log.warning(
            "exporter %s: server rejected %d %s: %s",
            exporter, rejected, signal.item_name, partial.error_message or "(no message)",
        )  # fmt: skip


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The server's ``RetryInfo`` delay in seconds, if it sent one.

    The standard place is the ``google.rpc.Status`` details; the Python SDK also reads
    a bare ``google.rpc.retryinfo-bin`` trailer, so both are understood.
    """
    for key, value in error.trailing_metadata() or ():
        if not isinstance(value, bytes):
            continue
        if key == "google.rpc.retryinfo-bin":
            return _seconds(error_details_pb2.RetryInfo.FromString(value))
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return _seconds(info)
    return None


def _seconds(info: Any) -> float:
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


def classify(error: grpc.aio.AioRpcError) -> Exception:
    """The otelkit error for a failed call, per the OTLP/gRPC retry rules."""
    code = error.code()
    message = f"{code.name}: {error.details() or 'no details'}"
    delay = retry_delay(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        too_large = _TOO_LARGE.search(error.details() or "")
        if too_large:
            limit = int(too_large.group(2)) if too_large.group(2) else None
            return RequestTooLargeError(message, limit)
        if delay is not None:
            return OverloadedError(message, retry_after=delay)
    if code in _RETRYABLE:
        return RetryableError(message, retry_after=delay)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidDataError(message)  # perhaps one bad item: the helper isolates it
    return PermanentError(message)


class RequestTooLargeError(Exception):
    """The destination refused a request for its size; ``limit`` is what it takes, if said."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


Encode = Callable[[Payload], bytes]
Post = Callable[[Signal, bytes], Awaitable[None]]


class SizeLimitedExporter(QueuedExporter):
    """Sends each batch in requests that fit the destination's size limit."""

    def __init__(self, settings: CreateSettings, config: Any, limit: int) -> None:
        super().__init__(settings, config)
        self.request_limit = limit

    async def send_within_limit(self, payload: Payload, encode: Encode, post: Post) -> int:
        """Send ``payload`` in requests under the limit; returns the items dropped because
        one alone is over it. On failure ``payload`` holds exactly the items not sent."""
        signal = signal_of(payload)
        too_large = await self._send_pieces(signal, payload, encode, post)
        dropped = sum(count_items(piece) for piece in too_large)
        if dropped:
            self.count_invalid(signal, dropped,
                               f"larger alone than max_request_bytes ({self.request_limit})")  # fmt: skip
        return dropped

    async def _send_pieces(
        self, signal: Signal, payload: Payload, encode: Encode, post: Post
    ) -> list[Payload]:
        pieces = pieces_within(payload, encode, self.request_limit)
        too_large: list[Payload] = []
        for index, (piece, data) in enumerate(pieces):
            try:
                if len(data) <= self.request_limit:
                    try:
                        await post(signal, data)
                        continue
                    except RequestTooLargeError as exc:
                        if len(data) <= _SMALLEST_LIMIT:  # not a size this exporter can fix
                            raise PermanentError(f"{exc} ({len(data)} bytes)") from exc
                        self._lower_limit(len(data), exc)
                if count_items(piece) <= 1:
                    too_large.append(piece)
                else:  # cut again under the (lowered) limit
                    too_large.extend(await self._send_pieces(signal, piece, encode, post))
            except BaseException:
                for unsent in [*(p for p, _ in pieces[index:]), *too_large]:
                    if unsent is not payload:
                        append(payload, unsent)
                raise
        return too_large

    def _lower_limit(self, refused: int, error: RequestTooLargeError) -> None:
        said = error.limit if error.limit and error.limit < refused else None
        limit = max(_SMALLEST_LIMIT, min(self.request_limit, said or refused // 2))
        if limit < self.request_limit:
            log.warning(
                "exporter %s: the destination refused a %d-byte request as too large (%s); "
                "sending at most %d bytes a request from now on (set max_request_bytes)",
                self.name, refused, error, limit,
            )  # fmt: skip
            self.request_limit = limit


class ReportsReachability:
    """Tells the host (and so ``/health``) whether the destination is reachable:
    ``recoverable_error`` after a retryable failure, ``ok`` after the next success."""

    host: Host | None = None
    label = ""
    _unreachable = False

    def watch(self, host: Host, label: str) -> None:
        self.host, self.label = host, label

    def reached(self) -> None:
        if self._unreachable:
            self._unreachable = False
            self._report(Status.OK, "")

    def unreachable(self, error: Exception) -> None:
        if not self._unreachable:
            self._unreachable = True
            self._report(Status.RECOVERABLE_ERROR, f"cannot deliver: {error}")

    def _report(self, status: Status, message: str) -> None:
        if self.host is None:
            return
        current = self.host.component_statuses().get(self.label, (Status.OK, ""))[0]
        if current in (Status.OK, Status.RECOVERABLE_ERROR):  # not while starting/stopping
            self.host.report_status(self.label, status, message)


class OTLPExporter(SizeLimitedExporter, ReportsReachability):
    def __init__(self, settings: CreateSettings, config: OTLPExporterConfig) -> None:
        super().__init__(settings, config, config.max_request_bytes)
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, Any] = {}
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())

    def destinations(self) -> list[Destination]:
        return [Destination("OTLP/gRPC", self.config.endpoint)]

    async def start_sending(self, host: Host) -> None:
        self.watch(host, self.settings.label)
        self._channel = self._open_channel(host)
        self._calls = {
            signal: self._channel.unary_unary(
                method,
                request_serializer=bytes,  # requests are encoded (and sized) before the call
                response_deserializer=response_type.FromString,
            )
            for signal, (method, response_type) in _METHODS.items()
        }

    async def stop_sending(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def send(self, payload: Payload) -> int:
        return await self.send_within_limit(payload, _serialize, self._post)

    async def _post(self, signal: Signal, data: bytes) -> None:
        try:
            response = await self._calls[signal](
                data, timeout=self.config.timeout or None, metadata=self._metadata or None
            )
        except grpc.aio.AioRpcError as exc:
            error = classify(exc)
            if isinstance(error, RetryableError):
                self.unreachable(error)
            raise error from None
        self.reached()
        record_partial_success(self.telemetry, self.name, signal, response)

    def _open_channel(self, host: Host) -> grpc.aio.Channel:
        config = self.config
        interceptors = grpc_interceptors(
            host, config.auth, self.settings.label, config.endpoint, config.tls.insecure
        )
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 0),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ]
        compression = grpc.Compression.Gzip if self.config.compression == "gzip" else None
        tls = self.config.tls
        if tls.insecure:
            return grpc.aio.insecure_channel(
                config.endpoint, options=options, compression=compression, interceptors=interceptors
            )
        options += grpc_channel_options(tls)
        credentials = grpc_channel_credentials(tls)
        return grpc.aio.secure_channel(
            config.endpoint,
            credentials,
            options=options,
            compression=compression,
            interceptors=interceptors,
        )


def _serialize(payload: Payload) -> bytes:
    data: bytes = payload.SerializeToString()
    return data


def _create(
    settings: CreateSettings, config: OTLPExporterConfig, signals: frozenset[Signal]
) -> OTLPExporter:
    return OTLPExporter(settings, config)


factory = exporter_factory("otlp", OTLPExporterConfig, _create, frozenset(Signal))
