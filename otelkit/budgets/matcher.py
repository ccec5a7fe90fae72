"""Budget matchers compiled once, evaluated per span touching only what they need.

Resource conditions (``service``) are decided once per ``ResourceSpans``; span kind and
name are read from the span; attribute conditions read only the keys some budget names,
from the span's wire bytes (:mod:`otelkit.collector.pdata.wire`), and only when kind and name
already matched.
The first budget in file order that matches a span owns it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.budgets.model import SPAN_KINDS, Budget, Match
from otelkit.collector.pdata.semconv import DB_SYSTEM, HTTP_ROUTE
from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.pdata.wire import (
    AttributeReader,
    key_pattern,
    raw_value,
    raw_value_at,
    value_text,
)

# Matching keys of the shorthand conditions, newest semantic-convention name first.
ROUTE_KEYS = HTTP_ROUTE
DB_SYSTEM_KEYS = DB_SYSTEM
PEER_SERVICE_KEYS = ("peer.service", "service.peer.name")

TextTest = Callable[[str], bool]


def glob_regex(pattern: str) -> str:
    """A glob as an anchored regular expression that both Python and RE2 accept."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_text_test(patterns: Sequence[str]) -> TextTest:
    """Exact membership when no pattern has a wildcard, else each glob in turn.

    Span values (routes, span names) come from applications: a glob is matched in time
    linear in the value (no regular expression that could backtrack over ``*`` after
    ``*``), and only the first :data:`MAX_MATCHED_CHARS` characters of a value count."""
    if not any("*" in p or "?" in p for p in patterns):
        exact = frozenset(patterns)
        return exact.__contains__
    globs = tuple(Glob(p) for p in patterns)
    return lambda text: any(glob.matches(text[:MAX_MATCHED_CHARS]) for glob in globs)


MAX_MATCHED_CHARS = 4096


class Glob:
    """A glob (``*`` any run of characters, ``?`` one) matched greedily piece by piece:
    the pieces between stars are fixed-length, so the leftmost place each can go is the
    right one, and matching costs at most (value length x pattern length)."""

    def __init__(self, pattern: str) -> None:
        pieces = pattern.split("*")
        self._first, self._last = _Piece(pieces[0]), _Piece(pieces[-1])
        self._middle = tuple(_Piece(p) for p in pieces[1:-1] if p)
        self._starred = len(pieces) > 1

    def matches(self, text: str) -> bool:
        first, last = self._first, self._last
        if not self._starred:
            return len(text) == first.size and first.at(text, 0)
        end = len(text) - last.size
        if end < first.size or not first.at(text, 0) or not last.at(text, end):
            return False
        pos = first.size
        for piece in self._middle:
            found = piece.find(text, pos, end)
            if found < 0:
                return False
            pos = found + piece.size
        return True


class _Piece:
    """A fixed-length run of a glob between stars; ``?`` matches any one character."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        self._regex = re.compile(glob_regex(text), re.DOTALL) if "?" in text else None

    def at(self, text: str, pos: int) -> bool:
        if self._regex is None:
            return text.startswith(self.text, pos)
        return self._regex.match(text, pos) is not None

    def find(self, text: str, pos: int, end: int) -> int:
        """Where the piece first occurs wholly inside ``text[pos:end]``, or -1."""
        if self._regex is None:
            return text.find(self.text, pos, end)
        found = self._regex.search(text, pos, end)
        return found.start() if found is not None else -1


def attribute_texts(attributes: Iterable[KeyValue], wanted: frozenset[str]) -> dict[str, str]:
    """The wanted attributes as text, in one pass."""
    return {kv.key: any_value_text(kv.value) for kv in attributes if kv.key in wanted}


@dataclass(frozen=True)
class _AttributeTest:
    keys: tuple[str, ...]  # the first present key is tested
    test: TextTest

    def __call__(self, span_attrs: Mapping[str, str], resource_attrs: Mapping[str, str]) -> bool:
        for key in self.keys:
            if key in span_attrs:
                return self.test(span_attrs[key])
        for key in self.keys:
            if key in resource_attrs:
                return self.test(resource_attrs[key])
        return False


@dataclass(frozen=True, eq=False)  # one per budget: identity is equality, hashing is cheap
class CompiledBudget:
    name: str
    budget: Budget
    index: int
    service: TextTest | None
    kind: int | None
    span_name: TextTest | None
    attribute_tests: tuple[_AttributeTest, ...]

    def matches_resource(self, service_name: str) -> bool:
        return self.service is None or self.service(service_name)


def compile_budget(name: str, budget: Budget, index: int) -> CompiledBudget:
    m: Match = budget.match
    tests: list[_AttributeTest] = []
    for keys, patterns in (
        (ROUTE_KEYS, m.route),
        (DB_SYSTEM_KEYS, m.db_system),
        (PEER_SERVICE_KEYS, m.peer_service),
    ):
        if patterns:
            tests.append(_AttributeTest(keys, compile_text_test(patterns)))
    for key, patterns in m.attributes.items():
        tests.append(_AttributeTest((key,), compile_text_test(patterns)))
    return CompiledBudget(
        name=name,
        budget=budget,
        index=index,
        service=compile_text_test(m.service) if m.service else None,
        kind=SPAN_KINDS[m.span_kind] if m.span_kind else None,
        span_name=compile_text_test(m.span_name) if m.span_name else None,
        attribute_tests=tuple(tests),
    )


class BudgetMatcher:
    """Finds the budget that owns a span."""

    def __init__(self, budgets: Mapping[str, Budget]) -> None:
        self.budgets = tuple(compile_budget(n, b, i) for i, (n, b) in enumerate(budgets.items()))
        self.wanted_keys = frozenset(
            key for b in self.budgets for t in b.attribute_tests for key in t.keys
        )
        self._reader = AttributeReader(self.wanted_keys)
        self._resource_cache: dict[str, tuple[CompiledBudget, ...]] = {}
        self._kind_cache: dict[str, dict[int, KindCandidates | None]] = {}
        # Owners remembered by every KindCandidates of this matcher, bounded together.
        self._match_cache: dict[object, CompiledBudget | None] = {}

    def for_service(self, service_name: str) -> tuple[CompiledBudget, ...]:
        """The budgets that can match spans of this service (cached per service)."""
        found = self._resource_cache.get(service_name)
        if found is None:
            found = tuple(b for b in self.budgets if b.matches_resource(service_name))
            if len(self._resource_cache) < 10_000:
                self._resource_cache[service_name] = found
        return found

    def by_kind(self, service_name: str) -> dict[int, KindCandidates | None]:
        """Per span kind, the budgets that can match spans of this service (cached), so
        the per-span work starts with one dict lookup. Unknown kinds are added on use."""
        found = self._kind_cache.get(service_name)
        if found is None:
            found = {k: self._for_kind(service_name, k) for k in range(6)}
            if len(self._kind_cache) < 10_000:
                self._kind_cache[service_name] = found
        return found

    def for_kind(self, service_name: str, kind: int) -> KindCandidates | None:
        """As :meth:`by_kind` for one kind, remembering a few kinds outside the enum."""
        found = self.by_kind(service_name)
        if kind in found:
            return found[kind]
        candidates = self._for_kind(service_name, kind)
        if len(found) < 16:
            found[kind] = candidates
        return candidates

    def _for_kind(self, service_name: str, kind: int) -> KindCandidates | None:
        budgets = tuple(
            b for b in self.for_service(service_name) if b.kind is None or b.kind == kind
        )
        return KindCandidates(budgets, self._match_cache) if budgets else None

    def match(
        self,
        span: Span,
        candidates: Sequence[CompiledBudget],
        resource_attrs: Mapping[str, str],
    ) -> CompiledBudget | None:
        span_attrs: dict[str, str] | None = None
        kind = span.kind
        name: str | None = None
        for budget in candidates:
            if budget.kind is not None and budget.kind != kind:
                continue
            if budget.span_name is not None:
                if name is None:
                    name = span.name
                if not budget.span_name(name):
                    continue
            if budget.attribute_tests:
                if span_attrs is None:
                    span_attrs = self._reader.texts(span)
                if not _all_hold(budget.attribute_tests, span_attrs, resource_attrs):
                    continue
            return budget
        return None


_MISSING = object()
_MATCH_CACHE_SIZE = 16_384
_NAME = attrgetter("name")
_SERIALIZE: Callable[[Span], bytes] = Span.SerializeToString  # unbound, for map()


class KindCandidates:
    """The budgets one span kind of one service can match, in file order, with a reader
    of only the attribute keys they test.

    Which budget owns a span depends only on its name (when some budget tests names),
    the raw values of those keys and the resource's; so the answer is remembered per
    such combination and the common span costs one read of its bytes and a dict lookup.
    """

    __slots__ = ("_always", "_cache", "_patterns", "_uses_name", "budgets", "reader")

    def __init__(
        self,
        budgets: tuple[CompiledBudget, ...],
        cache: dict[object, CompiledBudget | None] | None = None,
    ) -> None:
        self.budgets = budgets
        self.reader = AttributeReader(
            key for b in budgets for t in b.attribute_tests for key in t.keys
        )
        self._patterns = tuple(key_pattern(key) for key in self.reader.keys)
        self._uses_name = any(b.span_name is not None for b in budgets)
        self._cache: dict[object, CompiledBudget | None] = {} if cache is None else cache
        # A first budget with no span conditions owns every span: nothing to read.
        first = budgets[0] if budgets else None
        self._always = (
            first
            if first is not None and first.span_name is None and not first.attribute_tests
            else None
        )

    def match(
        self, span: Span, resource_attrs: Mapping[str, str], resource_key: object = None
    ) -> CompiledBudget | None:
        """The first budget that matches ``span`` (whose kind is already known to fit).

        ``resource_key`` identifies ``resource_attrs`` (equal keys, equal attributes)."""
        if self._always is not None:
            return self._always
        name = span.name if self._uses_name else None
        patterns = self._patterns
        raws: tuple[bytes | None, ...] = ()
        if patterns:
            data = span.SerializeToString()
            if len(patterns) == 1:
                raws = (raw_value(data, patterns[0]),)
            else:
                # Most spans hold one of a key's spellings: a find, not a call, per other.
                each: list[bytes | None] = []
                for pattern in patterns:
                    at = data.find(pattern)
                    each.append(None if at < 0 else raw_value_at(data, pattern, at))
                raws = tuple(each)
        return self._owner(span, name, raws, resource_attrs, resource_key)

    def owners(
        self, spans: Sequence[Span], resource_attrs: Mapping[str, str], resource_key: object = None
    ) -> list[CompiledBudget | None]:
        """:meth:`match` of each of ``spans`` (all of a kind that fits), for a whole batch:
        the steps per span are ``map`` calls (serialise, find each key, look up), and an
        owner is decided once per distinct name and raw values."""
        if self._always is not None:
            return [self._always] * len(spans)
        count = len(spans)
        columns: list[list[str | None] | list[bytes | None]] = []
        if self._uses_name:
            columns.append(list(map(_NAME, spans)))
        if self._patterns:
            datas = list(map(_SERIALIZE, spans))
            batch = b"".join(datas)  # a key no span holds costs one search, not one per span
            absent: list[bytes | None] = [None] * count
            for pattern in self._patterns:
                columns.append(_raw_column(datas, pattern) if pattern in batch else absent)
        varying = [at for at, column in enumerate(columns) if column.count(None) != count]
        if len(varying) == 1:  # one column decides: its values are the keys (hashed once)
            at = varying[0]
            before, after = (None,) * at, (None,) * (len(columns) - at - 1)
            keys: list[object] = list(columns[at])
            by_key = {
                key: self._owner_of(span, (*before, key, *after), resource_attrs, resource_key)
                for key, span in dict(zip(keys, spans, strict=True)).items()
            }
        else:
            keys = list(zip(*columns, strict=True)) if columns else [()] * count
            by_key = {
                key: self._owner_of(span, key, resource_attrs, resource_key)  # type: ignore[arg-type]
                for key, span in dict(zip(keys, spans, strict=True)).items()
            }
        return list(map(by_key.__getitem__, keys))

    def _owner_of(
        self,
        span: Span,
        values: tuple[object, ...],
        resource_attrs: Mapping[str, str],
        resource_key: object,
    ) -> CompiledBudget | None:
        """:meth:`_owner` given the span's name (when names count) then raw values."""
        if self._uses_name:
            return self._owner(span, values[0], values[1:], resource_attrs, resource_key)  # type: ignore[arg-type]
        return self._owner(span, None, values, resource_attrs, resource_key)  # type: ignore[arg-type]

    def _owner(
        self,
        span: Span,
        name: str | None,
        raws: tuple[bytes | None, ...],
        resource_attrs: Mapping[str, str],
        resource_key: object,
    ) -> CompiledBudget | None:
        """The owner of a span with this name (None: no budget tests names) and these raw
        values of :attr:`_patterns`, remembered per combination."""
        key = (self, resource_key, name, raws)
        found = self._cache.get(key, _MISSING)
        if found is _MISSING:
            span_attrs = {
                k: value_text(raw)
                for k, raw in zip(self.reader.keys, raws, strict=True)
                if raw is not None
            }
            found = self._first_match(span, span_attrs, resource_attrs)
            if _cacheable(name, raws):
                if len(self._cache) >= _MATCH_CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = found
        return found  # type: ignore[return-value]

    def _first_match(
        self, span: Span, span_attrs: Mapping[str, str], resource_attrs: Mapping[str, str]
    ) -> CompiledBudget | None:
        for budget in self.budgets:
            if budget.span_name is not None and not budget.span_name(span.name):
                continue
            if budget.attribute_tests and not _all_hold(
                budget.attribute_tests, span_attrs, resource_attrs
            ):
                continue
            return budget
        return None


def _raw_column(datas: list[bytes], pattern: bytes) -> list[bytes | None]:
    """The raw value of the attribute ``pattern`` starts in each serialised span."""
    ats = list(map(bytes.find, datas, repeat(pattern)))
    return [
        None if at < 0 else raw_value_at(data, pattern, at)
        for data, at in zip(datas, ats, strict=True)
    ]


def _cacheable(name: str | None, raws: tuple[bytes | None, ...]) -> bool:
    """Whether a match key is small enough to remember (hostile spans may carry
    megabyte values; the cache must not hold thousands of them)."""
    if name is not None and len(name) > MAX_MATCHED_CHARS:
        return False
    return all(raw is None or len(raw) <= MAX_MATCHED_CHARS for raw in raws)


def _all_hold(
    tests: Sequence[_AttributeTest],
    span_attrs: Mapping[str, str],
    resource_attrs: Mapping[str, str],
) -> bool:
    for test in tests:  # noqa: SIM110 -- a plain loop: no generator per span
        if not test(span_attrs, resource_attrs):
            return False
    return True
