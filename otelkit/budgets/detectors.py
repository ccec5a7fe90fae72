"""Performance-issue detectors over one trace, with Sentry's server-side defaults.

Only client spans are read (database and outgoing HTTP calls), and of those only the
attributes the detectors need, so a trace of server and internal spans costs one
integer comparison per span.

- ``n_plus_one_db_queries``: >= 5 non-overlapping DB spans of the same normalised
  query under one parent, > 50 ms together;
- ``slow_db_query``: a database call of >= 500 ms, whatever its statement (Sentry looks
  at SELECTs only; a slow UPDATE or ``WITH RECURSIVE`` query hurts as much); the kind of
  statement is in the finding (``otelkit.perf_issue.db_operation``);
- ``consecutive_http``: >= 3 sequential HTTP client calls under one parent, each
  >= 500 ms and <= 500 ms apart, where running them in parallel would save >= 2000 ms;
- ``n_plus_one_api_calls``: >= 5 HTTP client calls of the same shape (method and URL
  with IDs masked) under one parent, each started <= 5 ms after the previous one,
  >= 300 ms together.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import BaseModel, ConfigDict, Field, field_validator

from otelkit.budgets import sql
from otelkit.budgets.findings import KIND_PERF_ISSUE, Finding, fingerprint
from otelkit.collector.pdata.semconv import DB_QUERY, DB_SYSTEM, HTTP_METHOD, URL_FULL
from otelkit.collector.pdata.wire import key_pattern, raw_value, value_text

SPAN_KIND_CLIENT = 3
DB_OPERATION = "otelkit.perf_issue.db_operation"
_DB_SYSTEM_PATTERNS = tuple(key_pattern(k) for k in DB_SYSTEM)
_DB_QUERY_PATTERNS = tuple(key_pattern(k) for k in DB_QUERY)
_HTTP_METHOD_PATTERNS = tuple(key_pattern(k) for k in HTTP_METHOD)
_HTTP_URL_PATTERNS = tuple(key_pattern(k) for k in URL_FULL)
# Bytes every key of a kind contains: a span without them has none of those keys.
_DB_KEY_PART = b"db."
_HTTP_METHOD_KEY_PART = b"method\x12"
assert all(_DB_KEY_PART in p for p in _DB_SYSTEM_PATTERNS + _DB_QUERY_PATTERNS)
assert all(_HTTP_METHOD_KEY_PART in p for p in _HTTP_METHOD_PATTERNS)

_ID_SEGMENT = re.compile(
    r"\d++|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}+"
)
MAX_URL_CHARS = 8192
_SHAPE_CACHE_SIZE = 10_000
_CACHED_QUERY_CHARS = 4096  # longer queries are normalised each time, not remembered

_SHAPES: dict[str, str] = {}


def normalize_query(query: str) -> str:
    """The query's shape (see :func:`otelkit.budgets.sql.normalize_query`).

    Applications send few distinct statements, so shapes of short ones are cached
    (bounded in entries and in the size of each)."""
    shape = _SHAPES.get(query)
    if shape is None:
        shape = sql.normalize_query(query)
        if len(query) <= _CACHED_QUERY_CHARS:
            if len(_SHAPES) >= _SHAPE_CACHE_SIZE:
                _SHAPES.clear()
            _SHAPES[query] = shape
    return shape


def url_shape(method: str, url: str) -> str:
    """``METHOD host/path`` with numeric, UUID and long hex path segments as ``*``; only
    the first ``MAX_URL_CHARS`` characters of the URL are read. A URL ``urlsplit`` cannot
    read (an unclosed IPv6 bracket) is its own shape, as written."""
    try:
        parts = urlsplit(url[:MAX_URL_CHARS])
    except ValueError:
        return f"{method.upper()} {url[:MAX_URL_CHARS]}"
    segments = (parts.path or "/").split("/")
    path = "/".join([segments[0], *("*" if _ID_SEGMENT.fullmatch(s) else s for s in segments[1:])])
    return f"{method.upper()} {parts.netloc}{path}"


class _Detector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True


class NPlusOneDbConfig(_Detector):
    min_count: int = Field(5, ge=2)
    min_total_ms: float = Field(50, ge=0)


class SlowDbConfig(_Detector):
    min_duration_ms: float = Field(500, ge=0)
    operations: tuple[str, ...] = Field(
        (),
        description="statement kinds judged (SELECT, INSERT, UPDATE, DELETE, ...); "
        "empty judges every database span",
    )

    @field_validator("operations")
    @classmethod
    def _upper_case(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.upper() for v in value)


class ConsecutiveHttpConfig(_Detector):
    min_count: int = Field(3, ge=2)
    min_span_ms: float = Field(500, ge=0)
    max_gap_ms: float = Field(500, ge=0)
    min_savings_ms: float = Field(2000, ge=0)


class NPlusOneApiConfig(_Detector):
    min_count: int = Field(5, ge=2)
    max_start_gap_ms: float = Field(5, ge=0)
    min_total_ms: float = Field(300, ge=0)


class DetectorsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_plus_one_db_queries: NPlusOneDbConfig = NPlusOneDbConfig()
    slow_db_query: SlowDbConfig = SlowDbConfig()
    consecutive_http: ConsecutiveHttpConfig = ConsecutiveHttpConfig()
    n_plus_one_api_calls: NPlusOneApiConfig = NPlusOneApiConfig()


@dataclass(slots=True)
class Call:
    """A client span the detectors look at."""

    span: Span
    service: str
    start: int
    end: int
    shape: str  # normalised query or HTTP shape
    is_db: bool

    @property
    def ms(self) -> float:
        return (self.end - self.start) / 1e6


@dataclass
class Detection:
    finding: Finding
    service: str
    offenders: list[Span]
    anchor: Span  # the span that carries the finding event


def _first(data: bytes, patterns: Sequence[bytes]) -> str | None:
    """The text of the first of these top-level attributes the span's bytes hold."""
    for pattern in patterns:
        raw = raw_value(data, pattern)
        if raw is not None:
            return value_text(raw)
    return None


class _LazyParent:
    """The parent span of a group, looked up only when a detection needs it."""

    def __init__(self, spans: Sequence[Span], parent_id: bytes) -> None:
        self._spans = spans
        self._id = parent_id

    def get(self) -> Span | None:
        if self._id:
            for span in self._spans:
                if span.span_id == self._id:
                    return span
        return None


def client_calls(spans: Sequence[Span], services: Sequence[str]) -> list[Call]:
    """The database and HTTP client calls among ``spans``, reading each client span's
    bytes once and looking up only the keys its kind of call can have."""
    calls: list[Call] = []
    append = calls.append
    for span, service in zip(spans, services, strict=True):
        if span.kind != SPAN_KIND_CLIENT:
            continue
        data = span.SerializeToString()
        if data.find(_DB_KEY_PART) >= 0:  # find: quicker than `in` on bytes
            shape = _db_shape(data, span)
            if shape is not None:
                append(
                    Call(
                        span,
                        service,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        shape,
                        True,
                    )
                )
                continue
        if data.find(_HTTP_METHOD_KEY_PART) < 0:
            continue
        method = _first(data, _HTTP_METHOD_PATTERNS)
        if method is not None:
            url = _first(data, _HTTP_URL_PATTERNS)
            shape = url_shape(method, url or span.name)
            append(
                Call(
                    span, service, span.start_time_unix_nano, span.end_time_unix_nano, shape, False
                )
            )
    return calls


_RAW_SHAPES: dict[bytes, str] = {}


def _db_shape(data: bytes, span: Span) -> str | None:
    """The normalised query of a database span (its name when it has no query text), or
    None when it is not a database span. Shapes are remembered per raw query value."""
    raw = raw_value(data, _DB_QUERY_TEXT)
    if raw is None:
        raw = raw_value(data, _DB_STATEMENT)
    if raw is None:
        if _first(data, _DB_SYSTEM_PATTERNS) is None:
            return None
        return normalize_query(span.name)
    shape = _RAW_SHAPES.get(raw)
    if shape is None:
        query = value_text(raw)
        if not query:
            return normalize_query(span.name)
        shape = normalize_query(query)
        if len(raw) <= _CACHED_QUERY_CHARS:
            if len(_RAW_SHAPES) >= _SHAPE_CACHE_SIZE:
                _RAW_SHAPES.clear()
            _RAW_SHAPES[raw] = shape
    return shape


_DB_QUERY_TEXT, _DB_STATEMENT = _DB_QUERY_PATTERNS


def detect(
    spans: Sequence[Span], services: Sequence[str], config: DetectorsConfig
) -> list[Detection]:
    calls = client_calls(spans, services)
    if not calls:
        return []
    by_parent: dict[bytes, list[Call]] = {}
    for call in calls:
        parent_id = call.span.parent_span_id
        group = by_parent.get(parent_id)
        if group is None:
            by_parent[parent_id] = [call]
        else:
            group.append(call)
    found: list[Detection] = []
    n1db, consecutive, n1api = (
        config.n_plus_one_db_queries,
        config.consecutive_http,
        config.n_plus_one_api_calls,
    )
    # A run has at least min_count calls: smaller groups cannot hold a finding.
    smallest = min(n1db.min_count, consecutive.min_count, n1api.min_count)
    for parent_id, children in by_parent.items():
        if len(children) < smallest:
            continue
        db = [c for c in children if c.is_db]
        http = [c for c in children if not c.is_db]
        check_db = n1db.enabled and _has_repeated_shape(db, n1db.min_count)
        check_consecutive = consecutive.enabled and len(http) >= consecutive.min_count
        check_api = n1api.enabled and _has_repeated_shape(http, n1api.min_count)
        if not (check_db or check_consecutive or check_api):
            continue
        # Sorting each kind apart orders them as sorting all children would (stable).
        db.sort(key=_start_of)
        http.sort(key=_start_of)
        parent = _LazyParent(spans, parent_id)
        if check_db:
            found.extend(_n_plus_one_db(db, parent, n1db))
        if check_consecutive:
            found.extend(_consecutive_http(http, parent, consecutive))
        if check_api:
            found.extend(_n_plus_one_api(http, parent, n1api))
    if config.slow_db_query.enabled:
        found.extend(_slow_db(calls, config.slow_db_query))
    return found


_SUM_MARGIN_MS = 1e-6


def could_find(spans: Sequence[Span], config: DetectorsConfig) -> bool:
    """Whether any enabled detector could find something, judged from client spans'
    parents and durations alone: no detector fires without a long enough client span,
    or enough client children of one parent that are long enough (together or each).
    Most traces fail this; it reads four fields of each span, where :func:`detect`
    reads the bytes of every client span's attributes.
    """
    slow_db, n1db, consecutive, n1api = (
        config.slow_db_query,
        config.n_plus_one_db_queries,
        config.consecutive_http,
        config.n_plus_one_api_calls,
    )
    slowest_ms = slow_db.min_duration_ms if slow_db.enabled else float("inf")
    slow_call_ms = consecutive.min_span_ms
    # parent -> [children, their positive durations summed (ms), children >= slow_call_ms]
    groups: dict[bytes, list[float]] = {}
    for span in spans:
        if span.kind != SPAN_KIND_CLIENT:
            continue
        ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6  # as Call.ms
        if ms >= slowest_ms:
            return True
        group = groups.get(span.parent_span_id)
        if group is None:
            group = groups[span.parent_span_id] = [0, 0.0, 0]
        group[0] += 1
        if ms > 0:
            group[1] += ms
        if ms >= slow_call_ms:
            group[2] += 1
    for count, total_ms, slow_calls in groups.values():
        # The detectors sum a run in another order: a margin for rounding.
        total_ms += _SUM_MARGIN_MS
        if n1db.enabled and count >= n1db.min_count and total_ms > n1db.min_total_ms:
            return True
        if n1api.enabled and count >= n1api.min_count and total_ms >= n1api.min_total_ms:
            return True
        if consecutive.enabled and slow_calls >= consecutive.min_count:
            return True
    return False


class TraceTallies:
    """A coarser :func:`could_find`, gathered as spans arrive so a buffer parses only
    the traces that could hold a finding: per trace, its client spans, their positive
    durations summed (ms), how many are as long as a consecutive_http call, and the
    longest. Summed over the whole trace rather than per parent, these are never below
    what could_find counts, so no trace it passes is skipped."""

    def __init__(self, config: DetectorsConfig) -> None:
        self._config = config
        self._tallies: dict[bytes, list[float]] = {}

    def add(self, trace_ids: Sequence[bytes], spans: Sequence[Span]) -> list[int]:
        """Counts the client spans among ``spans`` (of these traces, one per span); the
        indexes of the other spans that have no parent (roots: a client span rarely is)."""
        # The hot loop of perf_issues' intake: no calls per span.
        tallies = self._tallies
        slow_call_ms = self._config.consecutive_http.min_span_ms
        roots: list[int] = []
        for k, span in enumerate(spans):
            if span.kind != SPAN_KIND_CLIENT:
                if not span.parent_span_id:
                    roots.append(k)
                continue
            ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6  # as Call.ms
            tally = tallies.get(trace_ids[k])
            if tally is None:
                slow_calls = 1 if ms >= slow_call_ms else 0
                tallies[trace_ids[k]] = [1, ms if ms > 0 else 0.0, slow_calls, ms]
                continue
            tally[0] += 1
            if ms > 0:
                tally[1] += ms
            if ms >= slow_call_ms:
                tally[2] += 1
            if ms > tally[3]:  # noqa: PLR1730 (max() is a call per span)
                tally[3] = ms
        return roots

    def might_find(self, trace_id: bytes) -> bool:
        """Whether :func:`could_find` might pass the trace's spans counted so far;
        forgets the trace."""
        tally = self._tallies.pop(trace_id, None)
        if tally is None:
            return False
        count, total_ms, slow_calls, longest_ms = tally
        slow_db, n1db, consecutive, n1api = (
            self._config.slow_db_query,
            self._config.n_plus_one_db_queries,
            self._config.consecutive_http,
            self._config.n_plus_one_api_calls,
        )
        total_ms += _SUM_MARGIN_MS
        return (
            (slow_db.enabled and longest_ms >= slow_db.min_duration_ms)
            or (n1db.enabled and count >= n1db.min_count and total_ms > n1db.min_total_ms)
            or (n1api.enabled and count >= n1api.min_count and total_ms >= n1api.min_total_ms)
            or (consecutive.enabled and slow_calls >= consecutive.min_count)
        )

    def __len__(self) -> int:
        """Traces counted and not yet judged."""
        return len(self._tallies)


def _start_of(call: Call) -> int:
    return call.start


def _has_repeated_shape(calls: list[Call], min_count: int) -> bool:
    """Whether some shape occurs at least ``min_count`` times among ``calls``."""
    if len(calls) < min_count:
        return False
    shapes = [c.shape for c in calls]
    if len(set(shapes)) > len(shapes) - min_count + 1:  # too many shapes for a repeat
        return False
    return max(Counter(shapes).values()) >= min_count


def _by_shape(calls: Iterable[Call]) -> dict[str, list[Call]]:
    groups: dict[str, list[Call]] = {}
    for call in calls:
        groups.setdefault(call.shape, []).append(call)
    return groups


def _detection(type_: str, title: str, run: list[Call], lazy_parent: _LazyParent) -> Detection:
    parent = lazy_parent.get()
    anchor = parent if parent is not None else run[0].span
    culprit = run[0].shape
    parent_name = parent.name if parent is not None else ""
    finding = Finding(
        kind=KIND_PERF_ISSUE,
        type=type_,
        title=title,
        culprit=culprit,
        fingerprint=fingerprint(type_, run[0].service, parent_name, culprit),
        span_ids=[c.span.span_id for c in run],
        extra={
            "otelkit.perf_issue.count": len(run),
            "otelkit.perf_issue.total_ms": round(sum(c.ms for c in run), 3),
        },
    )
    return Detection(finding, run[0].service, [c.span for c in run], anchor)


def _n_plus_one_db(db: list[Call], parent: _LazyParent, cfg: NPlusOneDbConfig) -> list[Detection]:
    found = []
    for shape, group in _by_shape(db).items():
        run = [group[0]]
        for call in group[1:]:
            if call.start >= run[-1].end:  # sequential, not overlapping
                run.append(call)
        if len(run) >= cfg.min_count and sum(c.ms for c in run) > cfg.min_total_ms:
            title = f"N+1 Query: {shape[:120]}"
            found.append(_detection("n_plus_one_db_queries", title, run, parent))
    return found


def _slow_db(calls: list[Call], cfg: SlowDbConfig) -> list[Detection]:
    """Every database call that took ``min_duration_ms`` or longer, whatever its statement
    (unless ``operations`` names the kinds to judge); the kind is in the finding."""
    found = []
    for call in calls:
        if not call.is_db or call.ms < cfg.min_duration_ms:
            continue
        operation = sql.statement_operation(call.shape)
        if cfg.operations and operation not in cfg.operations:
            continue
        title = f"Slow DB Query: {call.shape[:120]} ({call.ms:.0f} ms)"
        detection = _detection("slow_db_query", title, [call], _LazyParent((), b""))
        detection.finding.extra[DB_OPERATION] = operation
        found.append(detection)
    return found


def _consecutive_http(
    http: list[Call], parent: _LazyParent, cfg: ConsecutiveHttpConfig
) -> list[Detection]:
    runs: list[list[Call]] = []
    run: list[Call] = []
    for call in http:
        slow = call.ms >= cfg.min_span_ms
        follows = bool(run) and 0 <= (call.start - run[-1].end) / 1e6 <= cfg.max_gap_ms
        if slow and (follows or not run):
            run.append(call)
            continue
        runs.append(run)
        run = [call] if slow else []
    runs.append(run)
    found = []
    for r in runs:
        if len(r) >= cfg.min_count:
            savings = sum(c.ms for c in r) - max(c.ms for c in r)
            if savings >= cfg.min_savings_ms:
                title = f"Consecutive HTTP: {len(r)} sequential calls, {savings:.0f} ms to save"
                found.append(_detection("consecutive_http", title, r, parent))
    return found


def _n_plus_one_api(
    http: list[Call], parent: _LazyParent, cfg: NPlusOneApiConfig
) -> list[Detection]:
    found = []
    for shape, group in _by_shape(http).items():
        run = [group[0]]
        for call in group[1:]:
            if (call.start - run[-1].start) / 1e6 <= cfg.max_start_gap_ms:
                run.append(call)
            elif len(run) < cfg.min_count:
                run = [call]
        if len(run) >= cfg.min_count and sum(c.ms for c in run) >= cfg.min_total_ms:
            title = f"N+1 API Call: {len(run)} x {shape[:120]}"
            found.append(_detection("n_plus_one_api_calls", title, run, parent))
    return found
