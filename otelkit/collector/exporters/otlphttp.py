"""``otlphttp``: forwards data over OTLP/HTTP to a collector or backend.

``encoding: proto`` (the default) sends binary protobuf; ``encoding: json`` sends
OTLP/JSON (hex IDs, integer enums), as upstream.

``endpoint`` is a base URL; ``/v1/traces``, ``/v1/metrics`` and ``/v1/logs`` are
appended, unless ``traces_endpoint`` (...) gives a signal's full URL. Errors follow the
OTLP specification: 429, 502, 503 and 504 are retried, honouring ``Retry-After``
(seconds or an HTTP date; a sender waiting on an exporter without a queue hears a 429
as 429 / ``RESOURCE_EXHAUSTED`` in turn); every other 4xx and 5xx is permanent; a
connection failure or timeout is retried; a 400 may be one bad item, which the helper
isolates by sending the batch in halves. A ``partial_success`` in the response is
logged and counted.

Requests stay under ``max_request_bytes`` (default 16 MB of encoded body, under the
20 MiB otelkit's and the upstream collector's HTTP receivers take), as the ``otlp``
exporter does; a 413 lowers the limit and the request is cut and resent.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import time
from typing import Any, Literal, Self

import httpx
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field, field_validator, model_validator

from otelkit.collector.exporters.otlp import (
    Compression,
    ReportsReachability,
    RequestTooLargeError,
    SizeLimitedExporter,
    check_headers,
    record_partial_success,
)
from otelkit.collector.pdata import otlp_json
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.auth import AuthSettings, httpx_auth
from otelkit.collector.runtime.component import CreateSettings, Host, exporter_factory
from otelkit.collector.runtime.errors import (
    InvalidDataError,
    OverloadedError,
    PermanentError,
    RetryableError,
)
from otelkit.collector.runtime.exporterhelper import ExporterHelperConfig
from otelkit.collector.runtime.listeners import Destination
from otelkit.collector.runtime.scrub import redact_url
from otelkit.collector.runtime.tls import TLSClientSettings, httpx_options
from otelkit.collector.runtime.types import ByteSize

log = logging.getLogger("otelkit.exporter.otlphttp")

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_RESPONSE_TYPES: dict[Signal, Any] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    url = httpx.URL(value) if value.startswith(("http://", "https://")) else None
    if url is None or not url.host:
        raise ValueError(
            f"{value!r} is not an HTTP URL: expected http://host:port or https://host:port, "
            "such as http://collector:4318"
        )
    return value


class OTLPHTTPExporterConfig(ExporterHelperConfig):
    endpoint: str | None = Field(None, description="Base URL; /v1/<signal> is appended.")
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    tls: TLSClientSettings = TLSClientSettings()
    compression: Compression = "gzip"
    encoding: Literal["proto", "json"] = "proto"
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthSettings | None = None
    max_request_bytes: ByteSize = Field(
        16_000_000,
        gt=0,
        description="Largest request body sent (encoded, before compression); larger "
        "batches are cut. Default 16MB, under the 20MiB OTLP/HTTP receivers take.",
    )

    _check_headers = field_validator("headers")(check_headers)
    _check_urls = field_validator(
        "endpoint", "traces_endpoint", "metrics_endpoint", "logs_endpoint"
    )(_check_url)

    @model_validator(mode="after")
    def _some_endpoint(self) -> Self:
        if not (
            self.endpoint or self.traces_endpoint or self.metrics_endpoint or self.logs_endpoint
        ):
            raise ValueError(
                "set endpoint (a base URL such as http://collector:4318) or "
                "traces_endpoint / metrics_endpoint / logs_endpoint"
            )
        return self

    def url_for(self, signal: Signal) -> str | None:
        explicit = getattr(self, f"{signal.value}_endpoint")
        if explicit:
            return str(explicit)
        if self.endpoint:
            return f"{self.endpoint.rstrip('/')}/v1/{signal.value}"
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_message(response: httpx.Response) -> str:
    """The server's explanation: a ``google.rpc.Status`` message or the start of the body."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(_PROTOBUF) and response.content:
        status = status_pb2.Status()
        try:
            status.ParseFromString(response.content)
        except Exception:  # not a Status after all
            pass
        else:
            if status.message:
                return str(status.message)
    if content_type.startswith(_JSON) and response.content:
        try:
            message = json.loads(response.content).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return str(message)
    return response.text[:200].strip() or response.reason_phrase


def classify(response: httpx.Response) -> Exception:
    message = f"HTTP {response.status_code}: {_error_message(response)}"
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if response.status_code == 413:
        return RequestTooLargeError(message)
    if response.status_code == 429:
        return OverloadedError(message, retry_after)
    if response.status_code in _RETRYABLE_STATUS:
        return RetryableError(message, retry_after)
    if response.status_code == 400:
        return InvalidDataError(message)  # perhaps one bad item: the helper isolates it
    return PermanentError(message)


class OTLPHTTPExporter(SizeLimitedExporter, ReportsReachability):
    def __init__(
        self, settings: CreateSettings, config: OTLPHTTPExporterConfig, signals: frozenset[Signal]
    ) -> None:
        super().__init__(settings, config, config.max_request_bytes)
        self.config = config
        self._urls: dict[Signal, str] = {}
        for signal in signals:
            url = config.url_for(signal)
            if url is None:
                raise ValueError(
                    f"exporter {settings.id} is used in a {signal} pipeline but has neither "
                    f"endpoint nor {signal.value}_endpoint"
                )
            self._urls[signal] = url
        content_type = _JSON if config.encoding == "json" else _PROTOBUF
        self._headers = {**config.headers, "content-type": content_type}
        if config.compression == "gzip":
            self._headers["content-encoding"] = "gzip"
        self._client: httpx.AsyncClient | None = None

    def destinations(self) -> list[Destination]:
        urls = sorted({redact_url(url) for url in self._urls.values()})
        return [Destination("OTLP/HTTP", ", ".join(urls))]

    async def start_sending(self, host: Host) -> None:
        self.watch(host, self.settings.label)
        consumers = self.config.sending_queue.num_consumers
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout or None,
            limits=httpx.Limits(max_connections=consumers, max_keepalive_connections=consumers),
            headers={"user-agent": "otelkit-collector"},
            auth=httpx_auth(host, self.config.auth, self.settings.label, self._urls.values()),
            **httpx_options(self.config.tls),
        )

    async def stop_sending(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, payload: Payload) -> int:
        return await self.send_within_limit(payload, self._encode, self._post)

    def _encode(self, payload: Payload) -> bytes:
        if self.config.encoding == "json":
            return otlp_json.encode_request(payload)
        data: bytes = payload.SerializeToString()
        return data

    async def _post(self, signal: Signal, body: bytes) -> None:
        assert self._client is not None, "send() before start()"
        if self.config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        try:
            response = await self._client.post(
                self._urls[signal], content=body, headers=self._headers
            )
        except httpx.TransportError as exc:
            error = RetryableError(f"{type(exc).__name__}: {exc or 'connection failed'}")
            self.unreachable(error)
            raise error from exc
        if not response.is_success:
            failure = classify(response)
            if isinstance(failure, RetryableError):
                self.unreachable(failure)
            raise failure
        self.reached()
        self._check_partial_success(signal, response)

    def _check_partial_success(self, signal: Signal, response: httpx.Response) -> None:
        if not response.content:
            return
        content_type = response.headers.get("content-type", "")
        parsed = _RESPONSE_TYPES[signal]()
        try:
            if content_type.startswith(_PROTOBUF):
                parsed.ParseFromString(response.content)
            elif content_type.startswith(_JSON):
                _read_json_partial_success(response.content, parsed)
            else:
                return
        except Exception:
            log.warning("exporter %s: unreadable success response ignored", self.name)
            return
        record_partial_success(self.telemetry, self.name, signal, parsed)


def _read_json_partial_success(content: bytes, into: Any) -> None:
    """Fill ``into.partial_success`` from an OTLP/JSON export response."""
    partial = json.loads(content).get("partialSuccess")
    if not isinstance(partial, dict):
        return
    target = into.partial_success
    for field in target.DESCRIPTOR.fields:
        value = partial.get(field.json_name, partial.get(field.name))
        if value is not None:
            setattr(target, field.name, int(value) if field.name.startswith("rejected") else value)


def _create(
    settings: CreateSettings, config: OTLPHTTPExporterConfig, signals: frozenset[Signal]
) -> OTLPHTTPExporter:
    return OTLPHTTPExporter(settings, config, signals)


factory = exporter_factory("otlphttp", OTLPHTTPExporterConfig, _create, frozenset(Signal))
