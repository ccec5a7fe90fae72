"""Holds whole batches until the traces in them are complete enough to judge.

Used by the whole-trace processors (``perf_issues``, ``tail_sampling``). Batches are
held as they came, never copied span by span: a trace is judged ``wait`` seconds after
its first span arrived, using every span of it held by then, and a batch is released
``wait`` seconds after it arrived (by then every trace in it has been judged). Spans of
a trace already judged ("late spans") are not indexed again; the caller decides what to
do with them from its decision cache.

``max_traces`` bounds memory: past it the oldest batches are judged and released early.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.budgets.findings import service_name
from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import Consumer, CreateSettings, Host, Processor
from otelkit.collector.runtime.errors import ComponentError


@dataclass
class HeldTrace:
    trace_id: bytes
    first_seen: float
    spans: list[Span] = field(default_factory=list)
    services: list[str] = field(default_factory=list)  # parallel to spans


@dataclass
class _HeldBatch:
    payload: ExportTraceServiceRequest
    arrival: float
    spans: int


class TraceBuffer:
    def __init__(
        self,
        wait: float,
        max_traces: int,
        is_decided: Callable[[bytes], bool] = lambda _trace_id: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.max_traces = max_traces
        self._is_decided = is_decided
        self._clock = clock
        self._batches: deque[_HeldBatch] = deque()
        self.traces: dict[bytes, HeldTrace] = {}
        self.held_spans = 0

    def add(self, payload: ExportTraceServiceRequest) -> None:
        now = self._clock()
        traces = self.traces
        count = 0
        for rs in payload.resource_spans:
            service = service_name(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    count += 1
                    trace_id = span.trace_id
                    held = traces.get(trace_id)
                    if held is None:
                        if self._is_decided(trace_id):
                            continue
                        held = traces[trace_id] = HeldTrace(trace_id, now)
                    held.spans.append(span)
                    held.services.append(service)
        self._batches.append(_HeldBatch(payload, now, count))
        self.held_spans += count

    def due(self, flush: bool = False) -> tuple[list[HeldTrace], list[ExportTraceServiceRequest]]:
        """Traces to judge now, then the batches to release (in arrival order)."""
        now = self._clock()
        cutoff = float("inf") if flush else now - self.wait
        if len(self.traces) > self.max_traces and self._batches:
            cutoff = max(cutoff, self._oldest_cutoff())
        ready: list[HeldTrace] = []
        for held in self.traces.values():  # insertion order is first-seen order
            if held.first_seen > cutoff:
                break
            ready.append(held)
        for held in ready:
            del self.traces[held.trace_id]
        released: list[ExportTraceServiceRequest] = []
        while self._batches and self._batches[0].arrival <= cutoff:
            batch = self._batches.popleft()
            self.held_spans -= batch.spans
            released.append(batch.payload)
        return ready, released

    def _oldest_cutoff(self) -> float:
        """Arrival time up to which batches must go to bring traces under the bound."""
        excess = len(self.traces) - self.max_traces
        if excess <= 0:
            return float("-inf")
        oldest = next(islice(self.traces.values(), excess - 1, None))
        return oldest.first_seen

    def __len__(self) -> int:
        return len(self._batches)


class BufferedTraceProcessor(Processor):
    """A traces processor that judges whole traces: holds batches in a TraceBuffer,
    judges due traces on a timer, and releases batches downstream in arrival order.

    Released batches are handed on from the timer task, so a downstream refusal cannot
    reach the sender: it is logged and the spans are counted as dropped.
    With ``wait == 0`` nothing is held: each batch is judged on its own, in line.
    """

    def __init__(
        self, settings: CreateSettings, next_consumer: Consumer, wait: float, max_traces: int
    ) -> None:
        self._settings = settings
        self._next = next_consumer
        self.buffer = TraceBuffer(wait, max_traces, self.is_decided)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # Subclasses implement these two.
    def judge(self, traces: list[HeldTrace]) -> None:
        raise NotImplementedError

    def prepare(self, payload: ExportTraceServiceRequest) -> ExportTraceServiceRequest | None:
        """The batch to send on (possibly filtered in place), or None to send nothing."""
        return payload

    def is_decided(self, trace_id: bytes) -> bool:
        return False

    async def start(self, host: Host) -> None:
        if self.buffer.wait > 0:
            self._task = asyncio.create_task(self._tick(), name=f"{self._settings.label} timer")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.release(flush=True)

    async def consume(self, payload: Payload) -> None:
        assert isinstance(payload, ExportTraceServiceRequest)
        if self.buffer.wait <= 0:
            self.buffer.add(payload)
            await self._send(*self.buffer.due(flush=True), raise_errors=True)
            return
        self.buffer.add(payload)
        if len(self.buffer.traces) > self.buffer.max_traces:
            await self.release()

    async def release(self, flush: bool = False) -> None:
        async with self._lock:
            traces, batches = self.buffer.due(flush)
            await self._send(traces, batches, raise_errors=False)

    async def _send(
        self, traces: list[HeldTrace], batches: list[ExportTraceServiceRequest], raise_errors: bool
    ) -> None:
        if traces:
            self.judge(traces)
        for batch in batches:
            out = self.prepare(batch)
            if out is None or not out.resource_spans:
                continue
            try:
                await self._next.consume(out)
            except ComponentError as exc:
                if raise_errors:
                    raise
                n = count_items(out)
                self._settings.telemetry.processor_dropped(str(self._settings.id), Signal.TRACES, n)
                self._settings.logger.warning(
                    "%s: %d spans dropped downstream: %s", self._settings.label, n, exc
                )

    async def _tick(self) -> None:
        period = min(max(self.buffer.wait / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            await self.release()
