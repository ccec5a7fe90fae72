"""The Sentry exporter: conversion on a worker thread, envelopes through the shared queue.

Where work happens, and why:

* The event loop serves every receiver and the health check, so nothing CPU-heavy runs
  on it. ``consume`` hands each batch to one conversion thread (a single worker, so
  batches are converted and queued in the order they came) and awaits the result:
  exception span events and error log records become encoded error-event envelopes
  there (stack trace parsing, scrubbing, JSON), and spans come back as references for
  the :class:`TraceAssembler`. At most :data:`MAX_PENDING_BATCHES` batches wait for the
  thread; beyond that ``consume`` refuses with a retryable error, so senders back off
  instead of the backlog growing without bound.
* Back on the loop, a batch's envelopes are queued all together or not at all, before
  any span is held, so a full queue refuses the whole batch (the sender retries) and
  nothing is half-taken.
* A background task takes traces whose ``trace_wait`` is over from the assembler and
  has the same thread build their transactions (:class:`TransactionBuilder`) and
  envelopes; they join the same queue. Compressing a large envelope for sending runs
  on a thread too.
* The queue (the shared exporter helper) holds *envelopes*, the retry unit: a 5xx
  retries that one envelope, so nothing Sentry accepted is sent twice.
* Categories Sentry rate-limits are not even built while limited (counted as
  ``rate_limited``); envelopes already queued when a limit arrives are dropped at send
  time and counted the same way.

Counting: transaction envelopes count their spans (``otelcol_exporter_sent_spans``),
log envelopes their records; an error event counts the log record it came from unless
that record also went out as a log item. Spans of unsampled traces are counted in
``otelkit_sentry_spans_sampled_out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sentry_sdk.consts import EndpointType
from sentry_sdk.utils import Dsn

from otelkit.collector.exporters.sentry.common import (
    SERVER,
    ResourceInfo,
    attributes,
    severity_of,
    span_shape,
)
from otelkit.collector.exporters.sentry.config import SEVERITY_FLOOR, SentryConfig
from otelkit.collector.exporters.sentry.events import (
    Event,
    EventContext,
    is_finding,
    log_error_event,
    span_error_events,
)
from otelkit.collector.exporters.sentry.logs import MAX_LOGS_PER_ITEM, log_item
from otelkit.collector.exporters.sentry.transactions import (
    SpanRef,
    TraceAssembler,
    Transaction,
    TransactionBuilder,
    attribute_flag,
)
from otelkit.collector.exporters.sentry.transport import (
    MAX_ITEM_BYTES,
    USER_AGENT,
    DroppedError,
    Envelope,
    SentryTransport,
    event_envelope,
    log_envelope,
)
from otelkit.collector.pdata.redact import Redactor
from otelkit.collector.pdata.signals import Payload, Signal, signal_of
from otelkit.collector.runtime.component import CreateSettings, Host, Status
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.exporterhelper import QueuedExporter, QueuedItem
from otelkit.collector.runtime.listeners import Destination
from otelkit.collector.runtime.memory import TYPICAL_SPAN_BYTES
from otelkit.collector.runtime.scrub import Scrubber
from otelkit.collector.runtime.tls import httpx_options
from otelkit.collector.runtime.worker import WorkerThread

log = logging.getLogger("otelkit.exporter.sentry")

#: Batches that may wait for the conversion thread before ``consume`` refuses new ones.
MAX_PENDING_BATCHES = 8
#: Traces built per hand-over to the conversion thread by the flush loop.
TRACES_PER_BUILD = 50

_OTLP_PATHS = {Signal.TRACES: "integration/otlp/v1/traces", Signal.LOGS: "integration/otlp/v1/logs"}
_OTLP_CATEGORY = {Signal.TRACES: "span", Signal.LOGS: "log_item"}


class SentryExporter(QueuedExporter):
    def __init__(
        self, settings: CreateSettings, config: SentryConfig, signals: frozenset[Signal]
    ) -> None:
        super().__init__(settings, config)
        self.config = config
        self.signals = signals
        self.enabled = bool(config.dsn)
        self.scrubber = Scrubber(
            config.scrub.extra_keys, config.scrub.extra_patterns, pii=config.send_default_pii
        )
        self._otlp_redactor = Redactor(self.scrubber)
        self.event_context = EventContext(self.scrubber, config.send_default_pii, time.time)
        self.assembler = TraceAssembler(
            config.trace_wait,
            config.transactions.max_buffered_spans,
            incomplete_wait=config.transactions.incomplete_wait,
        )
        self._dsn = Dsn(config.dsn) if self.enabled else None
        keep_rules = [attribute_flag(config.transactions.keep_trace_attributes)]
        self.builder = TransactionBuilder(
            self.scrubber,
            config.traces_sample_rate,
            keep_rules,
            config.transactions.max_spans,
            self._dsn.public_key if self._dsn else "",
            self.event_context,
        )
        self.transport: SentryTransport | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._resources: dict[int, ResourceInfo] = {}
        self._full_logged_until = 0.0
        self._converter = WorkerThread(self.name, MAX_PENDING_BATCHES)
        self._event_floor = SEVERITY_FLOOR[config.min_event_level]
        self._log_floor = SEVERITY_FLOOR[config.logs_level]
        self._counters()

    @property
    def mutates_data(self) -> bool:  # type: ignore[override]
        """Without a DSN it takes nothing: a fan-out need not copy each batch for it."""
        return self.enabled

    def _counters(self) -> None:
        t = self.telemetry
        self._envelopes = t.counter(
            "otelkit_sentry_envelopes",
            "Sentry envelopes by category and outcome",
            ("exporter", "category", "outcome"),
        )
        self._sampled_out = t.counter(
            "otelkit_sentry_spans_sampled_out",
            "Spans not sent to Sentry because their trace was not sampled",
            ("exporter",),
        )
        self._evicted = t.counter(
            "otelkit_sentry_traces_evicted_early",
            "Traces sent before trace_wait ended to keep within max_buffered_spans",
            ("exporter",),
        )

    def destinations(self) -> list[Destination]:
        if not self.enabled:
            return [Destination("nothing", "Sentry (off: no DSN; set SENTRY_DSN)")]
        assert self._dsn is not None
        # The DSN's user part is the project key: only the host and project are shown.
        where = f"{self._dsn.scheme}://{self._dsn.netloc} (project {self._dsn.project_id})"
        return [Destination("errors, transactions and logs", f"Sentry {where}")]

    def held_bytes(self) -> int:
        """Queued envelopes and the spans of traces still gathering (for the memory limiter)."""
        return super().held_bytes() + self.assembler.buffered * TYPICAL_SPAN_BYTES

    # Lifecycle -------------------------------------------------------------------------
    async def start(self, host: Host) -> None:
        if not self.enabled:
            worker = self.settings.worker
            if worker is None or worker.index == 0:  # said once per collector, not per worker
                log.warning(
                    "exporter %s: no DSN (exporters.%s.dsn is empty, e.g. SENTRY_DSN is not "
                    "set): Sentry export is off and data sent to it is discarded",
                    self.name,
                    self.name,
                )
            host.report_status(self.settings.label, Status.OK, "disabled: no DSN")
            return
        if self.config.sending_queue.storage and self.config.mode == "envelope":
            log.warning(
                "exporter %s: sending_queue.storage persists OTLP batches only (mode: otlp); "
                "Sentry envelopes are held in memory and a restart loses the queued ones",
                self.name,
            )
        await super().start(host)
        if self.config.mode == "envelope" and Signal.TRACES in self.signals:
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"{self.name}-traces")

    async def start_sending(self, host: Host) -> None:
        assert self._dsn is not None
        auth = self._dsn.to_auth(client=USER_AGENT)
        if self.config.mode == "otlp":
            base = auth.get_api_url(EndpointType.OTLP_TRACES).removesuffix(
                _OTLP_PATHS[Signal.TRACES] + "/"
            )
            header = f"sentry sentry_key={self._dsn.public_key}"
        else:
            base, header = auth.get_api_url(), auth.to_header()
        self.transport = SentryTransport(
            base,
            header,
            timeout=self.config.timeout,
            compress=self.config.compression == "gzip",
            client_options=httpx_options(self.config.tls),
        )

    async def shutdown(self) -> None:
        if not self.enabled:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            await self._ship_traces(self.assembler.drain())
        await super().shutdown()
        self._converter.close()

    async def stop_sending(self) -> None:
        if self.transport is not None:
            await self.transport.close()

    # Intake ----------------------------------------------------------------------------
    async def consume(self, payload: Payload) -> None:
        if not self.enabled:
            return
        if self.config.mode == "otlp":
            await self._converter.submit(self._otlp_redactor.redact, payload)
            await super().consume(payload)
            return
        if isinstance(payload, ExportTraceServiceRequest):
            items, refs = await self._converter.submit(self._convert_traces, payload)
            await self._enqueue_batch(items)
            for trace in self.assembler.add(refs):
                self._evicted.labels(self.name).inc()
                await self._ship_traces([trace])
        elif isinstance(payload, ExportLogsServiceRequest):
            await self._enqueue_batch(await self._converter.submit(self._convert_logs, payload))

    # Conversion (on the conversion thread) ----------------------------------------------
    def _convert_traces(
        self, payload: ExportTraceServiceRequest
    ) -> tuple[list[QueuedItem], list[SpanRef]]:
        refs: list[SpanRef] = []
        errored: list[SpanRef] = []
        errors_limited = self._limited("error")
        for rs in payload.resource_spans:
            resource = self._resource(rs.resource)
            for ss in rs.scope_spans:
                scope = ss.scope.name
                for span in ss.spans:
                    ref = SpanRef(span, resource, scope)
                    refs.append(ref)
                    if span.events and _has_exception(span):
                        errored.append(ref)
        if errored and errors_limited:
            limited = sum(1 for r in errored for e in r.span.events if e.name == "exception")
            self._envelopes.labels(self.name, "error", "rate_limited").inc(limited)
            errored = []
        events = self._span_events(errored, refs) if errored else []
        items = [self._event_item(event, Signal.TRACES, 0) for event in events]
        return [item for item in items if item is not None], refs

    def _span_events(self, errored: list[SpanRef], refs: list[SpanRef]) -> list[Event]:
        """Error events; each also gets the request and name of the SERVER span it ran
        under when that span is in the same batch (usual with a batch processor)."""
        by_id = {ref.span.span_id: ref.span for ref in refs}
        events: list[Event] = []
        for ref in errored:
            span = ref.span
            attrs = attributes(span.attributes)
            shape = span_shape(span, attrs, self.scrubber)
            server = _enclosing_server(span, by_id)
            if server is span:
                context: tuple[Any, Any] | None = (attrs, shape)
            elif server is not None:
                server_attrs = attributes(server.attributes)
                context = (server_attrs, span_shape(server, server_attrs, self.scrubber))
            else:
                context = None
            events.extend(
                span_error_events(
                    span, attrs, shape, ref.resource, ref.scope, self.event_context, context
                )
            )
        return events

    def _convert_logs(self, payload: ExportLogsServiceRequest) -> list[QueuedItem]:
        items: list[QueuedItem] = []
        batch: list[dict[str, Any]] = []
        errors_limited, logs_limited = self._limited("error"), self._limited("log_item")
        dropped_logs = dropped_events = 0
        now = time.time()
        for rl in payload.resource_logs:
            resource = self._resource(rl.resource)
            for sl in rl.scope_logs:
                scope = sl.scope.name
                for record in sl.log_records:
                    severity = severity_of(record)
                    in_logs = self.config.logs and severity >= self._log_floor  # counted with them
                    if in_logs and logs_limited:
                        dropped_logs += 1
                    elif in_logs:
                        batch.append(log_item(record, resource, scope, self.scrubber, now))
                    if not (severity >= self._event_floor or self._finding(record)):
                        continue
                    if errors_limited:
                        dropped_events += 1
                        dropped_logs += 0 if in_logs else 1
                        continue
                    event = log_error_event(record, resource, scope, self.event_context)
                    item = self._event_item(event, Signal.LOGS, 0 if in_logs else 1)
                    if item is not None:
                        items.append(item)
        for start in range(0, len(batch), MAX_LOGS_PER_ITEM):
            chunk = batch[start : start + MAX_LOGS_PER_ITEM]
            items.append(QueuedItem(Signal.LOGS, len(chunk), log_envelope(chunk)))
        if dropped_logs:
            self.telemetry.exporter_send_failed(
                self.name, Signal.LOGS, dropped_logs, "rate_limited"
            )
        if logs_limited and dropped_logs:
            self._envelopes.labels(self.name, "log_item", "rate_limited").inc()
        if dropped_events:
            self._envelopes.labels(self.name, "error", "rate_limited").inc(dropped_events)
        return items

    async def _enqueue_batch(self, items: list[QueuedItem]) -> None:
        """Queue one batch's envelopes together; a batch larger than the whole queue could
        never fit, so its excess is dropped and counted instead of refused forever."""
        capacity = self.helper_config.sending_queue.queue_size
        if len(items) > capacity and self.helper_config.sending_queue.enabled:
            for item in items[capacity:]:
                self._count_drop(item.data.category, item.signal, item.items, "queue_full")
            log.warning(
                "exporter %s: one batch made %d envelopes, more than sending_queue.queue_size "
                "(%d); the rest were dropped",
                self.name,
                len(items),
                capacity,
            )
            items = items[:capacity]
        await self.enqueue(items)

    def _finding(self, record: Any) -> bool:
        return self.config.findings and is_finding(record)

    def _event_item(self, event: Event, signal: Signal, count: int) -> QueuedItem | None:
        envelope = event_envelope(event, "event")
        if envelope.size > MAX_ITEM_BYTES:
            envelope = event_envelope(_shrink_event(event), "event")
            if envelope.size > MAX_ITEM_BYTES:
                self._count_drop("error", signal, count, "too_large")
                return None
        return QueuedItem(signal, count, envelope)

    def _resource(self, resource: Any) -> ResourceInfo:
        """Resource info, cached by the resource's serialized bytes (few distinct ones)."""
        key = hash(resource.SerializeToString(deterministic=True))
        info = self._resources.get(key)
        if info is None:
            if len(self._resources) > 1000:
                self._resources.clear()
            info = ResourceInfo.of(
                resource, self.scrubber, self.config.environment, self.config.release
            )
            self._resources[key] = info
        return info

    # Traces ----------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        tick = min(1.0, max(0.02, self.config.trace_wait / 10))
        while True:
            await asyncio.sleep(tick)
            try:
                await self._ship_traces(self.assembler.due())
            except Exception:  # keep flushing whatever one trace did
                log.exception("exporter %s: flushing traces failed", self.name)

    async def _ship_traces(self, traces: list[list[SpanRef]]) -> None:
        """Build on the conversion thread, a few traces at a time; queue on the loop."""
        for start in range(0, len(traces), TRACES_PER_BUILD):
            chunk = traces[start : start + TRACES_PER_BUILD]
            for item in await self._converter.call(self._build_traces, chunk):
                try:
                    await self.enqueue([item])
                except RetryableError:  # counted by the helper (enqueue_failed)
                    self._log_queue_full()

    def _build_traces(self, traces: list[list[SpanRef]]) -> list[QueuedItem]:
        items: list[QueuedItem] = []
        for trace in traces:
            try:
                built = self.builder.build(trace)
            except Exception:  # malformed data must not stop the flush loop
                log.exception("exporter %s: could not build transactions for a trace", self.name)
                self._count_drop("transaction", Signal.TRACES, len(trace), "invalid")
                continue
            if built.sampled_out:
                self._sampled_out.labels(self.name).inc(built.sampled_out)
            if built.trimmed:
                self.telemetry.exporter_send_failed(
                    self.name, Signal.TRACES, built.trimmed, "trimmed"
                )
            for transaction in built.transactions:
                item = self._transaction_item(transaction)
                if item is not None:
                    items.append(item)
        return items

    def _log_queue_full(self) -> None:
        now = time.monotonic()
        if now >= self._full_logged_until:
            self._full_logged_until = now + 60.0
            log.warning(
                "exporter %s: sending queue is full; transactions are dropped and "
                "counted (otelcol_exporter_enqueue_failed_spans)",
                self.name,
            )

    def _transaction_item(self, transaction: Transaction) -> QueuedItem | None:
        if self._limited("transaction"):
            self._count_drop("transaction", Signal.TRACES, transaction.spans, "rate_limited")
            return None
        envelope = event_envelope(transaction.event, "transaction", transaction.trace_header)
        spans = transaction.event["spans"]
        while envelope.size > MAX_ITEM_BYTES and spans:
            keep = len(spans) // 2
            dropped = len(spans) - keep
            del spans[keep:]
            transaction.spans -= dropped
            self.telemetry.exporter_send_failed(self.name, Signal.TRACES, dropped, "trimmed")
            note = transaction.event["contexts"].setdefault(
                "otelkit", {"type": "otelkit", "spans_dropped": 0}
            )
            note["spans_dropped"] += dropped
            note["reason"] = "transaction over Sentry's 1 MB item limit"
            envelope = event_envelope(transaction.event, "transaction", transaction.trace_header)
        if envelope.size > MAX_ITEM_BYTES:
            self._count_drop("transaction", Signal.TRACES, transaction.spans, "too_large")
            return None
        return QueuedItem(Signal.TRACES, transaction.spans, envelope)

    # Sending ---------------------------------------------------------------------------
    async def send_item(self, item: QueuedItem) -> None:
        assert self.transport is not None
        envelope: Envelope = item.data
        try:
            await self.transport.send(envelope)
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            if reason:
                self._envelopes.labels(self.name, envelope.category, reason).inc()
            raise
        self._envelopes.labels(self.name, envelope.category, "sent").inc()

    async def send(self, payload: Payload) -> None:
        """``mode: otlp``: forward the request to Sentry's OTLP endpoint."""
        assert self.transport is not None
        signal = signal_of(payload)
        category = _OTLP_CATEGORY.get(signal, "default")
        wait = self.transport.rate_limits.limited(category)
        if wait:
            raise DroppedError(f"{category} is rate limited for {wait:.0f}s", "rate_limited")
        url = self.transport.url + _OTLP_PATHS[signal]
        body = await self._converter.call(payload.SerializeToString)
        await self.transport.post(body, "application/x-protobuf", category, url=url)

    # Helpers ---------------------------------------------------------------------------
    def _limited(self, category: str) -> bool:
        return self.transport is not None and self.transport.rate_limits.limited(category) > 0

    def _count_drop(self, category: str, signal: Signal, items: int, reason: str) -> None:
        self.telemetry.exporter_send_failed(self.name, signal, items, reason)
        self._envelopes.labels(self.name, category, reason).inc()


def _has_exception(span: Any) -> bool:
    return any(event.name == "exception" for event in span.events)


def _enclosing_server(span: Any, by_id: dict[bytes, Any]) -> Any:
    """The nearest SERVER span at or above ``span`` within the batch, or None."""
    current = span
    for _ in range(len(by_id) + 1):
        if current.kind == SERVER:
            return current
        current = by_id.get(current.parent_span_id)
        if current is None:
            return None
    return None


def _shrink_event(event: Event) -> Event:
    """Cut what makes an error event too large: otel context, frames beyond 50 per value."""
    event["contexts"].get("otel", {}).pop("attributes", None)
    for value in event.get("exception", {}).get("values", []):
        frames = value.get("stacktrace", {}).get("frames")
        if frames and len(frames) > 50:
            value["stacktrace"]["frames"] = frames[:25] + frames[-25:]
    event.setdefault("extra", {})["otelkit.trimmed"] = "event over Sentry's 1 MB item limit"
    return event
