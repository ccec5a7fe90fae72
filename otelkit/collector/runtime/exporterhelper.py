"""The one exporter helper: bounded queue, optional disk persistence, retries.

Every exporter subclasses :class:`QueuedExporter` and implements ``send``; queueing,
backoff with jitter, ``Retry-After``, the retryable/permanent split and the counting of
every dropped item live here and nowhere else.

Semantics, matching the upstream ``exporterhelper``:

* ``consume`` enqueues and returns; a full queue raises :class:`RetryableError`, which the
  receiver turns into ``UNAVAILABLE`` / 503 so the sender retries (nothing is lost).
* ``send`` raising :class:`PermanentError` drops the batch (counted, reason
  ``permanent``); anything else is retried with exponential backoff until
  ``max_elapsed_time`` (then dropped, reason ``retry_exhausted``).
* With ``sending_queue.storage`` set, a batch is written to disk before ``consume``
  returns and removed only once sent or permanently dropped, so a batch waiting for a
  down exporter survives a collector restart.
* An exporter whose retry unit is not a whole request (one Sentry envelope per event)
  converts in ``consume`` and queues :class:`QueuedItem` objects with :meth:`enqueue`;
  they are sent by ``send_item``, retried and counted the same way, and held in memory
  only. A :class:`PermanentError` may carry ``reason`` (the ``send_failed`` label) and
  ``logged`` (the exporter has already said why, so the helper does not log each drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.component import ComponentConfig, CreateSettings, Exporter, Host
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.types import Duration

log = logging.getLogger("otelkit.exporter")


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
    """One retry unit an exporter built itself; ``items`` is what it counts as sent."""

    signal: Signal
    items: int
    data: Any


_Entry = Payload | QueuedItem


def _signal_and_items(entry: _Entry) -> tuple[Signal, int]:
    if isinstance(entry, QueuedItem):
        return entry.signal, entry.items
    return signal_of(entry), count_items(entry)


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

    def __init__(self, settings: CreateSettings, config: ExporterHelperConfig) -> None:
        self.settings = settings
        self.helper_config = config
        self.telemetry = settings.telemetry
        self.name = str(settings.id)
        queue = config.sending_queue
        self._queue: asyncio.Queue[tuple[Path | None, _Entry]] = asyncio.Queue()
        self._capacity = queue.queue_size
        self._store = _DiskStore(Path(queue.storage), self.name) if queue.storage else None
        self._workers: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        self._abandon = asyncio.Event()
        self._in_flight = 0

    async def send(self, payload: Payload) -> None:
        """Deliver one batch. Raise PermanentError when retrying cannot help."""
        raise NotImplementedError

    async def send_item(self, item: QueuedItem) -> None:
        """Deliver one item queued with :meth:`enqueue`."""
        raise NotImplementedError

    async def start_sending(self, host: Host) -> None:
        """Open connections; called by :meth:`start` before the queue consumers run."""

    async def stop_sending(self) -> None:
        """Close connections; called once the queue is drained or abandoned."""

    # Component -----------------------------------------------------------------------
    async def start(self, host: Host) -> None:
        await self.start_sending(host)
        if self._store is not None:
            for path, payload in self._store.load():
                self._queue.put_nowait((path, payload))
            self._report_queue_all()
        if self.helper_config.sending_queue.enabled:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"{self.name}-sender-{i}")
                for i in range(self.helper_config.sending_queue.num_consumers)
            ]

    async def consume(self, payload: Payload) -> None:
        signal = signal_of(payload)
        if not self.helper_config.sending_queue.enabled:
            await self._send_with_retry(payload, raise_on_failure=True)
            return
        self._refuse_unless_room((payload,))
        path = self._store.save(payload) if self._store is not None else None
        self._queue.put_nowait((path, payload))
        self._report_queue(signal)

    async def enqueue(self, items: Sequence[QueuedItem]) -> None:
        """Queue items all together or none (RetryableError, counted, when they do not fit)."""
        if not items:
            return
        if not self.helper_config.sending_queue.enabled:
            for item in items:  # independent units: one dropped (and counted) item
                with contextlib.suppress(PermanentError):  # does not fail the others
                    await self._send_with_retry(item, raise_on_failure=True)
            return
        self._refuse_unless_room(items)
        for item in items:
            self._queue.put_nowait((None, item))
        self._report_queue(items[0].signal)

    def _refuse_unless_room(self, entries: Sequence[_Entry]) -> None:
        """Push back (counted, retryable) unless every entry fits and we are not closing."""
        if not self._closing.is_set() and self._queue.qsize() + len(entries) <= self._capacity:
            return
        for entry in entries:
            self.telemetry.exporter_enqueue_failed(self.name, *_signal_and_items(entry))
        reason = "shutting down" if self._closing.is_set() else "sending queue is full"
        raise RetryableError(f"exporter {self.name}: {reason}", retry_after=1.0)

    async def shutdown(self) -> None:
        self._closing.set()
        if self._workers:
            drain = self.helper_config.sending_queue.drain_timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain)
            self._abandon.set()
            await _cancel_all(self._workers)
            self._count_abandoned()
        await self.stop_sending()

    def queue_size(self) -> int:
        return self._queue.qsize() + self._in_flight

    # Internals -----------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            path, payload = await self._queue.get()
            self._in_flight += 1
            try:
                done = await self._send_with_retry(payload, raise_on_failure=False)
                if done and path is not None and self._store is not None:
                    self._store.remove(path)
                elif not done and path is None:
                    self._drop(*_signal_and_items(payload), "shutdown",
                               RuntimeError("abandoned mid-retry at shutdown"))  # fmt: skip
            finally:
                self._in_flight -= 1
                self._queue.task_done()
                self._report_queue(_signal_and_items(payload)[0])

    async def _send_with_retry(self, payload: _Entry, *, raise_on_failure: bool) -> bool:
        """True when the batch is finished with (sent or dropped), False when abandoned."""
        signal, items = _signal_and_items(payload)
        backoff = Backoff(self.helper_config.retry_on_failure)
        while True:
            sending = (
                self.send_item(payload) if isinstance(payload, QueuedItem) else self.send(payload)
            )
            try:
                await asyncio.wait_for(sending, self.helper_config.timeout or None)
            except PermanentError as exc:
                self._drop(signal, items, getattr(exc, "reason", "permanent"), exc)
                if raise_on_failure:
                    raise
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                wait = backoff.next_wait(retry_after)
                if not self.helper_config.retry_on_failure.enabled or wait is None:
                    self._drop(signal, items, "retry_exhausted", exc)
                    if raise_on_failure:
                        raise RetryableError(f"exporter {self.name}: {exc}") from exc
                    return True
                log.warning(
                    "exporter %s: send failed (%s); retrying in %.1fs", self.name, exc, wait
                )
                if await self._sleep_unless_abandoned(wait):
                    return False
            else:
                self.telemetry.exporter_sent(self.name, signal, items)
                return True

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

    def _count_abandoned(self) -> None:
        """At shutdown: in-memory leftovers are lost (counted); persisted ones wait on disk."""
        while not self._queue.empty():
            path, payload = self._queue.get_nowait()
            if path is None:
                self._drop(*_signal_and_items(payload), "shutdown",
                           RuntimeError("queue not drained before shutdown"))  # fmt: skip

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
    """One file per queued batch, ``<seq>.<signal>.pb``, written atomically."""

    def __init__(self, root: Path, exporter: str) -> None:
        self.directory = root / re.sub(r"[^A-Za-z0-9_.-]", "_", exporter)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = max((_seq_of(p) for p in self._files()), default=0)

    def save(self, payload: Payload) -> Path:
        self._seq += 1
        path = self.directory / f"{self._seq:020d}.{signal_of(payload).value}.pb"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(payload.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def load(self) -> Iterator[tuple[Path, Payload]]:
        for path in sorted(self._files()):
            signal = Signal(path.name.split(".")[1])
            payload = signal.new_request()
            try:
                payload.ParseFromString(path.read_bytes())
            except Exception:
                log.error("persistent queue: %s is unreadable; moved aside", path)
                path.rename(path.with_suffix(".corrupt"))
                continue
            yield path, payload

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _files(self) -> Iterator[Path]:
        return self.directory.glob("*.pb")


def _seq_of(path: Path) -> int:
    return int(path.name.split(".")[0])
