"""Holds whole batches until the traces in them are complete enough to judge.

Used by the whole-trace processors (``perf_issues``, ``tail_sampling``). Batches are
held as they came or as their serialised bytes, never copied span by span: a trace is
judged ``wait`` seconds after its first span arrived, using every span of it held by
then, and a batch is released ``wait`` seconds after it arrived (by then every trace in
it has been judged). A held trace is its span count (and, where it has them, its flags
and where its spans are: runs of them by position, not span objects); traces due are
handed over as :class:`HeldTrace`. Spans of a trace already judged ("late spans") are
not indexed again; the caller decides what to do with them from its decision cache.

``max_traces`` bounds memory: past it the oldest batches are judged and released early
(counted in ``decided_early``).

A buffer that keeps no spans, or one told to pack them (``pack_spans``), holds each
ScopeSpans as its bytes and each span's trace and size (:class:`PackedScope`), not as
the parsed message (about 3.5 times the bytes). Compressed (``compress``, one zstd
frame), they take about a tenth of the bytes, as OTLP spans repeat their keys and most
values, and besides its share of them a held trace costs its entry in
:attr:`TraceBuffer.traces` (its ID and a small int). A judge that needs a packed
trace's spans parses them (:class:`SpanReader`); the few it changes are kept as edits
of their scope, spliced into the batch's bytes when it is released
(:func:`rebuild_request`).

A batch released towards the next whole-trace processor through fan-outs and
``forward`` connectors only (nothing between can change it, as in the default
configuration's ``perf_issues`` -> ``tail_sampling``) is handed on with what is known of
its bytes (:class:`ReleasedScope`): the next one does not serialise and walk them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from array import array
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, islice, repeat
from operator import add, sub
from typing import NamedTuple, Protocol

import zstandard
from google.protobuf import descriptor_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from otelkit.budgets.findings import service_name
from otelkit.collector.pdata._otlpjson_checked import varint
from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.pdata.wire import (
    scope_spans_layout,
    shadow_classes,
    span_field_starts,
)
from otelkit.collector.runtime.component import Consumer, CreateSettings, Host, Processor
from otelkit.collector.runtime.errors import ComponentError
from otelkit.collector.runtime.memory import parsed_bytes

# Where some of a trace's spans are: spans container (or packed scope), first index,
# end index, service.
Run = tuple["Sequence[Span] | PackedScope", int, int, str]


@dataclass(slots=True)
class HeldTrace:
    """A trace as it is judged. While held, a trace is only its span count in
    :attr:`TraceBuffer.traces` (and its flags and runs, where it has any): an object per
    held trace cost about 80 bytes more, a third of its packed spans."""

    trace_id: bytes
    first_seen: float
    # Where the trace's spans are, when the buffer keeps spans: runs of them in the
    # held batches. Span objects are made only when judged, so none stay alive (and
    # tracked by the garbage collector) while held.
    runs: list[Run] = field(default_factory=list)
    span_count: int = 0
    flags: int = 0  # what the buffer's scanner found in the trace's spans (bits)

    @property
    def spans(self) -> list[Span]:
        """The trace's spans (parsed copies, for packed runs: see :class:`SpanReader`)."""
        return SpanReader().spans(self)

    @property
    def services(self) -> list[str]:
        """Each span's service, parallel to :attr:`spans`."""
        return [service for _, begin, end, service in self.runs for _ in range(end - begin)]


class ScopeWire(NamedTuple):
    """A serialised ``ScopeSpans`` and where each of its spans' bytes start and end."""

    data: bytes
    starts: Sequence[int]
    ends: Sequence[int]
    # Whether every span's bytes begin with its 16-byte trace ID, where the walk told.
    led: bool | None = None


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
    index) and field size, and the ScopeSpans' bytes; or (not ``compressed``) those
    bytes as they came beside the rest, uncompressed: about 7 times the memory, and
    none of the time to compress, decompress or copy them.

    Small numbers rather than offsets and per-span IDs: they compress to about three
    bytes per span, where absolute offsets took seven, and a span's trace is found
    without reading its bytes. Spans a judge changed are kept apart (:attr:`edits`)
    until the scope's bytes are asked for again (:meth:`data`)."""

    __slots__ = ("_plain", "_starts", "edits", "frame", "led", "resource", "spans")

    def __init__(
        self,
        wire: ScopeWire,
        trace_ids: list[bytes],
        compressed: bool = True,
        resource: bytes = b"",
    ) -> None:
        self.spans = len(trace_ids)
        # Its ResourceSpans' own fields, serialised (shared by the batch's scopes): what a
        # span taken out of the scope (:meth:`remove`) needs to be sent on its own.
        self.resource = resource
        self._plain = None if compressed else wire.data
        # Uncompressed (held briefly, released whole): where each span's bytes start, as
        # the walk found, so the release need not work it out span by span.
        self._starts = None if compressed else array("I", wire.starts)
        self.led = wire.led
        # span index -> its bytes now (None: taken out, see :meth:`remove`)
        self.edits: dict[int, bytes | None] | None = None
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
        if not compressed:
            self.frame = b"".join(parts[:1] + parts[2:])
            return
        frame = _COMPRESS(b"".join(parts))
        # zstandard allocates the bound of the frame's size and shrinks it in place, so
        # the allocator keeps the whole block: an exact copy lets it go.
        self.frame = memoryview(frame).tobytes()

    def entries(self) -> ScopeEntries:
        """The ScopeSpans' bytes as packed (without edits), its spans' fields and traces."""
        plain = self._plain
        raw = _DECOMPRESS(self.frame) if plain is None else self.frame
        traces_type, sizes_type, count, first = _HEADER.unpack_from(raw)
        traces, sizes = array(traces_type.decode()), array(sizes_type.decode())
        sizes_at = len(raw) - self.spans * sizes.itemsize
        traces_at = sizes_at - self.spans * traces.itemsize
        ids_at = traces_at - 16 * count
        trace_ids = [raw[k : k + 16] for k in range(ids_at, traces_at, 16)]
        traces.frombytes(raw[traces_at:sizes_at])
        sizes.frombytes(raw[sizes_at:])
        bounds = array("I", accumulate(sizes, initial=first))
        data = raw[_HEADER.size : ids_at] if plain is None else plain
        return ScopeEntries(data, bounds, trace_ids, traces)

    def unpack(self) -> tuple[ScopeWire, list[bytes]]:
        """The ScopeSpans' bytes, where each span's own bytes are, and its trace ID."""
        data, bounds, trace_ids, traces = self.entries()
        return _scope_wire(data, bounds), list(map(trace_ids.__getitem__, traces))

    def released(self, entries: ScopeEntries | None = None) -> ReleasedScope:
        """The ScopeSpans as it is released (edits in place), for the next whole-trace
        processor: its bytes, where its spans are, and their traces."""
        data, bounds, trace_ids, traces = entries or self.entries()
        if self.edits and None in self.edits.values():
            data, bounds, traces = self._without_removed(
                ScopeEntries(data, bounds, trace_ids, traces)
            )
            wire = _scope_wire(data, bounds)
        elif self._starts is None:
            wire = _scope_wire(data, bounds)
        elif self.edits:
            data = self.data(ScopeEntries(data, bounds, trace_ids, traces))
            wire = ScopeWire(data, *self._moved(bounds, self._starts))
        else:
            wire = ScopeWire(data, self._starts, bounds[1:])
        # Edited spans are serialised by protobuf: their 16-byte trace ID comes first.
        led = self.led if self.led is not None else _led(wire)
        return ReleasedScope(wire, list(map(trace_ids.__getitem__, traces)), led)

    def _moved(self, bounds: array[int], starts: array[int]) -> tuple[array[int], array[int]]:
        """Where each span's bytes start and end once the edits are in: each stretch
        after an edited span moves by how much the edits so far grew (shifted in C)."""
        ends, new_starts = array("I", bounds[1:]), array("I", starts)
        edits = sorted((self.edits or {}).items())
        shift = 0
        for n, (k, new) in enumerate(edits):
            assert new is not None  # a scope with spans taken out goes _without_removed
            header = len(_SPAN_TAG) + len(varint(len(new)))
            new_starts[k] = (bounds[k] + shift) + header
            shift += header + len(new) - (bounds[k + 1] - bounds[k])
            upto = edits[n + 1][0] if n + 1 < len(edits) else len(starts)
            ends[k:upto] = array("I", map(add, bounds[k + 1 : upto + 1], repeat(shift)))
            new_starts[k + 1 : upto] = array("I", map(add, starts[k + 1 : upto], repeat(shift)))
        return new_starts, ends

    def _without_removed(self, entries: ScopeEntries) -> tuple[bytes, array[int], array[int]]:
        """The scope's bytes with its edits (spans taken out gone), where its remaining
        spans' fields begin (and the last ends), and each one's trace. Rare (a trace
        taken out to wait for its root): worked out span by span."""
        data = self.data(entries)
        edits = self.edits or {}
        bounds, traces = array("I", [entries.bounds[0]]), array(entries.traces.typecode)
        for k in range(self.spans):
            if k in edits:
                new = edits[k]
                if new is None:
                    continue
                size = len(_SPAN_TAG) + len(varint(len(new))) + len(new)
            else:
                size = entries.bounds[k + 1] - entries.bounds[k]
            bounds.append(bounds[-1] + size)
            traces.append(entries.traces[k])
        return data, bounds, traces

    def kept(self) -> int:
        """How many of its spans it still holds (not taken out)."""
        edits = self.edits
        return self.spans - (sum(e is None for e in edits.values()) if edits else 0)

    def remove(self, index: int) -> None:
        """Takes span ``index`` out of :meth:`data` (and of what :meth:`released` tells)."""
        if self.edits is None:
            self.edits = {}
        self.edits[index] = None

    def edit(self, index: int, span: Span) -> None:
        """Replaces span ``index`` by ``span`` (as it is now) in :meth:`data`."""
        if self.edits is None:
            self.edits = {}
        self.edits[index] = span.SerializeToString()

    def data(self, entries: ScopeEntries | None = None) -> bytes:
        """The ScopeSpans' bytes, with the edited spans' fields in place of theirs
        (``entries``: :meth:`entries`, if at hand)."""
        data, bounds, _, _ = entries or self.entries()
        if not self.edits:
            return data
        pieces: list[bytes] = []
        pos = 0
        for k in sorted(self.edits):
            new = self.edits[k]
            pieces.append(data[pos : bounds[k]])
            if new is not None:
                pieces += (_SPAN_TAG, varint(len(new)), new)
            pos = bounds[k + 1]
        pieces.append(data[pos:])
        return b"".join(pieces)

    def __len__(self) -> int:
        held = len(self.frame) + sum(len(e or b"") for e in (self.edits or {}).values())
        starts = len(self._starts) * self._starts.itemsize if self._starts is not None else 0
        return held + len(self._plain or b"") + starts


# The frame's header: its two arrays' item types, how many traces, where the first
# span's field begins.
_HEADER = struct.Struct("<ccII")
# A span's field size up to which its tag and length take 2, 3, 4, 5 bytes.
_FIELD_HEADS = (129, 16386, 2097155, 268435460)
_SPAN_TAG = b"\x12"  # ScopeSpans.spans: field 2, bytes
_SCOPE_SPANS_TAG = b"\x12"  # ResourceSpans.scope_spans: field 2, bytes
_RESOURCE_SPANS_TAG = b"\x0a"  # ExportTraceServiceRequest.resource_spans: field 1, bytes


def _item_type(largest: int, smallest: str = "B") -> str:
    """The smallest array item type, from ``smallest`` up, that holds ``largest``."""
    for code in "BHI"[("BHI".index(smallest)) :]:
        if largest < 1 << (8 * array(code).itemsize):
            return code
    raise ValueError(f"{largest} does not fit four bytes")


def _scope_wire(data: bytes, bounds: Sequence[int]) -> ScopeWire:
    """Where each span's own bytes start and end, from where its fields begin (and the
    last ends): past each field's tag and length."""
    heads, ends = bounds[:-1], bounds[1:]
    starts = [
        at + 2 + bisect_left(_FIELD_HEADS, end - at) for at, end in zip(heads, ends, strict=True)
    ]
    return ScopeWire(data, array("I", starts), ends)


def _led(wire: ScopeWire) -> bool:
    """As the walk of tail sampling's scan: whether every span is 18 bytes or more, led
    by Span.trace_id's tag (field 1, bytes) and a length of 16."""
    data = wire.data
    return all(
        end - at >= 18 and data[at] == 0x0A and data[at + 1] == 0x10
        for at, end in zip(wire.starts, wire.ends, strict=True)
    )


class ReleasedScope(NamedTuple):
    """A ScopeSpans of a batch a whole-trace processor releases, as it knows it: the next
    one (``tail_sampling`` after ``perf_issues``) need not serialise and walk it again."""

    wire: ScopeWire
    trace_ids: list[bytes]  # each span's
    led: bool  # whether every span's bytes begin with its 16-byte trace ID


# Per ResourceSpans of a released batch, its ScopeSpans in order.
ReleasedScopes = list[list[ReleasedScope]]


def rebuild_request(
    wire: list[tuple[bytes, list[PackedScope]]],
    reader: SpanReader | None = None,
    released: ReleasedScopes | None = None,
) -> ExportTraceServiceRequest:
    """The request a held batch's bytes stand for (with its spans' edits), parsed once;
    scopes the ``reader`` unpacked are not unpacked again. With ``released``, each
    ScopeSpans' :class:`ReleasedScope` is appended to it."""
    pieces: list[bytes] = []  # joined once: the spans' bytes are copied once
    for header, all_scopes in wire:
        scopes = [packed for packed in all_scopes if packed.kept()]
        if not scopes:
            continue  # every span of it taken out to wait for its trace's root
        body = [header]
        if released is not None:
            released.append([])
        for packed in scopes:
            entries = reader.take_entries(packed) if reader is not None else None
            if released is not None:
                released[-1].append(packed.released(entries))
                data = released[-1][-1].wire.data
            else:
                data = packed.data(entries)
            body += (_SCOPE_SPANS_TAG, varint(len(data)), data)
        pieces += (_RESOURCE_SPANS_TAG, varint(sum(len(b) for b in body)), *body)
    request = ExportTraceServiceRequest()
    request.ParseFromString(b"".join(pieces))
    return request


class SpanReader:
    """Spans of held traces as messages: the held batches' own span objects, or spans
    parsed from packed scopes (each scope unpacked once per reader). A parsed span is a
    copy: :meth:`write_back` puts the changes made to it into its scope's bytes."""

    def __init__(self) -> None:
        self._entries: dict[PackedScope, ScopeEntries] = {}
        # id(span) -> (span, its scope, its index), for spans parsed here
        self._origins: dict[int, tuple[Span, PackedScope, int]] = {}

    def spans(self, trace: HeldTrace) -> list[Span]:
        """The trace's spans in order; those in packed scopes parsed together, as one
        ScopeSpans of their fields (a message per span would cost an arena each)."""
        packed_runs = [(c, b, e) for c, b, e, _ in trace.runs if isinstance(c, PackedScope)]
        if len(packed_runs) < len(trace.runs):
            return self._mixed_spans(trace)
        fields: list[bytes] = []  # each run's span fields: tag, length, bytes
        for packed, begin, end in packed_runs:
            data, bounds, _, _ = self._entries_of(packed)
            fields.append(data[bounds[begin] : bounds[end]])
        parsed = list(ScopeSpans.FromString(b"".join(fields)).spans)
        # Where each came from, recorded without Python code per span.
        scopes = chain.from_iterable(
            repeat(packed, end - begin) for packed, begin, end in packed_runs
        )
        indexes = chain.from_iterable(range(begin, end) for _, begin, end in packed_runs)
        origins = zip(parsed, scopes, indexes, strict=True)
        self._origins.update(zip(map(id, parsed), origins, strict=True))
        return parsed

    def _mixed_spans(self, trace: HeldTrace) -> list[Span]:
        """:meth:`spans` of a trace some of whose runs are held messages."""
        spans: list[Span | None] = []
        fields: list[bytes] = []
        origins: list[tuple[int, PackedScope, int]] = []  # its place in spans, scope, index
        for container, begin, end, _ in trace.runs:
            if not isinstance(container, PackedScope):
                spans += container[begin:end]
                continue
            data, bounds, _, _ = self._entries_of(container)
            fields.append(data[bounds[begin] : bounds[end]])
            for k in range(begin, end):
                origins.append((len(spans), container, k))
                spans.append(None)
        if fields:
            parsed = ScopeSpans.FromString(b"".join(fields)).spans
            for (at, container, k), span in zip(origins, parsed, strict=True):
                spans[at] = span
                self._origins[id(span)] = (span, container, k)
        return [span for span in spans if span is not None]

    def _entries_of(self, packed: PackedScope) -> ScopeEntries:
        entries = self._entries.get(packed)
        if entries is None:
            entries = self._entries[packed] = packed.entries()
        return entries

    def take_entries(self, packed: PackedScope) -> ScopeEntries | None:
        """The scope's entries if this reader unpacked them (and forgets them)."""
        return self._entries.pop(packed, None)

    def write_back(self, spans: Iterable[Span]) -> None:
        """Keeps these spans as they are now in the bytes they were parsed from (spans of
        held messages are those messages' own: nothing to do)."""
        for span in spans:
            origin = self._origins.get(id(span))
            if origin is not None:
                _, packed, index = origin
                packed.edit(index, span)


class ScopeScan(NamedTuple):
    """What a scanner reports about one ``ScopeSpans``."""

    trace_ids: list[bytes]  # each span's
    flags: dict[int, int]  # span index -> flag bits, for the few spans that have any
    wire: ScopeWire | None = None  # its bytes, if the scanner serialised it


@dataclass(slots=True)
class HeldBatch:
    # The batch as it came, or (when the buffer packs and the scanner gave every
    # scope's bytes) only its bytes: per ResourceSpans, its own fields serialised
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
# A scanner of a ScopeSpans whose bytes the whole-trace processor before knows already.
ReleasedScanner = Callable[[ScopeSpans, ReleasedScope], ScopeScan]


def read_trace_ids(scope_spans: ScopeSpans) -> ScopeScan:
    """The default scanner: trace IDs only."""
    return ScopeScan([span.trace_id for span in scope_spans.spans], {})


def read_wire(scope_spans: ScopeSpans) -> ScopeScan:
    """The scanner of a buffer that packs: trace IDs and the ScopeSpans' bytes (no bytes
    when they cannot be walked: the batch is then held as a message)."""
    data = scope_spans.SerializeToString()
    spans = scope_spans.spans
    try:
        starts, ends, found_ids = scope_spans_layout(data)
    except ValueError:
        starts = []
    if len(starts) != len(spans):
        return read_trace_ids(scope_spans)
    ids = [
        trace_id if trace_id is not None else spans[k].trace_id
        for k, trace_id in enumerate(found_ids)
    ]
    led = None not in found_ids
    return ScopeScan(ids, {}, ScopeWire(data, starts, ends, led))


def _packable(wire: ScopeWire, trace_ids: list[bytes]) -> bool:
    """Whether each span's trace ID is 16 bytes (each trace's is held once, as 16 bytes)
    and the offsets fit four bytes. Otherwise the batch is held as a message."""
    if len(wire.data) >= 1 << 32 or len(wire.starts) != len(trace_ids):
        return False
    return len(b"".join(trace_ids)) == 16 * len(trace_ids)


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
        pack_spans: bool = False,
        compress: bool = True,
        scan_released: ReleasedScanner | None = None,
        max_wait: float = 0.0,
    ) -> None:
        self.wait = wait
        # Longest a trace may wait for its root span (0: judged at ``wait``, whatever
        # has arrived; see :meth:`hold_unfinished`).
        self.max_wait = max_wait
        self.max_traces = max_traces
        self.keep_spans = keep_spans
        self.pack_spans = pack_spans  # hold packed bytes even when judging needs spans
        self.compress = compress  # packed bytes as zstd frames (else as they are)
        self.keep_trace_ids = keep_trace_ids  # of every span, for the release
        self._is_decided = is_decided
        self._clock = clock
        self._scan = scan
        self._scan_released = scan_released
        # The batch a whole-trace processor before this one is handing on, and its
        # scopes as it knows them (see :meth:`expect`).
        self._expected: tuple[ExportTraceServiceRequest, ReleasedScopes] | None = None
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
        # Traces past their wait whose root span has not arrived (see hold_unfinished).
        self._waiting: dict[bytes, WaitingTrace] = {}
        self.waited_out = 0  # traces judged at max_wait without their root span

    @property
    def reads_released(self) -> bool:
        """Whether :meth:`expect` saves this buffer work."""
        return self._scan_released is not None

    def expect(
        self, payload: ExportTraceServiceRequest | None, released: ReleasedScopes | None = None
    ) -> None:
        """The next :meth:`add` of this very batch (unchanged on its way: only fan-outs
        and ``forward`` connectors between) scans these scopes instead of its own
        serialisation of them; None forgets them."""
        self._expected = None if payload is None or released is None else (payload, released)

    def _scans(self, payload: ExportTraceServiceRequest) -> list[list[ScopeScan]]:
        expected, self._expected = self._expected, None
        if expected is None or expected[0] is not payload or self._scan_released is None:
            return [[self._scan(ss) for ss in rs.scope_spans] for rs in payload.resource_spans]
        scan = self._scan_released
        return [
            [scan(ss, known) for ss, known in zip(rs.scope_spans, scopes, strict=True)]
            for rs, scopes in zip(payload.resource_spans, expected[1], strict=True)
        ]

    def add(self, payload: ExportTraceServiceRequest) -> None:
        now = self._clock()
        scans = self._scans(payload)
        services = [
            service_name(rs.resource.attributes) if self.keep_spans else ""
            for rs in payload.resource_spans
        ]
        wire = _pack(payload, scans, self.compress) if self.packs else None
        count = 0
        trace_ids: list[list[bytes]] = []
        traces_before = len(self.traces)
        for rs_index, scopes in enumerate(scans):
            for ss_index, (ids, flags, _) in enumerate(scopes):
                if self.keep_trace_ids and wire is None:
                    trace_ids.append(ids)
                count += len(ids)
                if not ids:
                    continue
                spans: Sequence[Span] | PackedScope | None = None
                if wire is not None and self.keep_spans:
                    spans = wire[rs_index][1][ss_index]
                elif self.keep_spans:
                    spans = payload.resource_spans[rs_index].scope_spans[ss_index].spans
                self._index(spans, ids, flags, services[rs_index])
        if len(self.traces) > traces_before:
            self._first_seen.append((now, len(self.traces) - traces_before))
        batch = HeldBatch(None if wire is not None else payload, now, count, trace_ids, wire)
        self._batches.append(batch)
        self.held_spans += count

    @property
    def packs(self) -> bool:
        """Whether batches are held as packed bytes (when every scope's can be)."""
        return self.pack_spans or (not self.keep_spans and self.keep_trace_ids)

    def _index(
        self,
        spans: Sequence[Span] | PackedScope | None,
        ids: list[bytes],
        flags: dict[int, int],
        service: str,
    ) -> None:
        """Adds one ScopeSpans' spans to their traces: counted per trace, not span by span
        (``spans``: where they are held, when the buffer keeps spans)."""
        traces, waiting = self.traces, self._waiting
        for trace_id, n in Counter(ids).items():
            held = traces.get(trace_id)
            if held is None:
                if waiting and trace_id in waiting:
                    waiting[trace_id].span_count += n
                    waiting[trace_id].grew = True
                    continue
                if self._is_decided(trace_id):
                    continue
                held = 0
                if spans is not None:
                    self._runs[trace_id] = []
            traces[trace_id] = held + n
        if spans is not None:
            self._add_runs(spans, ids, service)
        for k, bits in flags.items():
            trace_id = ids[k]
            if trace_id in traces:
                self._flags[trace_id] = self._flags.get(trace_id, 0) | bits
            elif waiting and trace_id in waiting:
                waiting[trace_id].flags |= bits

    def _add_runs(
        self, spans: Sequence[Span] | PackedScope, ids: list[bytes], service: str
    ) -> None:
        """Records where each held trace's spans are, a run of same-trace spans at once."""
        n = len(ids)
        cuts = [k for k in range(1, n) if ids[k] != ids[k - 1]]
        cuts.append(n)
        begin = 0
        waiting = self._waiting
        for end in cuts:
            runs = self._runs.get(ids[begin])
            if runs is None and waiting and ids[begin] in waiting:
                runs = waiting[ids[begin]].runs
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
        if self._waiting:
            released += self._waiting_due(now, flush, ready)
            self._take_out_waiting()
        while self._batches and self._batches[0].arrival <= cutoff:
            batch = self._batches.popleft()
            self.held_spans -= batch.spans
            released.append(batch)
        return ready, released

    def hold_unfinished(self, traces: list[HeldTrace], flush: bool = False) -> list[HeldTrace]:
        """Of ``traces`` (due now), those to judge now. A trace one of whose spans still
        waits for a parent in its own process is a request still running (or exported
        in parts): judged now, a detector would see part of it (three of four
        sequential calls, say). It waits instead, until no span of it waits for such a
        parent (its root has come), up to ``max_wait`` after its first span arrived, its
        spans taken out of the batches released meanwhile. A trace whose top span's
        parent is in another process (a caller that sends its spans elsewhere) does not
        wait. Traces with a span the scanner flagged ``ROOT_SPAN`` (no parent) are
        judged without being read; the others are parsed to tell."""
        if self.max_wait <= 0 or self.wait <= 0 or flush:
            return traces
        now = self._clock()
        judge_now: list[HeldTrace] = []
        families: dict[PackedScope, Sequence[Family]] = {}  # each scope read once
        for trace in traces:
            if (
                trace.flags & ROOT_SPAN
                or trace.first_seen <= now - self.max_wait
                or trace.first_seen > now - self.wait  # due early: bounded memory
                or len(self._waiting) >= self.max_traces
                or not trace.runs
                or not _all_packed(trace.runs)
                or not _unfinished(_families(trace.runs, families))
            ):
                judge_now.append(trace)
                continue
            self._waiting[trace.trace_id] = WaitingTrace(
                trace.first_seen, trace.span_count, trace.flags, list(trace.runs)
            )
        self._take_out_waiting()
        return judge_now

    def _waiting_due(self, now: float, flush: bool, ready: list[HeldTrace]) -> list[HeldBatch]:
        """Waiting traces whose root has arrived, or whose time is up, join ``ready``;
        the spans taken out of them come back as a batch of their own, to release."""
        batches: list[HeldBatch] = []
        for trace_id, waiting in list(self._waiting.items()):
            if waiting.grew and not waiting.flags & ROOT_SPAN:
                # Its root may have come unflagged, or its missing parents arrived.
                waiting.grew = False
                if not _unfinished(waiting.families()):
                    waiting.flags |= ROOT_SPAN
            rooted = waiting.flags & ROOT_SPAN
            timed_out = waiting.first_seen <= now - self.max_wait
            # Spans of it in a batch held as a message cannot be taken out: judged now.
            unpacked = not _all_packed(waiting.runs)
            if not (flush or rooted or timed_out or unpacked):
                continue
            del self._waiting[trace_id]
            if timed_out and not rooted:
                self.waited_out += 1
            runs = list(waiting.runs)
            if waiting.taken:
                batch, taken_runs = _taken_batch(trace_id, waiting.taken, now, self.keep_trace_ids)
                batches.append(batch)
                runs[:0] = taken_runs
            ready.append(
                HeldTrace(trace_id, waiting.first_seen, runs, waiting.span_count, waiting.flags)
            )
        return batches

    def _take_out_waiting(self) -> None:
        """Takes the waiting traces' spans out of the held batches (as they are: their
        fields' bytes, with their resource and scope), so the batches can be released."""
        entries: dict[PackedScope, ScopeEntries] = {}
        for waiting in self._waiting.values():
            for packed, begin, end, service in waiting.runs:
                if not isinstance(packed, PackedScope):
                    continue  # judged at the next due (see _waiting_due)
                known = entries.get(packed)
                if known is None:
                    known = entries[packed] = packed.entries()
                data, bounds = known.data, known.bounds
                waiting.taken.append(
                    TakenRun(
                        packed.resource,
                        data[: bounds[0]],
                        data[bounds[-1] :],
                        data[bounds[begin] : bounds[end]],
                        service,
                    )
                )
                for k in range(begin, end):
                    packed.remove(k)
            waiting.runs[:] = [run for run in waiting.runs if not isinstance(run[0], PackedScope)]

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
        """Memory the held batches take, sized from the newest one (``runtime.memory``),
        and the held traces' entries (packed, these take more than the bytes)."""
        waiting = sum(
            HELD_TRACE_BYTES + sum(len(taken.spans) for taken in trace.taken)
            for trace in self._waiting.values()
        )
        if not self._batches:
            return waiting
        entries = waiting + len(self.traces) * HELD_TRACE_BYTES
        if self.keep_spans:
            entries += self.held_spans * HELD_RUN_BYTES
        newest = self._batches[-1]
        if newest.payload is not None:
            return entries + parsed_bytes(self.held_spans, newest.payload)
        size = sum(len(rs) + sum(len(w) for w in scopes) for rs, scopes in newest.wire or ())
        return entries + self.held_spans * size // max(newest.spans, 1)


# Measured with tracemalloc on interleaved traces (benchmarks/collector_throughput.py's
# app traffic, about six spans a trace): a held trace's entry (its ID and count in
# TraceBuffer.traces, about 110 bytes, and its list of runs where spans are kept: the
# larger is counted) and, when spans are kept, a run per span at most.
HELD_TRACE_BYTES = 160
HELD_RUN_BYTES = 100

# HeldTrace.flags bit the buffer sets itself when it waits for roots: a span of the
# trace without a parent (its root) has arrived. Scanners' own bits are the low ones.
ROOT_SPAN = 1 << 30
# Span.flags bits (OTLP): whether the span's parent is known to be in another process.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_ENTRY_KINDS = (2, 5)  # SPAN_KIND_SERVER, SPAN_KIND_CONSUMER


class Family(Protocol):
    """What :func:`_unfinished` reads of a span (a ``Span`` has it too)."""

    span_id: bytes
    parent_span_id: bytes
    kind: int
    flags: int


_F = descriptor_pb2.FieldDescriptorProto
# A ScopeSpans read for its spans' IDs, parents, kinds and flags only (in C, the rest
# skipped): a span's attributes are most of its bytes.
_FAMILIES = shadow_classes(
    "otelkit.families",
    {
        "Family": [
            ("span_id", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("parent_span_id", 4, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("kind", 6, _F.TYPE_INT32, _F.LABEL_OPTIONAL, ""),
            ("flags", 16, _F.TYPE_FIXED32, _F.LABEL_OPTIONAL, ""),
        ],
        "Families": [("spans", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Family")],
    },
)["Families"]


def _all_packed(runs: Sequence[Run]) -> bool:
    """Whether every run is in a packed scope: only those can be taken out to wait."""
    return all(isinstance(run[0], PackedScope) for run in runs)


def _families(runs: Sequence[Run], read: dict[PackedScope, Sequence[Family]]) -> list[Family]:
    """The spans of packed runs as :class:`Family` (``read``: scopes read so far)."""
    found: list[Family] = []
    for packed, begin, end, _ in runs:
        if not isinstance(packed, PackedScope):
            found += packed[begin:end]
            continue
        scope = read.get(packed)
        if scope is None:
            scope = read[packed] = _FAMILIES.FromString(packed.entries().data).spans
        found += scope[begin:end]
    return found


def _unfinished(spans: Sequence[Family]) -> bool:
    """Whether a span waits for a parent in its own process that has not arrived (the
    parent ends later, so its request is still running or exported in parts). Where a
    sender does not say whether a parent is remote, a server or consumer span's is."""
    ids = {span.span_id for span in spans}
    for span in spans:
        parent = span.parent_span_id
        if not parent or parent in ids:
            continue
        if span.flags & _HAS_IS_REMOTE:
            remote = bool(span.flags & _IS_REMOTE)
        else:
            remote = span.kind in _ENTRY_KINDS
        if not remote:
            return True
    return False


class TakenRun(NamedTuple):
    """Spans of a waiting trace taken out of a held scope: their fields' bytes, and what
    sends them on their own (their resource, their scope's fields before and after)."""

    resource: bytes
    scope_head: bytes
    scope_tail: bytes
    spans: bytes
    service: str


@dataclass(slots=True)
class WaitingTrace:
    """A trace past its wait that waits for its root span (see
    :meth:`TraceBuffer.hold_unfinished`): its spans still in held batches (``runs``) and
    those taken out of batches released meanwhile (``taken``)."""

    first_seen: float
    span_count: int
    flags: int
    runs: list[Run]
    taken: list[TakenRun] = field(default_factory=list)
    grew: bool = False  # spans of it arrived since it was last looked at

    def families(self) -> list[Family]:
        """Its spans' places in the trace: those taken out, then those still held."""
        taken = [_FAMILIES.FromString(run.spans).spans for run in self.taken]
        return [*chain.from_iterable(taken), *_families(self.runs, {})]


def _taken_batch(
    trace_id: bytes, taken: list[TakenRun], now: float, keep_trace_ids: bool
) -> tuple[HeldBatch, list[Run]]:
    """A request of a waiting trace's taken-out spans (a ResourceSpans per run), held as
    a message, and the runs of its spans for the judge (changes made to them are the
    request's own)."""
    pieces: list[bytes] = []
    for run in taken:
        scope = run.scope_head + run.spans + run.scope_tail
        resource = (run.resource, _SCOPE_SPANS_TAG, varint(len(scope)), scope)
        pieces += (_RESOURCE_SPANS_TAG, varint(sum(map(len, resource))), *resource)
    request = ExportTraceServiceRequest.FromString(b"".join(pieces))
    runs: list[Run] = []
    trace_ids: list[list[bytes]] = []
    for rs, run in zip(request.resource_spans, taken, strict=True):
        spans = rs.scope_spans[0].spans
        runs.append((spans, 0, len(spans), run.service))
        if keep_trace_ids:
            trace_ids.append([trace_id] * len(spans))
    count = sum(end for _, _, end, _ in runs)
    return HeldBatch(request, now, count, trace_ids), runs


# The runs of every trace of a buffer that keeps no spans: shared, never appended to.
_NO_RUNS: list[Run] = []


def _pack(
    payload: ExportTraceServiceRequest, scans: list[list[ScopeScan]], compressed: bool
) -> list[tuple[bytes, list[PackedScope]]] | None:
    """The batch's packed bytes, if every scope's bytes are at hand and can be packed:
    per ResourceSpans, its own fields serialised without scope_spans, and each
    ScopeSpans packed. The message is emptied of its spans (the batch is the buffer's)."""
    if not all(
        scan.wire is not None and _packable(scan.wire, scan.trace_ids)
        for scopes in scans
        for scan in scopes
    ):
        return None
    held: list[tuple[bytes, list[PackedScope]]] = []
    for rs, scopes in zip(payload.resource_spans, scans, strict=True):
        rs.ClearField("scope_spans")
        header = rs.SerializeToString()
        packed = [
            PackedScope(scan.wire, scan.trace_ids, compressed, header)
            for scan in scopes
            if scan.wire is not None
        ]
        held.append((header, packed))
    return held


class BufferedTraceProcessor(Processor):
    """A traces processor that judges whole traces: holds batches in a TraceBuffer,
    judges due traces on a timer, and releases batches downstream in arrival order.

    Released batches are handed on from the timer task, so a downstream refusal cannot
    reach the sender: it is logged and the spans are counted as dropped.
    With ``wait == 0`` nothing is held: each batch is judged on its own, in line.
    """

    def __init__(
        self,
        settings: CreateSettings,
        next_consumer: Consumer,
        wait: float,
        max_traces: int,
        max_wait: float = 0.0,
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
            pack_spans=self.packs_spans(),
            compress=self.compresses_held_bytes(),
            scan_released=self.scan_released if self.reads_released_scopes() else None,
            max_wait=max_wait if wait > 0 else 0.0,
        )
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # While traces are judged and batches released: the scopes unpacked to judge
        # are not unpacked again to release.
        self.reader: SpanReader | None = None
        # The whole-trace processor this one's batches reach unchanged, if it reads
        # released scopes (found on the first release: the graph is built by then).
        self._next_buffer: TraceBuffer | None = None
        self._next_looked_up = False
        self._released: ReleasedScopes | None = None  # of the batch being prepared

    # Subclasses implement these two.
    def judge(self, traces: list[HeldTrace]) -> None:
        raise NotImplementedError

    def prepare(self, batch: HeldBatch) -> ExportTraceServiceRequest | None:
        """The batch to send on (possibly filtered in place), or None to send nothing."""
        if batch.wire is not None:
            if self._next_buffer is not None:
                self._released = []
            return rebuild_request(batch.wire, self.reader, self._released)
        assert batch.payload is not None
        return batch.payload

    # And may override these: what the buffer keeps of each trace.
    def keeps_spans(self) -> bool:
        """Whether judging needs each trace's spans (else only IDs, counts and flags)."""
        return True

    def packs_spans(self) -> bool:
        """Whether batches are held packed even though judging needs spans (read them
        with a :class:`SpanReader`)."""
        return False

    def compresses_held_bytes(self) -> bool:
        """Whether packed bytes are held compressed: worth it for a long wait; a judge
        that reads spans of most batches after a short one unpacks them anyway."""
        return True

    def filters_by_trace(self) -> bool:
        """Whether :meth:`prepare` needs each held span's trace ID (HeldBatch.trace_ids)."""
        return False

    def scan(self, scope_spans: ScopeSpans) -> ScopeScan:
        """Trace IDs of one ScopeSpans' spans and flags for some of them."""
        return read_trace_ids(scope_spans)

    def reads_released_scopes(self) -> bool:
        """Whether :meth:`scan_released` is worth the whole-trace processor before this
        one's keeping its batches' scopes as it knows them."""
        return False

    def scan_released(self, scope_spans: ScopeSpans, released: ReleasedScope) -> ScopeScan:
        """:meth:`scan`, from what the processor before knows of these bytes."""
        return self.scan(scope_spans)

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
            await self._send(traces, batches, raise_errors=False, flush=flush)

    async def _send(
        self,
        traces: list[HeldTrace],
        batches: list[HeldBatch],
        raise_errors: bool,
        flush: bool = True,
    ) -> None:
        self.reader = SpanReader()
        try:
            await self._judge_and_release(traces, batches, raise_errors, flush)
        finally:
            self.reader = None

    async def _judge_and_release(
        self, traces: list[HeldTrace], batches: list[HeldBatch], raise_errors: bool, flush: bool
    ) -> None:
        traces = self.buffer.hold_unfinished(traces, flush)
        if traces:
            try:
                self.judge(traces)
            except Exception:  # a fault in judging costs its findings, not the spans
                self._settings.logger.exception(
                    "%s: judging %d traces", self._settings.label, len(traces)
                )
        if not self._next_looked_up:
            self._next_buffer = _buffer_reached_unchanged(self._next)
            self._next_looked_up = True
        for batch in batches:
            self._released = None
            out = self.prepare(batch)
            if out is None or not out.resource_spans:
                continue
            n = count_items(out)  # before: what follows may take the batch apart
            try:
                await self._hand_on(out)
            except Exception as exc:  # a component's fault included: the next batch goes on
                if raise_errors:
                    raise
                self._settings.telemetry.processor_dropped(str(self._settings.id), Signal.TRACES, n)
                self._settings.logger.warning(
                    "%s: %d spans dropped downstream: %s",
                    self._settings.label,
                    n,
                    exc if isinstance(exc, ComponentError) else f"{type(exc).__name__}: {exc}",
                )

    async def _hand_on(self, out: ExportTraceServiceRequest) -> None:
        """Sends the batch on, telling the whole-trace processor it reaches unchanged
        what is known of its scopes."""
        following = self._next_buffer
        if following is None or self._released is None:
            await self._next.consume(out)
            return
        following.expect(out, self._released)
        try:
            await self._next.consume(out)
        finally:
            following.expect(None)
            self._released = None

    async def _tick(self) -> None:
        """Releases what is due, for good: a timer that stopped on an error would hold
        every later span until the memory limiter refused all traces."""
        period = min(max(self.buffer.wait / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.release()
            except Exception:
                self._settings.logger.exception("%s: releasing held spans", self._settings.label)


def _buffer_reached_unchanged(consumer: object) -> TraceBuffer | None:
    """The buffer of the whole-trace processor that reading ``consumer`` leads to through
    fan-outs (as their last consumer, which gets the batch itself) and ``forward``
    connectors only, if it reads released scopes: nothing between can change the batch
    (a fan-out shares it only with consumers that do not change it)."""
    for _ in range(_MAX_HOPS):
        if isinstance(consumer, BufferedTraceProcessor):
            buffer = consumer.buffer
            return buffer if buffer.reads_released else None
        consumer = getattr(consumer, "hands_on_unchanged", None)
        if consumer is None:
            return None
    return None


_MAX_HOPS = 8  # fan-outs and connectors followed at most
