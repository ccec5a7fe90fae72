"""One thread for a component's CPU-heavy work, so the event loop keeps serving.

The event loop runs every receiver and the health check; a component that parses,
scrubs or encodes user data hands that work to its :class:`WorkerThread` and awaits
the result. One thread per component keeps batches in the order they came, and the
backlog is bounded: when ``max_pending`` batches already wait, :meth:`WorkerThread.submit`
refuses with a retryable error, so senders back off (gRPC ``UNAVAILABLE``, HTTP 503)
instead of the backlog growing without limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from otelkit.collector.runtime.errors import RetryableError

R = TypeVar("R")


class WorkerThread:
    def __init__(self, name: str, max_pending: int) -> None:
        self.name = name
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"otelkit-{name}")
        self._pending = 0  # submitted batches not done yet
        self._queued = 0  # all work on the thread or waiting for it

    async def submit(self, work: Callable[..., R], *args: Any, small: bool = False) -> R:
        """Run a batch's work on the thread, unless ``max_pending`` batches already wait.

        ``small`` work runs on the caller's thread when no other work is on the thread,
        so it keeps its place in the order: handing it over and back costs about 40 us of
        CPU, more than small work itself (redacting a few dozen log records)."""
        if small and not self._queued:
            return work(*args)
        if self._pending >= self.max_pending:
            raise RetryableError(
                f"{self.name}: {self._pending} batches wait for processing", retry_after=1.0
            )
        self._pending += 1
        try:
            return await self.call(work, *args)
        finally:
            self._pending -= 1

    async def call(self, work: Callable[..., R], *args: Any) -> R:
        """Run work the component itself schedules (a flush), in order, without refusal."""
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._queued -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False)
