"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` as a raw ASGI app.

Served by the runtime's :class:`HttpServer` (uvicorn + httptools). The checks run
cheapest first, each with the status upstream gives: with ``cors``, a browser's preflight
is answered 204 (see ``runtime.cors``); missing or wrong credentials 401
(with ``auth``; before anything else, and before the body is read), unknown path 404 (a signal without a
pipeline has no route, as upstream), method 405 with ``Allow``, media type 415,
Content-Encoding 415, declared or streamed size 413, decompressed size 413, malformed
body 400. Answers use the request's encoding: an ``Export*ServiceResponse`` on success,
a ``google.rpc.Status`` on failure, protobuf or JSON; gzip when ``Accept-Encoding``
allows it and there is a body to compress.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status

from otelkit.collector.pdata.otlp_json import decode_request
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.receivers.otlp.config import HttpConfig
from otelkit.collector.receivers.otlp.decompress import (
    BodyTooLargeError,
    CorruptBodyError,
    UnsupportedEncodingError,
    decompress,
)
from otelkit.collector.receivers.otlp.ingest import SignalIntake
from otelkit.collector.receivers.otlp.outcome import Refusal, invalid, refusal_for
from otelkit.collector.runtime.auth import AuthGate, asgi_headers
from otelkit.collector.runtime.component import Host
from otelkit.collector.runtime.cors import Cors
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, read_body

TRANSPORT = "http"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
# Bodies up to this size are parsed on the event loop (a thread hop costs more).
_PARSE_INLINE_BYTES = 256 * 1024
Headers = list[tuple[bytes, bytes]]


class HttpReceiverServer:
    """The OTLP/HTTP app on its own uvicorn server."""

    def __init__(
        self,
        config: HttpConfig,
        intakes: Mapping[Signal, SignalIntake],
        logger: logging.Logger,
        auth: AuthGate,
        share_port: bool = False,
    ) -> None:
        self.app = OtlpHttpApp(config, intakes, logger, auth)
        self._auth = auth
        self._server = HttpServer(
            config.endpoint, self.app, name="otlp-http", tls=config.tls, reuse_port=share_port
        )

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self, host: Host) -> None:
        self._auth.start(host)
        try:
            await self._server.start()
        except OSError as exc:
            raise OSError(f"{exc} (OTLP/HTTP)") from exc

    async def stop(self) -> None:
        """uvicorn stops accepting, lets in-flight requests finish (bounded), then closes."""
        await self._server.stop()


@dataclass(frozen=True)
class _Request:
    media_type: str
    content_encoding: str
    content_length: int | None
    accepts_gzip: bool


class OtlpHttpApp:
    """The ASGI app: one route per signal that has a pipeline."""

    def __init__(
        self,
        config: HttpConfig,
        intakes: Mapping[Signal, SignalIntake],
        logger: logging.Logger,
        auth: AuthGate,
    ) -> None:
        paths = {
            Signal.TRACES: config.traces_url_path,
            Signal.METRICS: config.metrics_url_path,
            Signal.LOGS: config.logs_url_path,
        }
        self._routes = {paths[signal]: intake for signal, intake in intakes.items()}
        self._limit = config.max_request_body_size
        self._logger = logger
        self._auth = auth
        cors = Cors(config.cors) if config.cors is not None else None
        self._cors = cors if cors is not None and cors.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._cors is not None:
            if await self._cors.preflight(scope, send):
                return
            send = self._cors.wrap(scope, send)
        if self._auth.enabled and (refused := await self._auth.refusal(asgi_headers(scope))):
            challenge = (
                [(b"www-authenticate", refused.challenge.encode())] if refused.challenge else []
            )
            await _text(send, 401, f"unauthenticated: {refused}", challenge)
            return
        intake = self._routes.get(scope["path"])
        if intake is None:
            served = ", ".join(sorted(self._routes))
            await _text(send, 404, f"no OTLP endpoint at {scope['path']}; served: {served}")
            return
        if scope["method"] != "POST":
            await _text(
                send, 405, "method not allowed; OTLP/HTTP takes POST", [(b"allow", b"POST")]
            )
            return
        request = _read_headers(scope["headers"])
        codec = _CODECS.get(request.media_type)
        if codec is None:
            message = f"unsupported content type {request.media_type!r}; use {PROTOBUF} or {JSON}"
            await _text(send, 415, message)
            return
        await self._export(intake, request, codec, receive, send)

    async def _export(
        self, intake: SignalIntake, request: _Request, codec: _Codec, receive: Receive, send: Send
    ) -> None:
        refusal, payload = await self._decode(intake, request, codec, receive)
        if payload is not None:
            try:
                if isinstance(payload, bytes):
                    await intake.deliver_encoded(payload, TRANSPORT)
                else:
                    await intake.deliver(payload, TRANSPORT)
            except Exception as exc:
                refusal = refusal_for(exc)
        if refusal is None:
            await _answer(send, 200, codec.success[intake.signal], codec.content_type, request)
            return
        headers: Headers = []
        if (retry_after := refusal.retry_after_header) is not None:
            headers.append((b"retry-after", retry_after.encode()))
        body = codec.status_body(refusal.status())
        await _answer(send, refusal.http_status, body, codec.content_type, request, headers)

    async def _decode(
        self, intake: SignalIntake, request: _Request, codec: _Codec, receive: Receive
    ) -> tuple[Refusal | None, Payload | bytes | None]:
        """The parsed request, or its protobuf bytes when the intake takes them unparsed."""
        limit = self._limit
        if request.content_length is not None and request.content_length > limit:
            message = (
                f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            )
            return invalid(message, 413), None
        body = await read_body(receive, limit)
        if body is None:
            return invalid(f"request body is over the {limit}-byte limit", 413), None
        try:
            data = decompress(request.content_encoding, body, limit)
        except UnsupportedEncodingError as exc:
            return invalid(str(exc), 415), None
        except BodyTooLargeError as exc:
            return invalid(str(exc), 413), None
        except CorruptBodyError as exc:
            intake.malformed(TRANSPORT, str(exc))
            return invalid(str(exc)), None
        if codec.name == "protobuf" and intake.takes_encoded:
            return None, data
        try:
            if len(data) <= _PARSE_INLINE_BYTES:
                return None, codec.parse(intake.signal, data)
            # Off the event loop, so health checks and other requests are answered meanwhile.
            return None, await asyncio.to_thread(codec.parse, intake.signal, data)
        except (DecodeError, ValueError) as exc:
            reason = f"malformed {codec.name} {intake.request_type.__name__}: {exc}"
            intake.malformed(TRANSPORT, reason)
            return invalid(reason), None


def _read_headers(headers: list[tuple[bytes, bytes]]) -> _Request:
    media_type = encoding = ""
    length: int | None = None
    accepts_gzip = False
    for name, value in headers:
        if name == b"content-type":
            media_type = value.decode("latin-1").partition(";")[0].strip().lower()
        elif name == b"content-encoding":
            encoding = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"accept-encoding":
            accepts_gzip = _accepts_gzip(value.decode("latin-1"))
    return _Request(media_type, encoding, length, accepts_gzip)


def _accepts_gzip(accept_encoding: str) -> bool:
    """True when ``gzip`` (or ``*``) is listed with a non-zero quality."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class _Codec:
    """How one content type parses requests and writes answers."""

    def __init__(
        self,
        name: str,
        content_type: str,
        parse: Callable[[Signal, bytes], Payload],
        success: Mapping[Signal, bytes],
        status_body: Callable[[Status], bytes],
    ) -> None:
        self.name = name
        self.content_type = content_type
        self.parse = parse
        self.success = success
        self.status_body = status_body


def _parse_protobuf(signal: Signal, data: bytes) -> Payload:
    payload = signal.new_request()
    payload.ParseFromString(data)
    return payload


def _status_json(status: Status) -> bytes:
    """google.rpc.Status in proto3 JSON (its details are well-known types json_format knows)."""
    return json.dumps(MessageToDict(status), separators=(",", ":")).encode()


_CODECS = {
    PROTOBUF: _Codec(
        "protobuf",
        PROTOBUF,
        _parse_protobuf,
        {signal: b"" for signal in Signal},
        Status.SerializeToString,
    ),
    JSON: _Codec("JSON", JSON, decode_request, {signal: b"{}" for signal in Signal}, _status_json),
}


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    request: _Request,
    headers: Headers | None = None,
) -> None:
    head: Headers = [(b"content-type", content_type.encode())]
    if request.accepts_gzip and body:
        body = gzip.compress(body, compresslevel=5, mtime=0)
        head.append((b"content-encoding", b"gzip"))
    head.append((b"content-length", str(len(body)).encode()))
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _text(send: Send, status: int, message: str, headers: Headers | None = None) -> None:
    body = (message + "\n").encode()
    head: Headers = [
        (b"content-type", _TEXT.encode()),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
