"""Holds whole batches until the traces in them are complete enough to judge.

Used by the whole-trace processors (``perf_issues``, ``tail_sampling``). Batches are
held as they came (or, when the judge needs no spans, as their serialised bytes), never
copied span by span: a trace is judged ``wait`` seconds after its first span arrived,
using every span of it held by then, and a batch is released ``wait`` seconds after it
arrived (by then every trace in it has been judged). A held trace is its span count
(and, where it has them, its flags and where its spans are: runs of them by position,
not span objects); traces due are handed over as :class:`HeldTrace`. Spans of a trace
already judged ("late spans") are not indexed again; the caller decides what to do
with them from its decision cache.

``max_traces`` bounds memory: past it the oldest batches are judged and released early
(counted in ``decided_early``).

A buffer that keeps no spans holds each ScopeSpans as one zstd frame of its bytes and
each span's trace and size (:class:`PackedScope`): OTLP spans repeat their keys and
most values, so the frame is about a tenth of the bytes, and besides its share of it a
held trace costs its entry in :attr:`TraceBuffer.traces` (its ID and a small int).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from array import array
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import sub
from typing import NamedTuple

import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from otelkit.budgets.findings import service_name
from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.pdata.wire import span_field_starts
from otelkit.collector.runtime.component import Consumer, CreateSettings, Host, Processor
from otelkit.collector.runtime.errors import ComponentError
from otelkit.collector.runtime.memory import parsed_bytes

# Where some of a trace's spans are: spans container, first index, end index, service.
Run = tuple[Sequence[Span], int, int, str]


@dataclass(slots=True)
class HeldTrace:
    """A trace as it is judged. While held, a trace is only its span count in
    :attr:`TraceBuffer.traces` (and its flags and runs, where it has any): an object per
    held trace cost about 80 bytes more, a third of its packed spans."""

    trace_id: bytes
    first_seen: float
    # Where the trace's spans are, when the buffer keeps spans: runs of them in the
    # held batches (spans container, first index, end index, service). Span objects are
    # made only when judged, so none stay alive (and tracked by the garbage collector)
    # while held.
    runs: list[Run] = field(default_factory=list)
    span_count: int = 0
    flags: int = 0  # what the buffer's scanner found in the trace's spans (bits)

    @property
    def spans(self) -> list[Span]:
        return [span for spans, begin, end, _ in self.runs for span in spans[begin:end]]

    @property
    def services(self) -> list[str]:
        """Each span's service, parallel to :attr:`spans`."""
        return [service for _, begin, end, service in self.runs for _ in range(end - begin)]


class ScopeWire(NamedTuple):
    """A serialised ``ScopeSpans`` and where each of its spans' bytes start and end."""

    data: bytes
    starts: Sequence[int]
    ends: Sequence[int]


# Level 1: about 8x smaller OTLP at well under a microsecond per span; one compressor
# and decompressor for the event loop's thread (zstandard's objects are not shared
# between threads).
_COMPRESS = zstandard.ZstdCompressor(level=1).compress
_DECOMPRESS = zstandard.ZstdDecompressor().decompress


class ScopeEntries(NamedTuple):
    """A serialised ``ScopeSpans`` as fields: where each span's field (tag and length
    included) begins and, last, where the last one ends; and each span's trace."""

    data: bytes
    bounds: array[int]
    trace_ids: list[bytes]  # each distinct trace's ID, in first-span order
    traces: array[int]  # each span's trace: an index in trace_ids


class PackedScope:
    """A held ScopeSpans: one zstd frame of its traces' IDs, each span's trace (as an
    index) and field size, and the ScopeSpans' bytes.

    Small numbers rather than offsets and per-span IDs: they compress to about three
    bytes per span, where absolute offsets took seven, and a span's trace is found
    without reading its bytes."""

    __slots__ = ("frame", "spans")

    def __init__(self, wire: ScopeWire, trace_ids: list[bytes]) -> None:
        self.spans = len(trace_ids)
        index = {trace_id: k for k, trace_id in enumerate(dict.fromkeys(trace_ids))}
        heads = span_field_starts(wire.starts, wire.ends)
        sizes = list(map(sub, wire.ends, heads))
        traces = array(_item_type(len(index)), map(index.__getitem__, trace_ids))
        sizes_array = array(_item_type(max(sizes, default=0), "H"), sizes)
        first = heads[0] if heads else len(wire.data)
        header = _HEADER.pack(
            traces.typecode.encode(), sizes_array.typecode.encode(), len(index), first
        )
        # The ScopeSpans' bytes first: the traces' IDs then compress as repeats of them.
        parts = (header, wire.data, b"".join(index), traces.tobytes(), sizes_array.tobytes())
        frame = _COMPRESS(b"".join(parts))
        # zstandard allocates the bound of the frame's size and shrinks it in place, so
        # the allocator keeps the whole block: an exact copy lets it go.
        self.frame = memoryview(frame).tobytes()

    def entries(self) -> ScopeEntries:
        raw = _DECOMPRESS(self.frame)
        traces_type, sizes_type, count, first = _HEADER.unpack_from(raw)
        traces, sizes = array(traces_type.decode()), array(sizes_type.decode())
        sizes_at = len(raw) - self.spans * sizes.itemsize
        traces_at = sizes_at - self.spans * traces.itemsize
        ids_at = traces_at - 16 * count
        trace_ids = [raw[k : k + 16] for k in range(ids_at, traces_at, 16)]
        traces.frombytes(raw[traces_at:sizes_at])
        sizes.frombytes(raw[sizes_at:])
        bounds = array("I", accumulate(sizes, initial=first))
        return ScopeEntries(raw[_HEADER.size : ids_at], bounds, trace_ids, traces)

    def unpack(self) -> tuple[ScopeWire, list[bytes]]:
        """The ScopeSpans' bytes, where each span's own bytes are, and its trace ID."""
        data, bounds, trace_ids, traces = self.entries()
        heads, ends = bounds[:-1], bounds[1:]
        starts = array(
            "I",
            [
                at + 2 + bisect_left(_FIELD_HEADS, end - at)
                for at, end in zip(heads, ends, strict=True)
            ],
        )
        return ScopeWire(data, starts, ends), list(map(trace_ids.__getitem__, traces))

    def __len__(self) -> int:
        return len(self.frame)


# The frame's header: its two arrays' item types, how many traces, where the first
# span's field begins.
_HEADER = struct.Struct("<ccII")
# A span's field size up to which its tag and length take 2, 3, 4, 5 bytes.
_FIELD_HEADS = (129, 16386, 2097155, 268435460)


def _item_type(largest: int, smallest: str = "B") -> str:
    """The smallest array item type, from ``smallest`` up, that holds ``largest``."""
    for code in "BHI"[("BHI".index(smallest)) :]:
        if largest < 1 << (8 * array(code).itemsize):
            return code
    raise ValueError(f"{largest} does not fit four bytes")


def _packable(wire: ScopeWire, trace_ids: list[bytes]) -> bool:
    """Whether each span's trace ID is 16 bytes (each trace's is held once, as 16 bytes)
    and the offsets fit four bytes. Otherwise the batch is held as a message."""
    if len(wire.data) >= 1 << 32 or len(wire.starts) != len(trace_ids):
        return False
    return len(b"".join(trace_ids)) == 16 * len(trace_ids)


class ScopeScan(NamedTuple):
    """What a scanner reports about one ``ScopeSpans``."""

    trace_ids: list[bytes]  # each span's
    flags: dict[int, int]  # span index -> flag bits, for the few spans that have any
    wire: ScopeWire | None = None  # its bytes, if the scanner serialised it


@dataclass(slots=True)
class HeldBatch:
    # The batch as it came, or (when the buffer keeps no spans and the scanner gave
    # every scope's bytes) only its bytes: per ResourceSpans, its own fields serialised
    # without scope_spans, and each ScopeSpans packed (with its spans' trace IDs).
    # Packed bytes take a small fraction of the memory of the parsed message.
    payload: ExportTraceServiceRequest | None
    arrival: float
    spans: int
    # Per ScopeSpans, in payload order: each span's trace ID (when the buffer keeps them
    # and holds the message; packed scopes hold their own).
    trace_ids: list[list[bytes]]
    wire: list[tuple[bytes, list[PackedScope]]] | None = None


Scanner = Callable[[ScopeSpans], ScopeScan]


def read_trace_ids(scope_spans: ScopeSpans) -> ScopeScan:
    """The default scanner: trace IDs only."""
    return ScopeScan([span.trace_id for span in scope_spans.spans], {})


class TraceBuffer:
    def __init__(
        self,
        wait: float,
        max_traces: int,
        is_decided: Callable[[bytes], bool] = lambda _trace_id: False,
        clock: Callable[[], float] = time.monotonic,
        keep_spans: bool = True,
        scan: Scanner = read_trace_ids,
        keep_trace_ids: bool = True,
    ) -> None:
        self.wait = wait
        self.max_traces = max_traces
        self.keep_spans = keep_spans
        self.keep_trace_ids = keep_trace_ids  # of every span, for the release
        self._is_decided = is_decided
        self._clock = clock
        self._scan = scan
        self._batches: deque[HeldBatch] = deque()
        # Each held trace's span count, in first-seen order; and, for the few that have
        # them, its flags and (when the buffer keeps spans) its runs.
        self.traces: dict[bytes, int] = {}
        self._flags: dict[bytes, int] = {}
        self._runs: dict[bytes, list[Run]] = {}
        # (first seen, how many traces were first seen then), in the order of ``traces``.
        self._first_seen: deque[tuple[float, int]] = deque()
        self.held_spans = 0
        self.decided_early = 0  # traces judged before their wait, to stay within max_traces

    def add(self, payload: ExportTraceServiceRequest) -> None:
        now = self._clock()
        count = 0
        trace_ids: list[list[bytes]] = []
        wires: list[list[ScopeWire | None]] = []
        traces_before = len(self.traces)
        for rs in payload.resource_spans:
            service = service_name(rs.resource.attributes) if self.keep_spans else ""
            wires.append([])
            for ss in rs.scope_spans:
                ids, flags, wire = self._scan(ss)
                if self.keep_trace_ids:
                    trace_ids.append(ids)
                wires[-1].append(wire)
                count += len(ids)
                if ids:
                    self._index(ss, ids, flags, service)
        if len(self.traces) > traces_before:
            self._first_seen.append((now, len(self.traces) - traces_before))
        batch = HeldBatch(payload, now, count, trace_ids)
        if not self.keep_spans and self.keep_trace_ids:
            _hold_bytes_only(batch, wires)
        self._batches.append(batch)
        self.held_spans += count

    def _index(self, ss: ScopeSpans, ids: list[bytes], flags: dict[int, int], service: str) -> None:
        """Adds one ScopeSpans' spans to their traces: counted per trace, not span by span."""
        traces = self.traces
        for trace_id, n in Counter(ids).items():
            held = traces.get(trace_id)
            if held is None:
                if self._is_decided(trace_id):
                    continue
                held = 0
                if self.keep_spans:
                    self._runs[trace_id] = []
            traces[trace_id] = held + n
        if self.keep_spans:
            self._add_runs(ss.spans, ids, service)
        for k, bits in flags.items():
            trace_id = ids[k]
            if trace_id in traces:
                self._flags[trace_id] = self._flags.get(trace_id, 0) | bits

    def _add_runs(self, spans: Sequence[Span], ids: list[bytes], service: str) -> None:
        """Records where each held trace's spans are, a run of same-trace spans at once."""
        n = len(ids)
        cuts = [k for k in range(1, n) if ids[k] != ids[k - 1]]
        cuts.append(n)
        begin = 0
        for end in cuts:
            runs = self._runs.get(ids[begin])
            if runs is not None:
                runs.append((spans, begin, end, service))
            begin = end

    def due(self, flush: bool = False) -> tuple[list[HeldTrace], list[HeldBatch]]:
        """Traces to judge now, then the batches to release (in arrival order)."""
        now = self._clock()
        cutoff = float("inf") if flush else now - self.wait
        if len(self.traces) > self.max_traces and self._batches:
            cutoff = max(cutoff, self._oldest_cutoff())
        ready: list[HeldTrace] = []
        traces, flags, runs = self.traces, self._flags, self._runs
        while self._first_seen and self._first_seen[0][0] <= cutoff:
            first_seen, n = self._first_seen.popleft()
            if not flush and first_seen > now - self.wait:
                self.decided_early += n
            for trace_id in list(islice(traces, n)):  # the oldest n: first-seen order
                count, bits = traces.pop(trace_id), flags.pop(trace_id, 0)
                runs_of = runs.pop(trace_id, _NO_RUNS)
                ready.append(HeldTrace(trace_id, first_seen, runs_of, count, bits))
        released: list[HeldBatch] = []
        while self._batches and self._batches[0].arrival <= cutoff:
            batch = self._batches.popleft()
            self.held_spans -= batch.spans
            released.append(batch)
        return ready, released

    def _oldest_cutoff(self) -> float:
        """Arrival time up to which batches must go to bring traces under the bound."""
        excess = len(self.traces) - self.max_traces
        for first_seen, n in self._first_seen:
            excess -= n
            if excess <= 0:
                return first_seen
        return float("-inf")

    def __len__(self) -> int:
        return len(self._batches)

    def held_bytes(self) -> int:
        """Memory the held batches take, sized from the newest one (``runtime.memory``)."""
        if not self._batches:
            return 0
        newest = self._batches[-1]
        if newest.payload is not None:
            return parsed_bytes(self.held_spans, newest.payload)
        size = sum(len(rs) + sum(len(w) for w in scopes) for rs, scopes in newest.wire or ())
        return self.held_spans * size // max(newest.spans, 1)


# The runs of every trace of a buffer that keeps no spans: shared, never appended to.
_NO_RUNS: list[Run] = []


def _hold_bytes_only(batch: HeldBatch, wires: list[list[ScopeWire | None]]) -> None:
    """Replaces the batch's message by its packed bytes, if every scope's bytes are at
    hand and can be packed."""
    payload = batch.payload
    assert payload is not None
    scopes_ids = iter(batch.trace_ids)
    pairs = [[(w, next(scopes_ids)) for w in scopes] for scopes in wires]
    if not all(w is not None and _packable(w, ids) for scopes in pairs for w, ids in scopes):
        return
    held: list[tuple[bytes, list[PackedScope]]] = []
    for rs, scopes in zip(payload.resource_spans, pairs, strict=True):
        rs.ClearField("scope_spans")  # the batch is this buffer's now
        packed = [PackedScope(w, ids) for w, ids in scopes if w is not None]
        held.append((rs.SerializeToString(), packed))
    batch.wire = held
    batch.payload = None
    batch.trace_ids = []


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
        self.buffer = TraceBuffer(
            wait,
            max_traces,
            self.is_decided,
            keep_spans=self.keeps_spans(),
            scan=self.scan,
            keep_trace_ids=self.filters_by_trace(),
        )
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # Subclasses implement these two.
    def judge(self, traces: list[HeldTrace]) -> None:
        raise NotImplementedError

    def prepare(self, batch: HeldBatch) -> ExportTraceServiceRequest | None:
        """The batch to send on (possibly filtered in place), or None to send nothing."""
        assert batch.payload is not None  # only a buffer that keeps no spans holds bytes
        return batch.payload

    # And may override these: what the buffer keeps of each trace.
    def keeps_spans(self) -> bool:
        """Whether judging needs each trace's spans (else only IDs, counts and flags)."""
        return True

    def filters_by_trace(self) -> bool:
        """Whether :meth:`prepare` needs each held span's trace ID (HeldBatch.trace_ids)."""
        return False

    def scan(self, scope_spans: ScopeSpans) -> ScopeScan:
        """Trace IDs of one ScopeSpans' spans and flags for some of them."""
        return read_trace_ids(scope_spans)

    def is_decided(self, trace_id: bytes) -> bool:
        return False

    def held_bytes(self) -> int:
        return self.buffer.held_bytes()

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
        self, traces: list[HeldTrace], batches: list[HeldBatch], raise_errors: bool
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
