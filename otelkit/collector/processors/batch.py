"""``batch``: groups requests into larger ones and splits oversized ones, as upstream.

Requests are merged by appending their resource lists (no per-item work); a request
that arrives into an empty buffer is adopted as it is, without a copy. A batch leaves
when it reaches ``send_batch_size`` items or when ``timeout`` passes, in pieces of at
most ``send_batch_max_size`` items, each piece keeping the resource and scope of the
items it carries.

Backpressure (otelkit's addition): when the next consumer refuses a batch with a
retryable error, the batch is kept and offered again on the next tick. While such a
backlog exists and the processor holds ``max_pending_items`` or more, ``consume``
refuses new data with a retryable error, so the receiver pushes back to the sender
instead of the collector growing without bound. A permanent error drops the batch and
counts it (``otelcol_processor_dropped_*``). Shutdown flushes everything it holds.

A batch refused by one exporter of several (fan-out) is offered again to all of them,
as upstream: the exporters that took it the first time may see it twice.

Before an exporter that acknowledges only durably (a persistent sending queue, no queue
at all, the log store's commit mode) the processor must not answer senders first: there
``consume`` waits until the batch holding the request has been taken by the exporters
and passes on their answer, so "success" keeps meaning "on disk" (or "delivered"). A
refused batch is then not kept: its senders hear the refusal and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Self

from pydantic import Field, model_validator

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.pdata.split import append, split_off
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    Host,
    Processor,
    processor_factory,
)
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.memory import parsed_bytes
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.processor.batch")

# How often a refused batch is offered again when ``timeout`` is 0 (send immediately).
_RETRY_TICK = 0.2
# How long shutdown keeps offering held batches to a consumer that refuses them.
_SHUTDOWN_RETRY_SECONDS = 5.0


class BatchConfig(ComponentConfig):
    send_batch_size: int = Field(
        8192, ge=0, description="Items that trigger a send; 0 sends on the timeout only."
    )
    timeout: Duration = Field(
        0.2, description="Longest wait before a partial batch is sent; 0 sends at once."
    )
    send_batch_max_size: int = Field(
        0, ge=0, description="Largest batch sent; bigger ones are split. 0 means no limit."
    )
    max_pending_items: int | None = Field(
        None,
        ge=1,
        description=(
            "otelkit only: while the next consumer refuses batches, items held at which new "
            "data is refused with a retryable error. Default: twice the larger of "
            "send_batch_size and send_batch_max_size (at least 8192)."
        ),
    )

    @model_validator(mode="after")
    def _max_not_below_size(self) -> Self:
        if self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            raise ValueError(
                f"send_batch_max_size ({self.send_batch_max_size}) must be 0 (no limit) or at "
                f"least send_batch_size ({self.send_batch_size})"
            )
        return self

    @property
    def pending_bound(self) -> int:
        if self.max_pending_items is not None:
            return self.max_pending_items
        return 2 * max(self.send_batch_size, self.send_batch_max_size, 4096)


class BatchProcessor(Processor):
    """One per pipeline. Holds ``pending`` (being filled) and ``ready`` (to be sent)."""

    def __init__(
        self, settings: CreateSettings, config: BatchConfig, signal: Signal, next_: Consumer
    ) -> None:
        self._config = config
        self._signal = signal
        self._next = next_
        self._name = str(settings.id)
        self._telemetry = settings.telemetry
        self._bound = config.pending_bound
        self._pending: Payload = signal.new_request()
        self._pending_items = 0
        self._ready: deque[tuple[Payload, int, _Acks | None]] = deque()
        self._ready_items = 0
        self._sending = False
        self._blocked = False  # the next consumer refused the last offer; wait for a tick
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        # Senders wait for the exporters' answer when those acknowledge only durably.
        self._acknowledge_after_send = bool(settings.durable_downstream)
        self._waiting: list[asyncio.Future[None]] = []
        self._sample: Payload | None = None
        counter = settings.telemetry.counter
        self._size_triggers = counter(
            "otelcol_processor_batch_batch_size_trigger_send",
            "Batches sent because they reached send_batch_size",
            ("processor",),
        ).labels(self._name)
        self._timeout_triggers = counter(
            "otelcol_processor_batch_timeout_trigger_send",
            "Batches sent because the timeout passed",
            ("processor",),
        ).labels(self._name)

    @property
    def held_items(self) -> int:
        """Items accepted but not yet taken by the next consumer."""
        return self._pending_items + self._ready_items

    def held_bytes(self) -> int:
        return parsed_bytes(self.held_items, self._sample)

    async def start(self, host: Host) -> None:
        tick = self._config.timeout or _RETRY_TICK
        self._ticker = asyncio.create_task(self._tick_forever(tick), name=f"batch-{self._name}")

    async def consume(self, payload: Payload) -> None:
        items = count_items(payload)
        if items == 0:
            return
        if self._closed or (self._ready_items and self.held_items >= self._bound):
            self._telemetry.processor_refused(self._name, self._signal, items)
            reason = "shutting down" if self._closed else f"holding {self.held_items} items"
            raise RetryableError(f"processor {self._name}: {reason}", retry_after=1.0)
        self._add(payload, items)
        answered: asyncio.Future[None] | None = None
        if self._acknowledge_after_send:
            answered = asyncio.get_running_loop().create_future()
            self._waiting.append(answered)
        if self._config.timeout == 0:
            self._cut(whole=True)
        elif self._config.send_batch_size and self._pending_items >= self._config.send_batch_size:
            self._size_triggers.inc()
            self._cut(whole=self._acknowledge_after_send)
        if self._ready and not self._blocked:
            await self._send_ready()
        if answered is not None:
            await answered

    async def shutdown(self) -> None:
        self._closed = True
        self._stop.set()
        if self._ticker is not None:
            # A tick may be offering a batch to a slow consumer; do not wait forever.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._ticker, _SHUTDOWN_RETRY_SECONDS)
        self._cut(whole=True)
        deadline = time.monotonic() + _SHUTDOWN_RETRY_SECONDS
        while self._ready and time.monotonic() < deadline:
            await self._send_ready()
            if self._ready:
                await asyncio.sleep(_RETRY_TICK)
        while self._ready:
            _, items, acks = self._ready.popleft()
            self._ready_items -= items
            why = "the next consumer still refused it at shutdown"
            self._drop(items, why)
            if acks is not None:
                acks.piece_done(RetryableError(f"processor {self._name}: {why}"))

    # Internals -----------------------------------------------------------------------
    def _add(self, payload: Payload, items: int) -> None:
        if self._pending_items == 0:
            self._pending = payload
        else:
            append(self._pending, payload)  # ~1.6x faster than MergeFrom of the request
        self._pending_items += items
        self._sample = payload

    def _cut(self, *, whole: bool) -> None:
        """Move pending items to ``ready``: all of them, or while a full batch remains."""
        limit = self._config.send_batch_max_size
        size = self._config.send_batch_size
        pieces: list[tuple[Payload, int]] = []
        while self._pending_items and (whole or self._pending_items >= size):
            if limit and self._pending_items > limit:
                piece, items = split_off(self._pending, limit), limit
            else:
                piece, items = self._pending, self._pending_items
                self._pending = self._signal.new_request()
            self._pending_items -= items
            pieces.append((piece, items))
            self._ready_items += items
        acks = _Acks(self._waiting, len(pieces)) if self._waiting and pieces else None
        if acks is not None:
            self._waiting = []
        self._ready.extend((piece, items, acks) for piece, items in pieces)

    async def _send_ready(self) -> None:
        """Offer ready batches in order; stop at the first retryable refusal."""
        if self._sending:
            return
        self._sending = True
        try:
            while self._ready:
                batch, items, acks = self._ready[0]
                error: Exception | None = None
                try:
                    await self._next.consume(batch)
                except RetryableError as exc:
                    if acks is None:  # nobody waits: keep the batch and offer it again
                        log.debug("processor %s: next consumer refused (%s); will retry",
                                  self._name, exc)  # fmt: skip
                        self._blocked = True
                        return
                    error = exc  # its senders retry
                except PermanentError as exc:
                    self._drop(items, str(exc))
                    error = exc
                except Exception as exc:
                    log.exception("processor %s: next consumer failed", self._name)
                    self._drop(items, f"unexpected error: {exc}")
                    error = RetryableError(f"processor {self._name}: {exc}")
                self._ready.popleft()
                self._ready_items -= items
                self._blocked = False
                if acks is not None:
                    acks.piece_done(error)
        finally:
            self._sending = False

    def _drop(self, items: int, why: str) -> None:
        self._telemetry.processor_dropped(self._name, self._signal, items)
        log.error("processor %s: dropped %d %s: %s", self._name, items, self._signal.item_name, why)

    async def _tick_forever(self, interval: float) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._pending_items:
                self._timeout_triggers.inc()
                self._cut(whole=True)
            if self._ready:
                await self._send_ready()


class _Acks:
    """The senders whose requests went into one cut, answered once every piece is taken."""

    __slots__ = ("error", "futures", "pieces")

    def __init__(self, futures: list[asyncio.Future[None]], pieces: int) -> None:
        self.futures = futures
        self.pieces = pieces
        self.error: Exception | None = None

    def piece_done(self, error: Exception | None) -> None:
        self.error = self.error or error
        self.pieces -= 1
        if self.pieces:
            return
        for future in self.futures:
            if future.done():  # its sender went away
                continue
            if self.error is None:
                future.set_result(None)
            else:
                future.set_exception(self.error)


def _create(
    settings: CreateSettings, config: BatchConfig, signal: Signal, next_consumer: Consumer
) -> BatchProcessor:
    return BatchProcessor(settings, config, signal, next_consumer)


factory = processor_factory("batch", BatchConfig, _create, frozenset(Signal))
