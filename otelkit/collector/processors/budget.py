"""``budget`` processor: marks spans against the budgets file and reports breaches.

For each span the first matching budget owns, it sets ``otelkit.budget.name``,
``otelkit.budget.limit_ms`` and ``otelkit.budget.exceeded``; it feeds the span's
duration into a per-budget quantile sketch per objective window (tumbling windows,
bounded memory, 1% relative error by default); it counts breaches in
``otelkit_budget_violations_total{budget,type}``; and it records each breach as an
``otelkit.finding`` span event (see :mod:`otelkit.budgets.findings`), which the
``findings`` connector turns into a log record:

- ``ceiling``: one span over the budget's ``max``, on that span;
- ``percentile``: a window's running percentile over its objective (once the window
  holds ``min_samples`` spans; at most once per window and objective), on the slowest
  span of the batch that tipped it, so the log links to a real slow trace.

Under ``--workers N`` each worker processes the traces it owns, but a budget's windows
are one for the whole collector, kept by worker 0: the other workers send it each
batch's summary (its sketch buckets) and report the breaches it answers on their own
slowest span. Per-worker windows would each see a share of the traffic, so a percentile
one process finds would be found by no worker (each short of ``min_samples``) or by
every worker (once each, stored and sent to Sentry N times).
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, repeat
from operator import attrgetter, eq, is_, sub, truediv
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field, PrivateAttr, model_validator

from otelkit.budgets.findings import (
    BUDGET_EXCEEDED,
    BUDGET_LIMIT_MS,
    BUDGET_NAME,
    KIND_BUDGET_BREACH,
    Finding,
    attach,
    fingerprint,
    service_name,
)
from otelkit.budgets.matcher import (
    BudgetMatcher,
    CompiledBudget,
    attribute_texts,
)
from otelkit.budgets.model import (
    BudgetsError,
    BudgetsFile,
    Objective,
    load_budgets,
    ms_above,
    ms_to_ns,
    over_limit,
)
from otelkit.budgets.sketch import Batch, WindowedSketch
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    PeerLink,
    Processor,
    processor_factory,
)
from otelkit.collector.runtime.errors import ComponentError

WINDOWS_WORKER = 0
"""The worker that keeps every budget's windows under ``--workers N``."""


class BudgetConfig(ComponentConfig):
    budgets_file: str = Field(
        description="path of the budgets file, relative to the working directory"
    )
    min_samples: int = Field(
        20, ge=1, description="spans a window needs before its percentile counts"
    )
    relative_accuracy: float = Field(0.01, gt=0, lt=0.5)
    _budgets: BudgetsFile | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self) -> BudgetConfig:
        try:
            self._budgets = load_budgets(Path(self.budgets_file))
        except BudgetsError as exc:
            raise ValueError(f"invalid budgets file {exc}") from None
        return self

    @property
    def budgets(self) -> BudgetsFile:
        assert self._budgets is not None
        return self._budgets


@dataclass
class _WindowState:
    sketch: WindowedSketch
    objectives: list[Objective]
    flagged: set[float] = field(default_factory=set)  # quantiles already reported this window


_NEVER = 1 << 63  # a limit no span reaches


@dataclass
class _BudgetState:
    budget: CompiledBudget
    limit_ms: float | None
    windows: list[_WindowState]
    # The spans of the batch being matched, in arrival order (taken by _measure).
    spans: list[Span] = field(default_factory=list)
    # The attributes every matched span gets, serialised once: merging these bytes into
    # a span appends them in one C call (a third of the cost of extending KeyValues).
    marks_within: bytes = b""
    marks_exceeded: bytes = b""
    gauges_published: bool = False
    limit_ns: int = _NEVER  # limit_ms in nanoseconds, or never
    ceiling_ns: int = _NEVER  # the budget's max in nanoseconds, or never

    def __post_init__(self) -> None:
        common = [KeyValue(key=BUDGET_NAME, value=AnyValue(string_value=self.budget.name))]
        if self.limit_ms is not None:
            common.append(KeyValue(key=BUDGET_LIMIT_MS, value=AnyValue(double_value=self.limit_ms)))
            self.limit_ns = ms_to_ns(self.limit_ms)
        within = KeyValue(key=BUDGET_EXCEEDED, value=AnyValue(bool_value=False))
        exceeded = KeyValue(key=BUDGET_EXCEEDED, value=AnyValue(bool_value=True))
        self.marks_within = Span(attributes=[*common, within]).SerializeToString()
        self.marks_exceeded = Span(attributes=[*common, exceeded]).SerializeToString()
        if self.budget.budget.max_ns is not None:
            self.ceiling_ns = self.budget.budget.max_ns


@dataclass
class _Measured:
    """One budget's share of a batch, summarised for its windows."""

    state: _BudgetState
    batch: Batch
    spans: list[Span]
    durations: list[float]  # ms, one per span

    def slowest(self) -> Span:
        """The first of the share's slowest spans: looked for only when a breach is
        reported, not for every batch."""
        return self.spans[self.durations.index(max(self.durations))]


class _Breach(NamedTuple):
    """An objective a window's percentile now breaks (indexes into the state's windows)."""

    window: int
    objective: int
    observed_ms: float
    window_count: int


class BudgetProcessor(Processor):
    def __init__(self, settings: CreateSettings, config: BudgetConfig, next_consumer: Consumer):
        self._next = next_consumer
        self._config = config
        budgets = config.budgets
        self._matcher = BudgetMatcher(budgets.budgets)
        self._states = [self._new_state(b, budgets) for b in self._matcher.budgets]
        self._violations = settings.telemetry.counter(
            "otelkit_budget_violations", "Spans or windows over their budget", ("budget", "type")
        )
        for state in self._states:  # at zero, so rate() sees the first breach
            budget = state.budget.budget
            if budget.max is not None:
                self._violations.labels(state.budget.name, "ceiling")
            if budget.objectives:
                self._violations.labels(state.budget.name, "percentile")
        self._quantile_gauge = settings.telemetry.gauge(
            "otelkit_budget_window_quantile_milliseconds",
            "Running percentile of the budget's current window",
            ("budget", "quantile"),
        )
        self._unjudged = settings.telemetry.counter(
            "otelkit_budget_unjudged_spans",
            "Spans left out of their budget's percentile windows: the worker keeping the "
            "windows could not be asked (--workers N, while worker 0 starts again)",
            ("budget",),
        )
        worker = settings.worker
        self._keeper: PeerLink | None = None
        if worker is not None and worker.index != WINDOWS_WORKER:
            self._keeper = settings.peers

    def _new_state(self, budget: CompiledBudget, budgets: BudgetsFile) -> _BudgetState:
        by_window: dict[float, list[Objective]] = {}
        for objective in budget.budget.objectives:
            by_window.setdefault(budgets.window_of(objective), []).append(objective)
        windows = [
            _WindowState(
                WindowedSketch(
                    w,
                    tuple(o.quantile for o in objs),
                    self._config.relative_accuracy,
                    watched=tuple(o.below_ms for o in objs),
                ),
                objs,
            )
            for w, objs in by_window.items()
        ]
        return _BudgetState(budget, budget.budget.limit_ms, windows)

    async def consume(self, payload: Payload) -> None:
        if self._keeper is None:
            self.observe(payload, time.time())
        else:
            await self._observe_with_keeper(self._keeper, payload)
        await self._next.consume(payload)

    def observe(self, payload: Payload, now: float) -> None:
        """Mark matched spans and update windows (``now``: wall-clock seconds)."""
        for measured in self._measure(payload):
            breaches = self._judge(measured.state, measured.batch, now)
            self._report(measured, breaches)

    async def _observe_with_keeper(self, keeper: PeerLink, payload: Payload) -> None:
        """As :meth:`observe`, with the windows kept by worker 0: one question per batch.
        While it cannot answer (starting again), the batch is left out of the windows
        and counted, rather than judged against this worker's share alone."""
        measured = self._measure(payload)
        if not measured:
            return
        question = [[m.state.budget.index, _encode_batch(m.batch)] for m in measured]
        try:
            answer = json.loads(await keeper.ask(WINDOWS_WORKER, json.dumps(question).encode()))
        except ComponentError:
            for m in measured:
                self._unjudged.labels(m.state.budget.name).inc(m.batch.size)
            return
        for m, breaches in zip(measured, answer, strict=True):
            self._report(m, [_Breach(*breach) for breach in breaches])

    async def answer_peer(self, body: bytes) -> bytes:
        """Worker 0: another worker's batch summaries added to the windows, and the
        breaches each one tips, for that worker to report."""
        now = time.time()
        answer = [
            self._judge(self._states[index], _decode_batch(batch), now)
            for index, batch in json.loads(body)
        ]
        return json.dumps(answer).encode()

    def _measure(self, payload: Payload) -> list[_Measured]:
        """Marks every matched span and reports ceiling breaches; each budget's share
        of the batch summarised for its windows (budgets with objectives only)."""
        measured: list[_Measured] = []
        for state in self._match_spans(payload):
            spans, state.spans = state.spans, []
            durations = self._mark_and_measure(state, spans)
            if state.windows:
                batch = state.windows[0].sketch.sketch.batch_of(durations)
                measured.append(_Measured(state, batch, spans, durations))
        return measured

    def _judge(self, state: _BudgetState, batch: Batch, now: float) -> list[_Breach]:
        """The batch added to the budget's windows; the objectives it now breaks."""
        self._roll(state, now)
        for window in state.windows:  # every window's sketch has the same buckets
            window.sketch.sketch.add_batch(batch)
        return self._check_percentiles(state)

    def _match_spans(self, payload: Payload) -> list[_BudgetState]:
        """Collects each matched span under its budget; the budgets touched, in order."""
        touched: list[_BudgetState] = []
        matcher = self._matcher
        states = self._states
        for rs in payload.resource_spans:
            service = service_name(rs.resource.attributes)
            if not any(matcher.by_kind(service).values()):
                continue
            resource_attrs = (
                attribute_texts(rs.resource.attributes, matcher.wanted_keys)
                if matcher.wanted_keys
                else {}
            )
            resource_key = tuple(sorted(resource_attrs.items()))
            for ss in rs.scope_spans:
                spans = list(ss.spans)  # each pass over ss.spans costs a lookup per span
                owners = self._owners(service, spans, resource_attrs, resource_key)
                owned = [budget for budget in set(owners) if budget is not None]
                if len(owned) > _FEW_BUDGETS:  # one pass beats a pass per budget
                    self._collect(spans, owners, touched)
                    continue
                owned.sort(key=owners.index)  # in the order of their first span
                for budget in owned:
                    state = states[budget.index]
                    if not state.spans:
                        touched.append(state)
                    state.spans.extend(compress(spans, map(is_, owners, repeat(budget))))
        return touched

    def _collect(
        self,
        spans: list[Span],
        owners: list[CompiledBudget | None],
        touched: list[_BudgetState],
    ) -> None:
        """Each span under its owner's state, in order; states first touched join
        ``touched``."""
        states = self._states
        for span, budget in zip(spans, owners, strict=True):
            if budget is not None:
                state = states[budget.index]
                if not state.spans:
                    touched.append(state)
                state.spans.append(span)

    def _owners(
        self,
        service: str,
        spans: Sequence[Span],
        resource_attrs: dict[str, str],
        resource_key: object,
    ) -> list[CompiledBudget | None]:
        """Per span, the budget that owns it: each span kind's spans are matched together
        (:meth:`KindCandidates.owners`) and the answers merged back in span order, in
        ``map`` passes rather than Python code per span."""
        kinds = list(map(_KIND, spans))
        answers: dict[int, Iterator[CompiledBudget | None]] = {}
        for kind in set(kinds):
            candidates = self._matcher.for_kind(service, kind)
            if candidates is None:
                answers[kind] = repeat(None)
            else:
                of_kind = list(compress(spans, map(eq, kinds, repeat(kind))))
                answers[kind] = iter(candidates.owners(of_kind, resource_attrs, resource_key))
        return list(map(next, map(answers.__getitem__, kinds)))

    def _mark_and_measure(self, state: _BudgetState, spans: list[Span]) -> list[float]:
        """Durations (ms) of the budget's matched spans; marks on each; ceiling breaches.

        Per-span steps are ``map`` calls over the batch, not a Python loop."""
        lengths = list(map(sub, map(_END, spans), map(_START, spans)))
        durations = list(map(truediv, lengths, repeat(1e6)))
        limit, within, exceeded = state.limit_ns, state.marks_within, state.marks_exceeded
        top = max(lengths)
        if over_limit(top, limit):
            marks = map((within, exceeded).__getitem__, map(over_limit, lengths, repeat(limit)))
            deque(map(_MERGE, spans, marks), maxlen=0)
        else:
            deque(map(_MERGE, spans, repeat(within)), maxlen=0)
        ceiling = state.ceiling_ns
        if over_limit(top, ceiling):
            for span, length in zip(spans, lengths, strict=True):
                if over_limit(length, ceiling):
                    self._report_ceiling(state, span, length / 1e6)
        return durations

    def _report_ceiling(self, state: _BudgetState, span: Span, duration_ms: float) -> None:
        ceiling = state.budget.budget.max
        assert ceiling is not None
        self._violations.labels(state.budget.name, "ceiling").inc()
        name = state.budget.name
        finding = Finding(
            kind=KIND_BUDGET_BREACH,
            type="ceiling",
            title=(
                f"Budget {name}: {span.name} took {ms_above(duration_ms, ceiling)} ms "
                f"(max {ceiling:g} ms)"
            ),
            culprit=span.name,
            fingerprint=fingerprint("budget", name, "ceiling", span.name),
            span_ids=[span.span_id],
            extra={
                BUDGET_NAME: name,
                BUDGET_LIMIT_MS: ceiling,
                "otelkit.budget.observed_ms": round(duration_ms, 3),
            },
        )
        attach(span, finding, span.end_time_unix_nano)

    def _roll(self, state: _BudgetState, now: float) -> None:
        for window in state.windows:
            if window.sketch.roll(now) is not None or not window.sketch.sketch.count:
                window.flagged.clear()

    def _check_percentiles(self, state: _BudgetState) -> list[_Breach]:
        """Each objective that the window's running percentile now breaks (flagged, so
        it is reported once per window).

        The sketch answers "is the percentile over the objective" from counts it keeps
        as values come in; the percentile itself is computed only for a breach and when
        the gauge is read."""
        if not state.gauges_published:
            self._publish_gauges(state)
        breaches: list[_Breach] = []
        for w, window in enumerate(state.windows):
            sketch = window.sketch.sketch
            if sketch.count < self._config.min_samples:
                continue
            for o, objective in enumerate(window.objectives):
                if objective.quantile in window.flagged or not sketch.is_over(
                    objective.quantile, objective.below_ms
                ):
                    continue
                observed = sketch.quantile(objective.quantile)
                assert observed is not None and observed > objective.below_ms
                window.flagged.add(objective.quantile)
                breaches.append(_Breach(w, o, observed, sketch.count))
        return breaches

    def _report(self, measured: _Measured, breaches: list[_Breach]) -> None:
        state = measured.state
        for breach in breaches:
            window = state.windows[breach.window]
            objective = window.objectives[breach.objective]
            self._violations.labels(state.budget.name, "percentile").inc()
            self._report_percentile(measured, window, objective, breach)

    def _publish_gauges(self, state: _BudgetState) -> None:
        """One gauge per objective label reading the live window's percentile when
        scraped (the last window with that label, as if each window set it in turn)."""
        latest: dict[str, tuple[_WindowState, float]] = {}
        for window in state.windows:
            for objective in window.objectives:
                latest[objective.label] = (window, objective.quantile)
        for label, (window, quantile) in latest.items():
            child = self._quantile_gauge.labels(state.budget.name, label)
            child.set_function(partial(_live_quantile, window, quantile))
        state.gauges_published = True

    def _report_percentile(
        self, measured: _Measured, window: _WindowState, objective: Objective, breach: _Breach
    ) -> None:
        span, observed = measured.slowest(), breach.observed_ms
        name = measured.state.budget.name
        seconds = window.sketch.window
        finding = Finding(
            kind=KIND_BUDGET_BREACH,
            type="percentile",
            title=(
                f"Budget {name}: {objective.label} is {ms_above(observed, objective.below_ms)} "
                "ms over the last "
                f"{seconds:g}s window (objective < {objective.below_ms:g} ms)"
            ),
            culprit=span.name,
            fingerprint=fingerprint("budget", name, objective.label),
            span_ids=[span.span_id],
            extra={
                BUDGET_NAME: name,
                BUDGET_LIMIT_MS: objective.below_ms,
                "otelkit.budget.observed_ms": round(observed, 3),
                "otelkit.budget.percentile": objective.percentile,
                "otelkit.budget.window_s": seconds,
                "otelkit.budget.window_count": breach.window_count,
            },
        )
        attach(span, finding, span.end_time_unix_nano)


_KIND = attrgetter("kind")
_FEW_BUDGETS = 4  # budgets in one scope up to which spans are gathered by one pass each
_START = attrgetter("start_time_unix_nano")
_END = attrgetter("end_time_unix_nano")
_MERGE: Callable[[Span, bytes], object] = Span.MergeFromString  # unbound, for map()


def _encode_batch(batch: Batch) -> list[object]:
    """A batch summary as JSON values, for the worker keeping the windows."""
    return [list(batch.made_for), batch.size, batch.zeros, batch.total, batch.top,
            list(batch.buckets.items())]  # fmt: skip


def _decode_batch(value: Any) -> Batch:
    made_for, size, zeros, total, top, buckets = value
    return Batch(
        (float(made_for[0]), float(made_for[1])), int(size), int(zeros), float(total),
        float(top), Counter({int(i): int(n) for i, n in buckets}),
    )  # fmt: skip


def _live_quantile(window: _WindowState, quantile: float) -> float:
    return window.sketch.sketch.quantile(quantile) or 0.0


def _create(
    settings: CreateSettings, config: BudgetConfig, signal: Signal, next_consumer: Consumer
) -> BudgetProcessor:
    return BudgetProcessor(settings, config, next_consumer)


factory = processor_factory("budget", BudgetConfig, _create, frozenset({Signal.TRACES}))
