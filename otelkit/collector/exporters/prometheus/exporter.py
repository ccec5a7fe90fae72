"""``prometheus``: serve the metrics that reach it on ``/metrics`` for Prometheus to scrape.

Keys match the upstream exporter's. Two deliberate differences, both documented in the
config fields: ``enable_open_metrics`` defaults to true (OpenMetrics, with exemplars,
is only served when the scraper asks for it in ``Accept``, so plain scrapers are
unaffected), and ``metric_expiration`` applies to every series including
``target_info``.

There is nothing to send, so this exporter has no queue: ``consume`` folds points into
the store. A scrape takes a snapshot of references on the event loop and renders it in
a worker thread; the rendered text is cached until the store changes, so any number of
scrapers cost one render per change.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Awaitable, Callable

from pydantic import Field, field_validator

from otelkit.collector.exporters.prometheus.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Body,
    render_openmetrics,
    render_text,
    wants_openmetrics,
)
from otelkit.collector.exporters.prometheus.store import CumulativeStore, FamilySnapshot
from otelkit.collector.exporters.prometheus.translation import (
    Rejected,
    TranslationOptions,
    translate,
)
from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Exporter,
    Host,
    exporter_factory,
)
from otelkit.collector.runtime.errors import PermanentError
from otelkit.collector.runtime.exporterhelper import InvalidItems
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, respond
from otelkit.collector.runtime.listeners import Listener
from otelkit.collector.runtime.tls import TLSServerSettings
from otelkit.collector.runtime.types import Duration, Endpoint

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_EXPIRY_INTERVAL = 1.0
_INGEST_CHUNK = 200
"""Points folded into the store between yields to the event loop (a few ms of work)."""
_INLINE_RENDER_SERIES = 2000
"""Below this many series a render is cheaper than a hop to a worker thread."""


class ResourceToTelemetry(ComponentConfig):
    enabled: bool = Field(
        False, description="Copy every resource attribute onto every series as a label."
    )


class PrometheusConfig(ComponentConfig):
    endpoint: Endpoint = Field("localhost:9464", description="Where /metrics is served.")
    namespace: str = Field("", description="Prefix of every metric name (namespace_name).")
    const_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every series."
    )
    send_timestamps: bool = Field(False, description="Expose each point's own timestamp.")
    metric_expiration: Duration = Field(
        300.0, description="Series not updated for this long disappear; 0 keeps them."
    )
    enable_open_metrics: bool = Field(
        True,
        description="Serve OpenMetrics (with exemplars) to scrapers that ask for it; "
        "false always serves text 0.0.4.",
    )
    resource_to_telemetry_conversion: ResourceToTelemetry = ResourceToTelemetry()
    add_metric_suffixes: bool = Field(
        True, description="Unit and _total suffixes, as the specification says."
    )
    tls: TLSServerSettings | None = Field(None, description="Serve HTTPS (upstream's key).")

    @field_validator("const_labels")
    @classmethod
    def _valid_label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(
                    f"{name!r} is not a Prometheus label name: use letters, digits and _, "
                    "not starting with a digit or __"
                )
        return value

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
            raise ValueError(f"{value!r} is not a metric name prefix: use letters, digits, _")
        return value

    def translation_options(self) -> TranslationOptions:
        return TranslationOptions(
            namespace=self.namespace,
            add_metric_suffixes=self.add_metric_suffixes,
            resource_to_telemetry_conversion=self.resource_to_telemetry_conversion.enabled,
            extra_labels=dict(self.const_labels),
        )

    def listeners(self) -> list[Listener]:
        return [
            Listener(
                "Prometheus scrape endpoint",
                self.endpoint,
                False,
                can_authenticate=False,
                protocol="HTTPS" if self.tls else "HTTP",
                path="/metrics",
            )
        ]


class PrometheusExporter(Exporter):
    def __init__(self, settings: CreateSettings, config: PrometheusConfig) -> None:
        self.config = config
        self.name = str(settings.id)
        self.telemetry = settings.telemetry
        self.store = CumulativeStore(config.metric_expiration)
        self._options = config.translation_options()
        self._server = HttpServer(config.endpoint, self._app, name=settings.label, tls=config.tls)
        # In a worker process the supervisor serves one scrape view for every worker.
        self._serves = settings.worker is None
        self._cache: dict[bool, tuple[int, Body]] = {}
        self._rendering: dict[tuple[bool, int], asyncio.Future[Body]] = {}
        self._expired_at = 0.0
        self._invalid = InvalidItems(settings.telemetry, self.name)

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self, host: Host) -> None:
        if self._serves:
            await self._server.start()

    async def shutdown(self) -> None:
        await self._server.stop()

    async def consume(self, payload: Payload) -> None:
        if signal_of(payload) != Signal.METRICS:
            raise PermanentError(f"exporter {self.name} takes metrics only")
        rejected = Rejected()
        records = translate(payload, self._options, rejected)
        while chunk := list(itertools.islice(records, _INGEST_CHUNK)):
            self.store.ingest(chunk, rejected)
            if len(chunk) == _INGEST_CHUNK:
                await asyncio.sleep(0)  # let receivers and scrapes run between chunks
        if rejected.total:
            self._invalid.count(Signal.METRICS, rejected.total, rejected.summary())
        sent = count_items(payload) - rejected.total
        if sent > 0:
            self.telemetry.exporter_sent(self.name, Signal.METRICS, sent)

    async def exposition(self, openmetrics: bool) -> Body:
        """The current scrape body, rendered at most once per store change and format."""
        now = time.monotonic()
        if now - self._expired_at >= _EXPIRY_INTERVAL:  # a walk over every series: not per scrape
            self._expired_at = now
            self.store.expire()
        generation = self.store.generation
        cached = self._cache.get(openmetrics)
        if cached is not None and cached[0] == generation:
            return cached[1]
        key = (openmetrics, generation)
        pending = self._rendering.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._render(openmetrics))
            self._rendering[key] = pending
            pending.add_done_callback(lambda _: self._rendering.pop(key, None))
        body = await asyncio.shield(pending)
        self._cache[openmetrics] = (generation, body)
        return body

    def scrape_series(self) -> list[FamilySnapshot]:
        """This worker's series, for the supervisor's one scrape view (``--workers N``)."""
        now = time.monotonic()
        if now - self._expired_at >= _EXPIRY_INTERVAL:
            self._expired_at = now
            self.store.expire()
        return self.store.snapshot()

    async def _render(self, openmetrics: bool) -> Body:
        snapshot = self.store.snapshot()
        render = render_openmetrics if openmetrics else render_text
        if sum(len(f.series) for f in snapshot) < _INLINE_RENDER_SERIES:
            return render(snapshot, self.config.send_timestamps)
        return await asyncio.to_thread(render, snapshot, self.config.send_timestamps)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_scrape(scope, send, self.config.enable_open_metrics, self.exposition)


async def serve_scrape(
    scope: Scope,
    send: Send,
    enable_open_metrics: bool,
    exposition: Callable[[bool], Awaitable[Body]],
) -> None:
    """Answer a scrape on ``/metrics`` in the format the scraper asks for (and allowed)."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/metrics":
        await respond(send, 404, b"not found: metrics are served on /metrics\n", "text/plain")
        return
    if scope["method"] not in ("GET", "HEAD"):
        await respond(send, 405, b"use GET\n", "text/plain", [(b"allow", b"GET, HEAD")])
        return
    openmetrics = enable_open_metrics and wants_openmetrics(header(scope, b"accept"))
    body = await exposition(openmetrics)
    content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    await send_chunks(send, [] if scope["method"] == "HEAD" else body, content_type)


async def send_chunks(send: Send, body: Body, content_type: str) -> None:
    """One response streamed chunk by chunk, with its full length announced."""
    length = sum(len(chunk) for chunk in body)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in body:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _create(
    settings: CreateSettings, config: PrometheusConfig, signals: frozenset[Signal]
) -> PrometheusExporter:
    return PrometheusExporter(settings, config)


factory = exporter_factory("prometheus", PrometheusConfig, _create, frozenset({Signal.METRICS}))
