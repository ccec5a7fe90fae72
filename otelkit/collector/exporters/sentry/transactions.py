"""Whole traces -> Sentry transactions.

Spans of a trace arrive over several batches (and from several services). The
:class:`TraceAssembler` holds each trace for ``trace_wait`` after its first span, with a
bound on the spans held (the oldest traces are let go early, counted), so a transaction
carries its whole subtree instead of being split by batch boundaries.

A transaction is made for each *local root*: a span with no parent, a SERVER or CONSUMER
span whose parent is remote (another process; the OTLP ``is_remote`` flag when the SDK
sets it, else a CLIENT/PRODUCER parent or one from another service), or a span whose
parent never arrived. Every other span hangs under the transaction of its nearest root.

Sampling by ``traces_sample_rate`` is decided per trace from the trace ID's low 64 bits,
so every collector behind a trace-ID load balancer decides alike. A trace is always kept
when one of the :data:`KeepRule` callables says so: by default, a span with an error and
a span carrying one of ``transactions.keep_trace_attributes``
(``otelkit.budget.exceeded``, ``otelkit.perf_issue.type``) set by the budget and
performance-issue processors. More rules can be passed to :class:`TransactionBuilder`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.exporters.sentry.common import (
    CLIENT,
    CONSUMER,
    KIND_NAMES,
    PRODUCER,
    SDK_INFO,
    SERVER,
    ResourceInfo,
    SpanShape,
    attributes,
    clip,
    has_error,
    new_event_id,
    seconds,
    span_shape,
)
from otelkit.collector.exporters.sentry.events import (
    Event,
    EventContext,
    request_of,
    tag_value,
    user_of,
)
from otelkit.collector.runtime.scrub import Scrubber

_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_ROOT_KINDS = (SERVER, CONSUMER)

KeepRule = Callable[[Span], bool]


@dataclass(slots=True)
class SpanRef:
    """A span and where it came from, as held while its trace gathers."""

    span: Span
    resource: ResourceInfo
    scope: str


@dataclass(slots=True)
class _Pending:
    first_seen: float
    due: float
    spans: list[SpanRef] = field(default_factory=list)


class TraceAssembler:
    """Gathers spans by trace ID until ``trace_wait`` has passed since the first one.

    A trace whose spans name parents it has not seen, other than a SERVER or CONSUMER
    span's remote caller, is still incomplete: a long request ends (and is exported) after
    its children. Such a trace waits on in steps of ``trace_wait``, up to
    ``incomplete_wait`` after its first span, so its root arrives in time to carry them.
    """

    def __init__(
        self,
        trace_wait: float,
        max_spans: int,
        clock: Callable[[], float] = time.monotonic,
        incomplete_wait: float = 0.0,
    ) -> None:
        self.trace_wait = trace_wait
        self.incomplete_wait = incomplete_wait
        self.max_spans = max_spans
        self._clock = clock
        self._traces: OrderedDict[bytes, _Pending] = OrderedDict()
        self.buffered = 0
        self.evicted_early = 0

    def add(self, refs: Iterable[SpanRef]) -> list[list[SpanRef]]:
        """Hold the spans; returns traces let go early to stay within ``max_spans``."""
        now = self._clock()
        traces = self._traces
        for ref in refs:
            key = ref.span.trace_id
            pending = traces.get(key)
            if pending is None:
                pending = traces[key] = _Pending(now, now + self.trace_wait)
            pending.spans.append(ref)
            self.buffered += 1
        early: list[list[SpanRef]] = []
        while self.buffered > self.max_spans and len(traces) > 1:
            early.append(self._pop_oldest())
            self.evicted_early += 1
        return early

    def due(self) -> list[list[SpanRef]]:
        """Traces whose wait is over, oldest first (incomplete ones may wait on)."""
        now = self._clock()
        out: list[list[SpanRef]] = []
        while self._traces:
            key, oldest = next(iter(self._traces.items()))
            if oldest.due > now:
                break
            if now - oldest.first_seen < self.incomplete_wait and _incomplete(oldest.spans):
                # Deadlines stay in insertion order: every other trace is due by now + wait.
                oldest.due = now + self.trace_wait
                self._traces.move_to_end(key)
                continue
            out.append(self._pop_oldest())
        return out

    def drain(self) -> list[list[SpanRef]]:
        """Every held trace (at shutdown)."""
        out = [p.spans for p in self._traces.values()]
        self._traces.clear()
        self.buffered = 0
        return out

    def __len__(self) -> int:
        return len(self._traces)

    def _pop_oldest(self) -> list[SpanRef]:
        _, pending = self._traces.popitem(last=False)
        self.buffered -= len(pending.spans)
        return pending.spans


def _incomplete(refs: Sequence[SpanRef]) -> bool:
    """Some span names a parent not (yet) here that is not a remote caller."""
    ids = {ref.span.span_id for ref in refs}
    return any(
        ref.span.parent_span_id
        and ref.span.parent_span_id not in ids
        and ref.span.kind not in _ROOT_KINDS
        for ref in refs
    )


def attribute_flag(keys: Sequence[str]) -> KeepRule:
    """A rule keeping a trace when a span has one of ``keys`` set (not false, 0 or empty)."""
    wanted = frozenset(keys)

    def flagged(span: Span) -> bool:
        return any(kv.key in wanted and _truthy(kv.value) for kv in span.attributes)

    return flagged


def _truthy(value: AnyValue) -> bool:
    kind = value.WhichOneof("value")
    return kind is not None and bool(getattr(value, kind)) and value.string_value != "false"


@dataclass
class Transaction:
    event: Event
    spans: int  # OTel spans it carries (root included)
    trace_header: dict[str, str]


@dataclass
class Built:
    transactions: list[Transaction]
    sampled_out: int = 0  # spans not sent because the trace was not sampled
    trimmed: int = 0  # spans dropped to keep a transaction within max_spans


class TransactionBuilder:
    """Turns one gathered trace into its transactions (or none when not sampled)."""

    def __init__(
        self,
        scrubber: Scrubber,
        sample_rate: float,
        keep_rules: Sequence[KeepRule],
        max_spans: int,
        public_key: str,
        event_context: EventContext | None = None,
    ) -> None:
        self.scrubber = scrubber
        self.event_context = event_context
        self.sample_rate = sample_rate
        self.keep_rules = [has_error, *keep_rules]  # a trace with an error is always kept
        self.max_spans = max_spans
        self.public_key = public_key
        self._threshold = int(sample_rate * 2**64)

    def sampled(self, trace_id: bytes) -> bool:
        """Deterministic by the trace ID's low 64 bits, as OTel's TraceIdRatioBased."""
        if self.sample_rate >= 1.0:
            return True
        return int.from_bytes(trace_id[8:16], "big") < self._threshold

    def keep(self, refs: Sequence[SpanRef]) -> bool:
        if self.sampled(refs[0].span.trace_id):
            return True
        return any(rule(ref.span) for ref in refs for rule in self.keep_rules)

    def build(self, refs: Sequence[SpanRef]) -> Built:
        if not refs:
            return Built([])
        if not self.keep(refs):
            return Built([], sampled_out=len(refs))
        by_id = {ref.span.span_id: ref for ref in refs}  # a span sent twice counts once
        if len(by_id) < len(refs):
            refs = list(by_id.values())
        roots = [ref for ref in refs if _is_local_root(ref, by_id)]
        root_ids = {ref.span.span_id for ref in roots}
        members: dict[bytes, list[SpanRef]] = {span_id: [] for span_id in root_ids}
        owner_of: dict[bytes, bytes] = {}
        for ref in refs:
            span_id = ref.span.span_id
            if span_id not in root_ids:
                owner = _owner(span_id, by_id, root_ids, owner_of)
                if owner not in members:  # a parent cycle: its entry span becomes a root
                    members[owner] = []
                    roots.append(by_id[owner])
                if owner != span_id:
                    members[owner].append(ref)
        built = Built([])
        for root in roots:
            transaction, trimmed = self._transaction(root, members[root.span.span_id])
            built.transactions.append(transaction)
            built.trimmed += trimmed
        return built

    def _transaction(self, root: SpanRef, children: list[SpanRef]) -> tuple[Transaction, int]:
        span, resource = root.span, root.resource
        attrs = attributes(span.attributes)
        shape = span_shape(span, attrs, self.scrubber)
        name = (
            shape.description
            if shape.op.startswith("http.server")
            else self.scrubber.value(clip(span.name))
        )
        source = (
            shape.source
            if shape.op.startswith(("http.server", "grpc.server"))
            else ("task" if shape.source == "task" else "custom")
        )
        start = seconds(span.start_time_unix_nano)
        end = max(seconds(span.end_time_unix_nano), start)
        trace_context: Event = {
            "type": "trace",
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "op": shape.op,
            "status": shape.status,
            "data": self.scrubber.mapping(attrs),
        }
        if span.parent_span_id:
            trace_context["parent_span_id"] = span.parent_span_id.hex()
        children.sort(key=lambda ref: ref.span.start_time_unix_nano)
        trimmed = max(0, len(children) - self.max_spans)
        kept = children[: self.max_spans] if trimmed else children
        event: Event = {
            "type": "transaction",
            "event_id": new_event_id(),
            "platform": resource.platform,
            "transaction": name,
            "transaction_info": {"source": source},
            "start_timestamp": start,
            "timestamp": end,
            "sdk": SDK_INFO,
            "tags": {
                "service": tag_value(resource.service),
                "otel.kind": KIND_NAMES.get(span.kind, ""),
            },
            "contexts": {
                "trace": trace_context,
                "otel": {"type": "otel", "resource": resource.attributes},
            },
            "spans": [self._child(ref) for ref in kept],
        }
        if self.event_context is not None:
            self._add_request_and_user(event, attrs, shape, self.event_context)
        if trimmed:
            event["contexts"]["otelkit"] = {
                "type": "otelkit",
                "spans_dropped": trimmed,
                "reason": f"more than transactions.max_spans ({self.max_spans}) child spans",
            }
        for key, value in (
            ("environment", resource.environment),
            ("release", resource.release),
            ("dist", resource.dist if resource.release else None),
            ("server_name", resource.server_name),
        ):
            if value:
                event[key] = value
        return Transaction(event, 1 + len(kept), self._trace_header(event, resource)), trimmed

    @staticmethod
    def _add_request_and_user(
        event: Event, attrs: dict[str, Any], shape: SpanShape, ctx: EventContext
    ) -> None:
        if shape.op == "http.server":
            request = request_of(attrs, ctx)
            if request:
                event["request"] = request
        user = user_of(attrs, ctx)
        if user:
            event["user"] = user

    def _child(self, ref: SpanRef) -> Event:
        span = ref.span
        attrs = attributes(span.attributes)
        shape: SpanShape = span_shape(span, attrs, self.scrubber)
        start = span.start_time_unix_nano / 1e9
        end = span.end_time_unix_nano / 1e9
        child: Event = {
            "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex(),
            "trace_id": span.trace_id.hex(),
            "op": shape.op,
            "description": shape.description,
            "start_timestamp": start,
            "timestamp": end if end >= start else start,
            "status": shape.status,
            "data": self.scrubber.mapping(attrs),
        }
        if ref.resource.service:
            child["data"]["service.name"] = ref.resource.service
        return child

    def _trace_header(self, event: Event, resource: ResourceInfo) -> dict[str, str]:
        header = {
            "trace_id": event["contexts"]["trace"]["trace_id"],
            "public_key": self.public_key,
            "sample_rate": repr(self.sample_rate),
            "sampled": "true",
            "transaction": event["transaction"],
        }
        if resource.release:
            header["release"] = resource.release
        if resource.environment:
            header["environment"] = resource.environment
        return header


def _is_local_root(ref: SpanRef, by_id: dict[bytes, SpanRef]) -> bool:
    span = ref.span
    parent_id = span.parent_span_id
    if not parent_id:
        return True
    parent = by_id.get(parent_id)
    if parent is None:
        return True
    if span.kind not in _ROOT_KINDS:
        return False
    if span.flags & _HAS_IS_REMOTE:
        return bool(span.flags & _IS_REMOTE)
    return parent.span.kind in (CLIENT, PRODUCER) or parent.resource.service != ref.resource.service


def _owner(
    span_id: bytes, by_id: dict[bytes, SpanRef], roots: set[bytes], memo: dict[bytes, bytes]
) -> bytes:
    """The local root a span belongs to: the nearest root among its ancestors."""
    path: list[bytes] = []
    current = span_id
    while current not in roots and current not in memo:
        path.append(current)
        parent = by_id[current].span.parent_span_id
        if parent in path:  # a cycle (malformed data): its entry span becomes a root
            roots.add(current)
            break
        current = parent
    owner = memo.get(current, current)
    for visited in path:
        memo[visited] = owner
    return owner
