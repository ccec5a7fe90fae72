"""Trace-aware routing between worker processes.

The kernel spreads connections over the workers, so the spans of one trace arrive in
any of them. Each trace has one owner, ``crc32(trace_id) % N``: the receiving worker
splits every traces request by owner, runs its own share and forwards the others to
their owners, so tail sampling, budgets and performance-issue detection always see a
whole trace in one process. Log records with a trace ID follow their trace's owner (the
rest stay where they arrived); metrics go by resource, so each resource's series live in
one worker and the supervisor's one scrape view can add the workers' series up.

The sender is answered only once every share was accepted: a refusal from any owner
is the sender's refusal (retryable stays retryable), so a success is still a promise.
A request whose shares were partly accepted is retried whole by the sender, so those
items may arrive twice, as when one of several pipelines refuses in a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, runtime_checkable

from otelkit.collector.pdata._otlpjson_checked import varint
from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.pdata.split import LAYOUT, append
from otelkit.collector.pdata.wire import read_varint
from otelkit.collector.runtime.component import Consumer, Exporter
from otelkit.collector.runtime.errors import ComponentError, RetryableError
from otelkit.collector.runtime.exporterhelper import Backoff, RetrySettings
from otelkit.collector.runtime.origin import sender_waits
from otelkit.collector.runtime.workers.channel import Op, Peer


@runtime_checkable
class SingleWriter(Protocol):
    """An exporter config whose destination takes one writer (a SQLite file, a local
    file): with ``--workers N`` the exporter runs in worker 0 only, and the other workers
    hand it their data over the internal channel, acknowledged once it has taken it."""

    def single_writer(self) -> bool: ...


def trace_owner(trace_id: bytes, workers: int) -> int:
    """The worker that processes every span of this trace: its last two bytes modulo the
    workers (random in W3C trace IDs; sequential IDs go round the workers), read the
    same way from a span's bytes by :func:`split_encoded_traces`."""
    if len(trace_id) < 2:
        return 0
    return (trace_id[-2] << 8 | trace_id[-1]) % workers


def split_by_owner(payload: Payload, workers: int) -> dict[int, Payload]:
    """The request cut into one request per owning worker (just ``{owner: payload}``,
    untouched, when one worker owns all of it, as for a request holding one trace)."""
    signal = signal_of(payload)
    owner_of = _OWNERS[signal]
    resources_field, scopes_field, items_field = LAYOUT[signal]
    resources = getattr(payload, resources_field)
    owners = _owners_of(resources, scopes_field, items_field, owner_of, workers)
    if len(owners) <= 1:
        return {next(iter(owners), 0): payload}
    shares: dict[int, Payload] = {}
    for resource in resources:
        if signal is Signal.METRICS:
            _place_whole(shares, signal, resources_field, resource, owner_of(resource, workers))
            continue
        resource_copies: dict[int, Any] = {}
        for scope in getattr(resource, scopes_field):
            items_of: dict[int, Any] = {}  # owner -> item list of this scope's copy
            for item in getattr(scope, items_field):
                owner = owner_of(item, workers)
                target = items_of.get(owner)
                if target is None:
                    copy = _scope_copy(shares, resource_copies, owner, signal, resource, scope)
                    target = items_of[owner] = getattr(copy, items_field)
                target.append(item)
    return shares


def _owners_of(
    resources: Any, scopes_field: str, items_field: str, owner_of: Any, workers: int
) -> set[int]:
    if items_field == "metrics":
        return {owner_of(resource, workers) for resource in resources}
    return {
        owner_of(item, workers)
        for resource in resources
        for scope in getattr(resource, scopes_field)
        for item in getattr(scope, items_field)
    }


def _span_owner(span: Any, workers: int) -> int:
    return trace_owner(span.trace_id, workers)


_LOCAL = -1


def _record_owner(record: Any, workers: int) -> int:
    """Records with a trace ID go to its owner; the others stay (``_LOCAL``)."""
    return trace_owner(record.trace_id, workers) if record.trace_id else _LOCAL


def _resource_owner(resource: Any, workers: int) -> int:
    return zlib.crc32(resource.resource.SerializeToString(deterministic=True)) % workers


_OWNERS = {Signal.TRACES: _span_owner, Signal.LOGS: _record_owner, Signal.METRICS: _resource_owner}


def _place_whole(
    shares: dict[int, Payload], signal: Signal, resources_field: str, resource: Any, owner: int
) -> None:
    target = shares.setdefault(owner, signal.new_request())
    getattr(target, resources_field).append(resource)


def _scope_copy(
    shares: dict[int, Payload],
    resource_copies: dict[int, Any],
    owner: int,
    signal: Signal,
    resource: Any,
    scope: Any,
) -> Any:
    """A new scope like ``scope`` (without its items) in ``owner``'s share, under that
    share's one copy of ``resource`` (also without items)."""
    resources_field, scopes_field, _ = LAYOUT[signal]
    target_resource = resource_copies.get(owner)
    if target_resource is None:
        share = shares.get(owner)
        if share is None:
            share = shares[owner] = signal.new_request()
        target_resource = getattr(share, resources_field).add()
        target_resource.resource.CopyFrom(resource.resource)
        target_resource.schema_url = resource.schema_url
        resource_copies[owner] = target_resource
    target_scope = getattr(target_resource, scopes_field).add()
    target_scope.scope.CopyFrom(scope.scope)
    target_scope.schema_url = scope.schema_url
    return target_scope


def split_encoded_traces(data: bytes, workers: int) -> dict[int, tuple[bytes, int]]:
    """A serialised traces request cut by owner without parsing it: {owner: (bytes of
    its share, spans in it)}; the request's own bytes when one worker owns all of it.

    Each span is a slice of the request (its trace ID read at its start, where every
    serialiser writes field 1); the owner parses only its share, so routing adds no
    parsing. Raises ValueError for bytes it cannot cut (then the request is parsed and
    cut as objects, or refused as malformed)."""
    parts: dict[int, list[bytes]] = {}
    counts: dict[int, int] = {}
    for number, _, begin, end in _fields(data):
        if number != 1:  # ExportTraceServiceRequest.resource_spans
            continue
        resource = data[begin:end]
        header: list[bytes] = []
        scopes: dict[int, list[bytes]] = {}
        for field, start, inner, stop in _fields(resource):
            if field != 2:  # ResourceSpans.scope_spans
                header.append(resource[start:stop])
                continue
            for owner, scope, spans in _split_scope(resource[inner:stop], workers):
                scopes.setdefault(owner, []).append(_frame(2, scope))
                counts[owner] = counts.get(owner, 0) + spans
        head = b"".join(header)
        for owner, frames in scopes.items():
            parts.setdefault(owner, []).append(_frame(1, head + b"".join(frames)))
    if len(parts) <= 1:
        return {owner: (data, counts[owner]) for owner in parts}
    return {owner: (b"".join(frames), counts[owner]) for owner, frames in parts.items()}


def _split_scope(scope: bytes, workers: int) -> list[tuple[int, bytes, int]]:
    """(owner, ScopeSpans bytes holding that owner's spans, how many) per owner.

    The hot loop of routing: one pass, no call per span; runs of spans with the same
    owner move as one slice."""
    runs: dict[int, list[bytes]] = {}
    counts: dict[int, int] = {}
    pos, size = 0, len(scope)
    while pos < size and scope[pos] != 0x12:  # fields before the spans (the scope)
        pos = _skip(scope, pos)
    first = run_start = pos
    run_owner, run_length = -1, 0
    while pos < size and scope[pos] == 0x12:  # ScopeSpans.spans, field 2
        tag = pos
        length = scope[pos + 1]
        if length < 0x80:
            pos += 2
        elif scope[pos + 2] < 0x80:
            length = (length & 0x7F) | (scope[pos + 2] << 7)
            pos += 3
        else:
            length, pos = read_varint(scope, pos + 1)
        # Span.trace_id is field 1 (tag 0x0A, length 16): serialisers write it first.
        if length < 18 or scope[pos] != 0x0A or scope[pos + 1] != 0x10:
            raise ValueError("a span that does not begin with its trace ID")
        owner = (scope[pos + 16] << 8 | scope[pos + 17]) % workers
        if owner != run_owner:
            if run_length:
                runs.setdefault(run_owner, []).append(scope[run_start:tag])
                counts[run_owner] = counts.get(run_owner, 0) + run_length
            run_owner, run_start, run_length = owner, tag, 0
        run_length += 1
        pos += length
    if pos > size:
        raise ValueError("truncated span")
    if run_length:
        runs.setdefault(run_owner, []).append(scope[run_start:pos])
        counts[run_owner] = counts.get(run_owner, 0) + run_length
    before, after = scope[:first], scope[pos:]
    if any(number == 2 for number, *_ in _fields(after)):
        raise ValueError("spans not side by side")
    return [
        (owner, before + b"".join(parts) + after, counts[owner]) for owner, parts in runs.items()
    ]


def _skip(data: bytes, pos: int) -> int:
    [(_, _, _, end)] = _fields_from(data, pos, 1)
    return end


def _frame(field: int, value: bytes) -> bytes:
    """A length-delimited field: tag, length, value."""
    return bytes((field << 3 | 2,)) + varint(len(value)) + value


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """(field number, where its tag starts, where its value starts, where it ends)."""
    found = _fields_from(data, 0, -1)
    if found and found[-1][3] != len(data):
        raise ValueError("truncated field")
    return found


def _fields_from(data: bytes, pos: int, limit: int) -> list[tuple[int, int, int, int]]:
    """Up to ``limit`` fields (-1: all) from ``pos``."""
    found: list[tuple[int, int, int, int]] = []
    size = len(data)
    try:
        while pos < size and len(found) != limit:
            start = pos
            tag, pos = read_varint(data, pos)
            wire_type = tag & 7
            if wire_type == 2:
                length, pos = read_varint(data, pos)
                begin = pos
                pos += length
            elif wire_type == 0:
                begin = pos
                _, pos = read_varint(data, pos)
            elif wire_type in (1, 5):
                begin = pos
                pos += 8 if wire_type == 1 else 4
            else:
                raise ValueError(f"unsupported wire type {wire_type}")
            if pos > size:
                raise ValueError("truncated field")
            found.append((tag >> 3, start, begin, pos))
    except IndexError:
        raise ValueError("truncated field") from None
    return found


class RoutingConsumer:
    """In front of one receiver's pipelines for one signal: runs this worker's share and
    forwards the others; returns only once all were accepted."""

    mutates_data = True

    def __init__(
        self,
        receiver: str,
        signal: Signal,
        local: Consumer,
        index: int,
        workers: int,
        peers: Mapping[int, Peer],
    ) -> None:
        self._receiver = receiver
        self._signal = signal
        self._local = local
        self._index = index
        self._workers = workers
        self._peers = peers

    @property
    def takes_encoded(self) -> bool:
        """Traces are cut before parsing (see :meth:`consume_encoded`)."""
        return self._signal is Signal.TRACES

    def route_encoded(self, data: bytes) -> tuple[int, Awaitable[None]]:
        """Cut a serialised request by owner and parse this worker's share: how many items
        it holds, and the delivery of every share to await. Raises ``DecodeError`` for
        bytes that are not a request of this signal, before anything is delivered."""
        parse = self._signal.request_type.FromString
        try:
            shares = split_encoded_traces(data, self._workers)
        except ValueError:
            payload = parse(data)
            return count_items(payload), self.consume(payload)
        tag = _TAGS[self._signal]
        local = shares.pop(self._index, None)
        forwarded = {owner: tag + share for owner, (share, _) in shares.items()}
        items = sum(n for _, n in shares.values()) + (local[1] if local else 0)
        return items, self._deliver(parse(local[0]) if local else None, forwarded)

    async def consume(self, payload: Payload) -> None:
        shares = split_by_owner(payload, self._workers)
        local = [shares.pop(owner) for owner in (self._index, _LOCAL) if owner in shares]
        forwarded = {owner: encode_payload(share) for owner, share in shares.items()}
        if len(local) == 2:
            append(local[0], local[1])
        await self._deliver(local[0] if local else None, forwarded)

    async def _deliver(self, local: Payload | None, forwarded: Mapping[int, bytes]) -> None:
        """Every owner is reached before any share is taken: a request refused because a
        worker is starting or gone is refused whole, and its retry brings no duplicates."""
        peers = self._peers
        await asyncio.gather(*(peers[owner].connect() for owner in forwarded))
        calls: list[Awaitable[Any]] = [
            peers[owner].call(Op.CONSUME, self._receiver, b) for owner, b in forwarded.items()
        ]
        if local is not None:
            calls.append(self._local.consume(local))
        await _all(calls)


async def _all(calls: list[Awaitable[Any]]) -> None:
    """Every share offered; the first refusal raised once all have answered."""
    if len(calls) == 1:
        await calls[0]
        return
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# How data no sender waits for is offered again to a single writer that is gone: soon
# (a worker starts again in about a second), for up to a minute.
_ACKNOWLEDGED_RETRY = RetrySettings(
    initial_interval="100ms", max_interval="2s", multiplier=2.0, randomization_factor=0.0,
    max_elapsed_time="60s",
)  # fmt: skip


class ForwardingExporter(Exporter):
    """Stands for a single-writer exporter that runs in another worker: ``consume``
    returns once that worker's exporter took the data as it would from this worker's
    sender (for the log store with ``durability: commit``, once it is committed).

    Data no sender waits for (released by a whole-trace processor long after its senders
    were answered) would be lost by a refusal: while that worker is gone (killed, being
    started again) it is offered again with backoff, which holds the release here, for
    up to a minute or until shutdown."""

    mutates_data = False

    def __init__(self, name: str, peer: Peer) -> None:
        self._name = name
        self._peer = peer
        self._stopping = asyncio.Event()

    @property
    def acknowledges_durably(self) -> bool:
        return True

    async def consume(self, payload: Payload) -> None:
        body = encode_payload(payload)
        if sender_waits():
            await self._peer.call(Op.EXPORT, self._name, body)
            return
        backoff = Backoff(_ACKNOWLEDGED_RETRY)
        while True:
            try:
                await self._peer.call(Op.EXPORT_ACKNOWLEDGED, self._name, body)
                return
            except RetryableError as exc:
                wait = backoff.next_wait(exc.retry_after)
                if self._stopping.is_set() or wait is None:
                    raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def shutdown(self) -> None:
        self._stopping.set()


def encode_payload(payload: Payload) -> bytes:
    """A signal tag byte and the request's protobuf bytes."""
    body: bytes = payload.SerializeToString()
    return _TAGS[signal_of(payload)] + body


def decode_payload(body: bytes) -> Payload:
    try:
        signal = _SIGNALS[body[:1]]
    except KeyError as exc:
        raise ComponentError(f"unknown signal tag {body[:1]!r}") from exc
    payload: Payload = signal.request_type.FromString(body[1:])
    return payload


_TAGS = {Signal.TRACES: b"T", Signal.METRICS: b"M", Signal.LOGS: b"L"}
_SIGNALS = {tag: signal for signal, tag in _TAGS.items()}
