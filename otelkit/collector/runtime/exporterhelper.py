"""The one exporter helper: bounded queue, disk persistence, batching, retries.

Every exporter subclasses :class:`QueuedExporter` and implements ``send``; queueing,
batching, backoff with jitter, ``Retry-After``, the retryable/permanent split and the
counting of every dropped item live here and nowhere else.

Semantics, matching the upstream ``exporterhelper``:

* ``consume`` enqueues and returns; a full queue raises :class:`RetryableError`, which the
  receiver turns into ``UNAVAILABLE`` / 503 so the sender retries (nothing is lost).
* With ``sending_queue.storage`` set, ``consume`` returns only once the request is on
  disk (written, fsynced, renamed, directory fsynced: :mod:`durable`), so the sender's
  success means "survives a crash". The queue then keeps only the file's name in memory;
  the request is read back when its turn comes, and the file is removed once it is sent
  or dropped.
* ``sending_queue.batch`` batches inside the helper, *after* the queue (and so after the
  disk): requests taken from the queue are joined until ``min_size`` items or
  ``flush_timeout``, and cut at ``max_size`` items. Its files are removed only once every
  batch carrying part of them is finished.
* ``send`` raising :class:`PermanentError` drops the batch (counted, reason
  ``permanent``); :class:`InvalidDataError`, or an error that depends on the data
  (``ValueError``, ``OverflowError``, ...), makes the helper send the batch in halves
  until the items that fail are found: those are dropped (reason ``invalid``) and every
  other item is delivered. Until the destination takes a piece this costs at most 64
  sends and one per 32 items (it may refuse everything; what is left is then dropped
  whole); once it has,
  fewer than two sends an item. Anything else is retried with exponential backoff until
  ``max_elapsed_time`` (then dropped, reason ``retry_exhausted``).
* Shutdown drains within ``drain_timeout``. With storage it stops as soon as the
  destination is failing, since everything waiting is already on disk.
* An exporter whose retry unit is not a whole request (one Sentry envelope per event)
  converts in ``consume`` and queues :class:`QueuedItem` objects with :meth:`enqueue`;
  they are sent by ``send_item``, retried and counted the same way, and held in memory
  only. A :class:`PermanentError` may carry ``reason`` (the ``send_failed`` label) and
  ``logged`` (the exporter has already said why, so the helper does not log each drop).
* :meth:`QueuedExporter.shutdown_handing_over` shuts down like ``shutdown`` but returns
  the in-memory requests it could not deliver instead of dropping them, so that an owner
  with other destinations (``loadbalancing``) sends them elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pydantic import Field, model_validator

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.pdata.split import append, split_in_pieces, split_off
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Exporter,
    Host,
    WorkerRole,
)
from otelkit.collector.runtime.durable import DISK, Disk
from otelkit.collector.runtime.errors import (
    InvalidDataError,
    OverloadedError,
    PermanentError,
    RetryableError,
)
from otelkit.collector.runtime.memory import parsed_bytes
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.exporter")

# Errors that come from what the data holds, not from where it goes: retrying the same
# data cannot help, so the helper looks for the items that cause them.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDataError,
    ValueError,
    ArithmeticError,
    LookupError,
    TypeError,
    RecursionError,
)
# How often shutdown looks whether the queue has drained (or the destination fails).
_DRAIN_POLL = 0.05
# Sends one batch may cost while its invalid items are looked for and the destination has
# taken none of it (it may refuse everything): 64, and one more per 32 items, so that a
# large batch is halved into pieces small enough (about 64 items) for one free of bad items
# to be found where they are spread through it.
_ISOLATION_SENDS = 64
_ISOLATION_ITEMS_PER_SEND = 32
# Memory an item queued with ``enqueue`` is assumed to take when it does not say.
_DEFAULT_ITEM_BYTES = 2048
# Invalid items are always counted; their log line is repeated at most this often.
_INVALID_LOG_INTERVAL = 60.0


class BatchSettings(ComponentConfig):
    """``sending_queue.batch``: batching after the queue, as upstream."""

    flush_timeout: Duration = Field(0.2, gt=0, description="Longest wait for a batch to fill.")
    min_size: int = Field(8192, ge=0, description="Items that make a batch leave at once.")
    max_size: int = Field(0, ge=0, description="Largest batch in items; 0 means no limit.")
    sizer: str = Field("items", pattern="^items$", description="Batches count items.")

    @model_validator(mode="after")
    def _max_not_below_min(self) -> Self:
        if self.max_size and self.max_size < self.min_size:
            raise ValueError(
                f"max_size ({self.max_size}) must be 0 (no limit) or at least min_size "
                f"({self.min_size})"
            )
        return self


class QueueSettings(ComponentConfig):
    enabled: bool = True
    num_consumers: int = Field(10, ge=1, le=1000)
    queue_size: int = Field(1000, ge=1, description="Batches the queue holds.")
    storage: str | None = Field(
        None, description="Directory for a persistent queue that survives restarts."
    )
    drain_timeout: Duration = Field(
        10.0, description="How long shutdown waits for the queue to empty (otelkit only)."
    )
    batch: BatchSettings | None = Field(
        None, description="Batch after the queue (`batch: {}` for the defaults)."
    )

    @model_validator(mode="before")
    @classmethod
    def _present_batch_key_enables(cls, data: Any) -> Any:
        """``batch:`` with no value (YAML null) means "batch with the defaults", as upstream."""
        if isinstance(data, dict) and "batch" in data and data["batch"] is None:
            return {**data, "batch": {}}
        return data

    @model_validator(mode="after")
    def _batch_needs_the_queue(self) -> Self:
        if self.batch is not None and not self.enabled:
            raise ValueError("batch needs the queue: set enabled: true or remove batch")
        return self


class RetrySettings(ComponentConfig):
    enabled: bool = True
    initial_interval: Duration = 5.0
    max_interval: Duration = 30.0
    max_elapsed_time: Duration = Field(300.0, description="0 retries forever.")
    multiplier: float = Field(1.5, ge=1.0)
    randomization_factor: float = Field(0.5, ge=0.0, le=1.0)


class ExporterHelperConfig(ComponentConfig):
    """Keys shared by every queued exporter's config."""

    timeout: Duration = 5.0
    sending_queue: QueueSettings = QueueSettings()
    retry_on_failure: RetrySettings = RetrySettings()


@dataclass(frozen=True)
class QueuedItem:
    """One retry unit an exporter built itself; ``items`` is what it counts as sent.

    ``size`` is about how many bytes it takes in memory (0: not known).
    """

    signal: Signal
    items: int
    data: Any
    size: int = 0


_Data = Payload | QueuedItem


def _signal_and_items(data: _Data) -> tuple[Signal, int]:
    if isinstance(data, QueuedItem):
        return data.signal, data.items
    return signal_of(data), count_items(data)


@dataclass(eq=False, slots=True)
class _Entry:
    """One accepted request or item, from ``consume`` until it is sent or dropped."""

    signal: Signal
    items: int
    data: _Data | None  # None while it is only on disk
    path: Path | None = None
    pieces: int = 0  # batches (sent or pending) holding part of it, not finished


@dataclass(slots=True)
class _Unit:
    """What one send carries: a request (perhaps a batch of several entries) or an item."""

    data: _Data
    signal: Signal
    items: int
    entries: list[_Entry]


@dataclass(slots=True)
class _Isolation:
    """The search for the invalid items of one batch: the pieces refused for their data
    wait in ``refused`` to be halved, breadth first."""

    sends_left: int
    accepted: bool = False  # the destination took a piece: it does not refuse everything
    refused: deque[tuple[_Data, BaseException]] = field(default_factory=deque)

    def may_split(self) -> bool:
        return self.accepted or self.sends_left >= 2

    @classmethod
    def of(cls, items: int) -> _Isolation:
        return cls(_ISOLATION_SENDS + items // _ISOLATION_ITEMS_PER_SEND)


@dataclass(slots=True)
class _Pending:
    """A batch being filled: the joined request and the entries that went into it."""

    payload: Payload
    items: int
    deadline: float
    entries: list[_Entry] = field(default_factory=list)


class InvalidItems:
    """Counts items an exporter drops because they cannot be exported as they are
    (``otelcol_exporter_send_failed_*{reason="invalid"}``), logging why at most once a
    minute so that a stream of bad points does not flood the log."""

    def __init__(self, telemetry: SelfTelemetry, exporter: str) -> None:
        self._telemetry = telemetry
        self._exporter = exporter
        self._logged_at = float("-inf")

    def count(self, signal: Signal, items: int, why: str) -> None:
        self._telemetry.exporter_send_failed(self._exporter, signal, items, "invalid")
        now = time.monotonic()
        if now - self._logged_at >= _INVALID_LOG_INTERVAL:
            self._logged_at = now
            log.warning(
                "exporter %s: dropped %d invalid %s (%s); later drops are counted in "
                "otelcol_exporter_send_failed_%s_total{reason=\"invalid\"}",
                self._exporter, items, signal.item_name, why, signal.item_name,
            )  # fmt: skip


class Backoff:
    """Exponential backoff with jitter, honouring a server's ``Retry-After``."""

    def __init__(self, settings: RetrySettings) -> None:
        self._settings = settings
        self._interval = settings.initial_interval
        self._started = time.monotonic()

    def next_wait(self, retry_after: float | None) -> float | None:
        """Seconds to wait before the next try, or None when the time is used up."""
        s = self._settings
        if retry_after is not None:
            wait = retry_after
        else:
            jitter = s.randomization_factor * self._interval
            wait = self._interval + random.uniform(-jitter, jitter)
            self._interval = min(self._interval * s.multiplier, s.max_interval)
        elapsed = time.monotonic() - self._started
        if s.max_elapsed_time and elapsed + wait > s.max_elapsed_time:
            return None
        return max(wait, 0.0)


class QueuedExporter(Exporter):
    """Base of every exporter: subclasses implement :meth:`send` (and maybe start/stop)."""

    def __init__(
        self, settings: CreateSettings, config: ExporterHelperConfig, *, disk: Disk = DISK
    ) -> None:
        self.settings = settings
        self.helper_config = config
        self.telemetry = settings.telemetry
        self.name = str(settings.id)
        queue = config.sending_queue
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._ready: asyncio.Queue[_Unit] = asyncio.Queue(maxsize=queue.num_consumers)
        self._capacity = queue.queue_size
        self._store = (
            _DiskStore(Path(queue.storage), self.name, disk, settings.worker)
            if queue.storage
            else None
        )
        self._open: set[_Entry] = set()  # accepted and not finished
        self._pending: dict[Signal, _Pending] = {}
        self._saving = 0  # requests being written to disk, already given room
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        self._abandon = asyncio.Event()
        self._failing = False  # the last send attempt failed and is waiting to retry
        self._held_items = 0  # items of requests in memory (queued, batching, sending)
        self._held_item_bytes = 0  # bytes of QueuedItems in memory
        self._sample: Payload | None = None  # the newest request, to size held items by
        self._invalid = InvalidItems(settings.telemetry, self.name)
        self._handing_over = False  # shutdown keeps what is not delivered for the owner
        self._unsent: list[Payload] = []

    async def send(self, payload: Payload) -> int | None:
        """Deliver one batch. Raise PermanentError when retrying cannot help.

        Return how many of its items the exporter dropped itself (and counted with
        :meth:`count_invalid`); the helper counts the rest as sent.
        """
        raise NotImplementedError

    async def send_item(self, item: QueuedItem) -> None:
        """Deliver one item queued with :meth:`enqueue`."""
        raise NotImplementedError

    async def start_sending(self, host: Host) -> None:
        """Open connections; called by :meth:`start` before the queue consumers run."""

    async def stop_sending(self) -> None:
        """Close connections; called once the queue is drained or abandoned."""

    @property
    def acknowledges_durably(self) -> bool:
        """Whether ``consume`` returns only once the data is on disk or delivered."""
        queue = self.helper_config.sending_queue
        return not queue.enabled or queue.storage is not None

    def held_bytes(self) -> int:
        """Memory the data waiting in this exporter takes (requests on disk take none)."""
        return parsed_bytes(self._held_items, self._sample) + self._held_item_bytes

    def queue_size(self) -> int:
        """Requests and items accepted and not yet sent or dropped."""
        return len(self._open)

    def count_invalid(self, signal: Signal, items: int, why: str) -> None:
        """Count items dropped because they cannot be exported as they are."""
        self._invalid.count(signal, items, why)

    # Component -----------------------------------------------------------------------
    async def start(self, host: Host) -> None:
        await self.start_sending(host)
        if self._store is not None:
            for path, signal, items in await asyncio.to_thread(self._store.waiting):
                self._accept(_Entry(signal, items, None, path))
            self._report_queue_all()
        queue = self.helper_config.sending_queue
        if queue.enabled:
            worker = self._send_batches if queue.batch is not None else self._send_requests
            self._tasks = [
                asyncio.create_task(worker(), name=f"{self.name}-sender-{i}")
                for i in range(queue.num_consumers)
            ]
            if queue.batch is not None:
                batcher = self._batch_forever(queue.batch)
                self._tasks.append(asyncio.create_task(batcher, name=f"{self.name}-batcher"))

    async def consume(self, payload: Payload) -> None:
        if not self.helper_config.sending_queue.enabled:
            await self._send_with_retry(payload, raise_on_failure=True)
            return
        signal, items = signal_of(payload), count_items(payload)
        self._refuse_unless_room(1, signal, items)
        if self._store is None:
            self._accept(_Entry(signal, items, payload))
            return
        self._saving += 1
        try:
            path = self._store.next_path(signal, items)
            await asyncio.to_thread(self._store.save, path, payload)
        except OSError as exc:
            self.telemetry.exporter_enqueue_failed(self.name, signal, items)
            raise RetryableError(f"exporter {self.name}: cannot persist: {exc}", 1.0) from exc
        finally:
            self._saving -= 1
        self._accept(_Entry(signal, items, None, path))

    async def enqueue(self, items: Sequence[QueuedItem]) -> None:
        """Queue items all together or none (RetryableError, counted, when they do not fit)."""
        if not items:
            return
        if not self.helper_config.sending_queue.enabled:
            for item in items:  # independent units: one dropped (and counted) item
                with contextlib.suppress(PermanentError):  # does not fail the others
                    await self._send_with_retry(item, raise_on_failure=True)
            return
        self._refuse_unless_room(len(items), items[0].signal, sum(i.items for i in items))
        for item in items:
            self._accept(_Entry(item.signal, item.items, item))

    async def shutdown_handing_over(self) -> list[Payload]:
        """Shut down and return (instead of dropping) the in-memory requests not delivered
        within ``drain_timeout``; draining stops early once the destination fails. Requests
        in a persistent queue stay on disk. Items queued with :meth:`enqueue` are dropped as
        in :meth:`shutdown`."""
        self._handing_over = True
        await self.shutdown()
        unsent, self._unsent = self._unsent, []
        return unsent

    async def shutdown(self) -> None:
        self._closing.set()
        if self._tasks:
            await self._drain(self.helper_config.sending_queue.drain_timeout)
            self._abandon.set()
            await _cancel_all(self._tasks)
            self._count_abandoned()
        await self.stop_sending()

    # Taking data ---------------------------------------------------------------------
    def _refuse_unless_room(self, entries: int, signal: Signal, items: int) -> None:
        """Push back (counted, retryable) unless the entries fit and we are not closing."""
        waiting = (
            self._queue.qsize() + self._saving + sum(len(p.entries) for p in self._pending.values())
        )
        if not self._closing.is_set() and waiting + entries <= self._capacity:
            return
        self.telemetry.exporter_enqueue_failed(self.name, signal, items)
        reason = "shutting down" if self._closing.is_set() else "sending queue is full"
        raise RetryableError(f"exporter {self.name}: {reason}", retry_after=1.0)

    def _accept(self, entry: _Entry) -> None:
        self._open.add(entry)
        if entry.data is not None:
            self._hold(entry.data, entry.items, +1)
        self._queue.put_nowait(entry)
        self._report_queue(entry.signal)

    def _hold(self, data: _Data, items: int, sign: int) -> None:
        """Account for data coming into memory (+1) or leaving it (-1)."""
        if isinstance(data, QueuedItem):
            self._held_item_bytes += sign * (data.size or _DEFAULT_ITEM_BYTES * data.items)
        else:
            self._held_items += sign * items
            if sign > 0:
                self._sample = data

    async def _loaded(self, entry: _Entry) -> _Data | None:
        """The entry's data, read back from disk if that is where it is (None: unreadable)."""
        if entry.data is not None:
            data, entry.data = entry.data, None
            return data
        assert self._store is not None and entry.path is not None
        try:
            payload = await asyncio.to_thread(self._store.read, entry.path, entry.signal)
        except Exception as exc:
            log.error("exporter %s: persistent queue: %s is unreadable (%s); moved aside",
                      self.name, entry.path, exc)  # fmt: skip
            await asyncio.to_thread(self._store.move_aside, entry.path)
            self.telemetry.exporter_send_failed(self.name, entry.signal, entry.items, "corrupt")
            self._open.discard(entry)
            return None
        self._hold(payload, entry.items, +1)
        return payload

    # Batching ------------------------------------------------------------------------
    async def _batch_forever(self, settings: BatchSettings) -> None:
        """Join queued requests per signal; hand batches to the senders through ``_ready``."""
        getting: asyncio.Task[_Entry] | None = None
        closing = asyncio.create_task(self._closing.wait())
        try:
            while True:
                getting = getting or asyncio.create_task(self._queue.get())
                timeout = self._next_deadline()
                await asyncio.wait({getting, closing}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if getting.done():
                    entry, getting = getting.result(), None
                    self._queue.task_done()
                    await self._add_to_batch(entry, settings)
                await self._cut_due(settings, flush=self._closing.is_set())
        finally:
            for task in (getting, closing):
                if task is not None:
                    task.cancel()

    def _next_deadline(self) -> float | None:
        if not self._pending:
            return None
        if self._closing.is_set():
            return 0.0
        soonest = min(p.deadline for p in self._pending.values())
        return max(0.0, soonest - time.monotonic())

    async def _add_to_batch(self, entry: _Entry, settings: BatchSettings) -> None:
        data = await self._loaded(entry)
        if data is None:
            return
        if isinstance(data, QueuedItem):  # items are their own retry unit: not batched
            entry.pieces = 1
            await self._ready.put(_Unit(data, entry.signal, entry.items, [entry]))
            return
        pending = self._pending.get(entry.signal)
        if pending is None:
            deadline = time.monotonic() + settings.flush_timeout
            pending = self._pending[entry.signal] = _Pending(data, 0, deadline)
        else:
            append(pending.payload, data)
        pending.items += entry.items
        pending.entries.append(entry)
        entry.pieces += 1  # the pending batch's hold on it
        if pending.items >= settings.min_size:
            await self._cut(entry.signal, settings, whole=False)

    async def _cut_due(self, settings: BatchSettings, *, flush: bool) -> None:
        now = time.monotonic()
        for signal, pending in list(self._pending.items()):
            if flush or pending.deadline <= now:
                await self._cut(signal, settings, whole=True)

    async def _cut(self, signal: Signal, settings: BatchSettings, *, whole: bool) -> None:
        """Send what is pending for ``signal`` in pieces of at most ``max_size`` items; unless
        ``whole``, a last piece below ``min_size`` stays pending for the next requests.

        Every piece names every entry it came from, so a file is removed only once all the
        pieces are finished (a crash in between sends the finished ones again).
        """
        pending = self._pending.pop(signal)
        pieces = split_in_pieces(pending.payload, pending.items, settings.max_size)
        rest = None
        if not whole and len(pieces) > 1 and pieces[-1][1] < settings.min_size:
            rest = pieces.pop()
        for entry in pending.entries:  # the pending hold becomes one hold per piece
            entry.pieces += len(pieces) - 1 + (rest is not None)
        for payload, items in pieces:
            await self._ready.put(_Unit(payload, signal, items, pending.entries))
        if rest is not None:
            deadline = time.monotonic() + settings.flush_timeout
            self._pending[signal] = _Pending(rest[0], rest[1], deadline, list(pending.entries))

    # Sending -------------------------------------------------------------------------
    async def _send_requests(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                data = await self._loaded(entry)
                if data is not None:
                    entry.pieces = 1
                    await self._deliver(_Unit(data, entry.signal, entry.items, [entry]))
            finally:
                self._queue.task_done()

    async def _send_batches(self) -> None:
        while True:
            await self._deliver(await self._ready.get())

    async def _deliver(self, unit: _Unit) -> None:
        done = False
        try:
            done = await self._send_with_retry(unit.data, raise_on_failure=False)
        finally:
            if not done and self._handing_over and not isinstance(unit.data, QueuedItem):
                self._unsent.append(unit.data)  # what a failed send left in it
            self._hold(unit.data, unit.items, -1)
            for entry in unit.entries:
                entry.pieces -= 1
                if entry.pieces == 0 and done:
                    self._finish(entry)
            self._report_queue(unit.signal)

    def _finish(self, entry: _Entry) -> None:
        self._open.discard(entry)
        if entry.path is not None and self._store is not None:
            self._store.remove(entry.path)

    async def _send_with_retry(
        self, data: _Data, *, raise_on_failure: bool, isolation: _Isolation | None = None
    ) -> bool:
        """True when the data is finished with (sent or dropped), False when abandoned.

        ``isolation`` is the search for invalid items this send is part of."""
        signal, items = _signal_and_items(data)
        backoff = Backoff(self.helper_config.retry_on_failure)
        while True:
            try:
                dropped = await asyncio.wait_for(self._send_once(data), self.helper_config.timeout or None)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except DATA_ERRORS as exc:
                if isolation is not None:  # halved in its turn by the search
                    isolation.refused.append((data, exc))
                    return True
                search = _Isolation.of(items)
                return await self._isolate_invalid(data, exc, search, raise_on_failure)
            except PermanentError as exc:
                self._drop(signal, items, getattr(exc, "reason", "permanent"), exc)
                if raise_on_failure:
                    raise
                return True
            except Exception as exc:
                self._failing = True
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                wait = backoff.next_wait(retry_after)
                if not self.helper_config.retry_on_failure.enabled or wait is None:
                    self._drop(signal, items, "retry_exhausted", exc)
                    if raise_on_failure:
                        kind = (
                            OverloadedError if isinstance(exc, OverloadedError) else RetryableError
                        )
                        raise kind(f"exporter {self.name}: {exc}", retry_after) from exc
                    return True
                log.warning(
                    "exporter %s: send failed (%s); retrying in %.1fs", self.name, exc, wait
                )
                if await self._sleep_unless_abandoned(wait):
                    return False
            else:
                self._failing = False
                if isolation is not None:
                    isolation.accepted = True
                if items - (dropped or 0) > 0:
                    self.telemetry.exporter_sent(self.name, signal, items - (dropped or 0))
                return True

    async def _send_once(self, data: _Data) -> int | None:
        if isinstance(data, QueuedItem):
            await self.send_item(data)
            return None
        return await self.send(data)

    async def deliver_valid_items(self, payload: Payload, error: InvalidDataError) -> None:
        """For an exporter that sends in ``consume`` (no queue of its own): deliver every
        item of ``payload`` that can be, drop and count the others."""
        search = _Isolation.of(_signal_and_items(payload)[1])
        await self._isolate_invalid(payload, error, search, raise_on_failure=True)

    async def _isolate_invalid(
        self, data: _Data, error: BaseException, search: _Isolation, raise_on_failure: bool
    ) -> bool:
        """Send ``data`` in halves until the items that fail alone are found; drop those.

        One bad item among 8,192 takes about 26 sends. Until the destination takes a
        piece, ``search`` allows 64 and one per 32 items (down to pieces of about 64
        items): one that refuses everything costs no more, and what is left is dropped
        whole. Once it has taken a piece, halving goes on until every
        bad item is found (fewer than two sends an item): many bad items in a batch (a
        hostile sender's) must not cost the valid items a batch processor joined to them.
        The pieces are halved breadth first, so that bad items packed together (a run of
        them at the start of a batch) do not use up the 64 sends before a valid piece is
        ever sent."""
        search.refused.append((data, error))
        done = True
        while search.refused:
            part, exc = search.refused.popleft()
            signal, items = _signal_and_items(part)
            if isinstance(part, QueuedItem) or items <= 1 or not search.may_split():
                self.count_invalid(signal, items, f"{type(exc).__name__}: {exc}")
                continue
            search.sends_left -= 2
            head = split_off(part, items // 2)
            for piece in (head, part):
                done &= await self._send_with_retry(
                    piece, raise_on_failure=raise_on_failure, isolation=search
                )
        return done

    async def _sleep_unless_abandoned(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._abandon.wait(), seconds)
        return self._abandon.is_set()

    def _drop(self, signal: Signal, items: int, reason: str, exc: BaseException) -> None:
        self.telemetry.exporter_send_failed(self.name, signal, items, reason)
        if getattr(exc, "logged", False):
            return
        log.error("exporter %s: dropped %d %s (%s): %s", self.name, items, signal.item_name,
                  reason, exc)  # fmt: skip

    # Shutdown ------------------------------------------------------------------------
    async def _drain(self, timeout: float) -> None:
        """Wait until everything accepted is finished, at most ``timeout`` seconds.

        With storage, stop as soon as the destination fails: what waits is on disk and is
        sent after the restart, so there is nothing to wait for.
        """
        deadline = time.monotonic() + timeout
        while self._open and time.monotonic() < deadline:
            if self._handing_over and self._failing:
                return  # what waits goes to another destination
            if self._store is not None and self._failing:
                log.info("exporter %s: destination failing; %d requests stay on disk for the "
                         "next start", self.name, len(self._open))  # fmt: skip
                return
            await asyncio.sleep(_DRAIN_POLL)

    def _count_abandoned(self) -> None:
        """At shutdown: in-memory leftovers are lost (counted), or kept for the owner when
        handing over; persisted ones wait on disk."""
        if self._handing_over:
            self._keep_unsent()
        for entry in self._open:
            if entry.path is None:
                self._drop(entry.signal, entry.items, "shutdown",
                           RuntimeError("queue not drained before shutdown"))  # fmt: skip
        self._open.clear()

    def _keep_unsent(self) -> None:
        """Collect the requests still waiting (queued, batching, ready) into ``_unsent``;
        their entries are finished here, not dropped."""
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry.data is not None and not isinstance(entry.data, QueuedItem):
                self._unsent.append(entry.data)
                self._open.discard(entry)
        while not self._ready.empty():
            unit = self._ready.get_nowait()
            if not isinstance(unit.data, QueuedItem):
                self._unsent.append(unit.data)
        self._unsent.extend(pending.payload for pending in self._pending.values())
        self._pending.clear()
        self._open = {entry for entry in self._open if entry.path is not None}

    def _report_queue(self, signal: Signal) -> None:
        self.telemetry.exporter_queue(self.name, signal, self.queue_size(), self._capacity)

    def _report_queue_all(self) -> None:
        for signal in Signal:
            self._report_queue(signal)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until done: Python 3.11's wait_for can swallow a cancel that races a result."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)


class _DiskStore:
    """One file per queued request, ``<seq>.<signal>.<items>.pb``, written durably.

    Under ``--workers N`` each worker has a directory of its own inside the exporter's
    (``worker-<index>``): files of one sequence in a shared directory would overwrite each
    other's requests. A worker started again takes up its own directory; requests left in
    a directory that no process of this run owns (a single process's, or a worker's of a
    run with more workers; in a single process, every worker's) are moved into this one
    when it opens, so that a change of ``--workers`` loses nothing either."""

    def __init__(
        self, root: Path, exporter: str, disk: Disk, worker: WorkerRole | None = None
    ) -> None:
        base = root / re.sub(r"[^A-Za-z0-9_.-]", "_", exporter)
        self.directory = base / f"worker-{worker.index}" if worker else base
        self.directory.mkdir(parents=True, exist_ok=True)
        self._disk = disk
        self._seq = max((_seq_of(p) for p in self.directory.glob("*.pb")), default=0)
        for orphan in _orphaned(base, worker):
            self._adopt(orphan)

    def _adopt(self, directory: Path) -> None:
        """Move the requests another run left in ``directory`` behind this one's, in order."""
        moved = False
        for path in sorted(directory.glob("*.pb")):
            self._seq += 1
            name = f"{self._seq:020d}." + path.name.split(".", 1)[1]
            self._disk.rename(path, self.directory / name)
            moved = True
        if moved:
            log.info("persistent queue: took up the requests left in %s", directory)
            self._disk.fsync_directory(self.directory)
            self._disk.fsync_directory(directory)

    def next_path(self, signal: Signal, items: int) -> Path:
        self._seq += 1
        return self.directory / f"{self._seq:020d}.{signal.value}.{items}.pb"

    def save(self, path: Path, payload: Payload) -> None:
        self._disk.write_atomically(path, payload.SerializeToString())

    def read(self, path: Path, signal: Signal) -> Payload:
        payload = signal.new_request()
        payload.ParseFromString(path.read_bytes())
        return payload

    def waiting(self) -> list[tuple[Path, Signal, int]]:
        """The requests left by an earlier run, oldest first (half-written files removed)."""
        for temporary in self.directory.glob("*.tmp"):
            temporary.unlink(missing_ok=True)
        found: list[tuple[Path, Signal, int]] = []
        for path in sorted(self.directory.glob("*.pb")):
            parts = path.name.split(".")
            try:
                signal = Signal(parts[1])
                items = int(parts[2]) if len(parts) == 4 else count_items(self.read(path, signal))
            except Exception:
                log.error("persistent queue: %s is unreadable; moved aside", path)
                self.move_aside(path)
                continue
            found.append((path, signal, items))
        return found

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def move_aside(self, path: Path) -> None:
        path.rename(path.with_suffix(".corrupt"))


def _seq_of(path: Path) -> int:
    return int(path.name.split(".")[0])


def _orphaned(base: Path, worker: WorkerRole | None) -> list[Path]:
    """The directories under ``base`` whose requests no process of this run takes but this
    one: all workers' in a single process; in worker 0, the single process's and those of
    workers beyond this run's count."""
    workers = sorted(base.glob("worker-*"), key=lambda d: _worker_index(d) or 0)
    if worker is None:
        return [d for d in workers if _worker_index(d) is not None]
    if worker.index != 0:
        return []
    beyond = [d for d in workers if (_worker_index(d) or 0) >= worker.count]
    return [base, *beyond]


def _worker_index(directory: Path) -> int | None:
    suffix = directory.name.removeprefix("worker-")
    return int(suffix) if suffix.isdigit() and directory.is_dir() else None
