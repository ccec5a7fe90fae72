"""Which serialized OTLP items the scrubber could change, found without walking the rest.

Walking attributes in Python costs about half a microsecond each, and almost every span
holds no secret. Serialising a request's items (in C) and searching the bytes once with one
RE2 expression (a DFA: linear, no backtracking) costs a fraction of that, so the redactor
walks only the items a match touches. The expression is built from the scrubber's
:class:`~otelkit.collector.runtime.scrub.Triggers`, which hold a trigger for everything its
rules can change, so a chunk without a match is proven clean. (Python's ``re`` was measured
at several times the cost of walking for the same expression: it tries every alternative
at nearly every byte.)

Matches that count only in some places are confirmed before an item is walked: card-like
digits must hold a Luhn-valid run; words that matter only in SQL or in a URL's query, and
percent-escapes (which hide any word from a byte search), must stand in the value of a
SQL key, in the query of a URL key's value or in a ``url.query`` value. Past
:data:`MAX_CHECKS` confirmations in one search every match counts, so hostile text costs
bounded Python work.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Protocol

import re2

from otelkit.collector.pdata.wire import key_pattern, read_varint
from otelkit.collector.runtime.scrub import (
    QUERY_KEYS,
    SQL_KEYS,
    URL_KEYS,
    Triggers,
    may_hold_card,
)

MAX_CHECKS = 64  # confirmations per search; past them every match counts
_DENSE_AFTER = 16  # flagged items after which, if most are, all the rest are walked
_LONGEST_RUN = 256  # bytes of card-like digits confirmed; a longer run counts
_CARD_RUN = re.compile(rb"[0-9 +-]*")


class _Match(Protocol):
    @property
    def lastindex(self) -> int | None: ...

    def span(self) -> tuple[int, int]: ...


class _Expression(Protocol):
    @property
    def groupindex(self) -> dict[bytes, int]: ...

    def search(self, text: bytes, pos: int | None = None) -> _Match | None: ...


class Prefilter:
    """Searches serialized items for the triggers of one scrubber; reused for every batch."""

    def __init__(self, triggers: Triggers) -> None:
        source = expression(triggers)
        self._expression: _Expression | None = None
        if source:
            options = re2.Options()
            options.encoding = re2.Options.Encoding.LATIN1  # bytes are bytes, not UTF-8
            self._expression = re2.compile(source.encode(), options)
        groups = self._expression.groupindex if self._expression else {}
        self._kinds = {index: name.decode() for name, index in groups.items()}
        self._url_keys = tuple(key_pattern(key) for key in sorted(URL_KEYS))
        self._keyed = self._url_keys + tuple(
            key_pattern(key) for key in sorted(SQL_KEYS | QUERY_KEYS)
        )

    def items(self, chunks: Sequence[bytes]) -> list[int]:
        """Indexes, in order, of the serialized items the scrubber could change."""
        if self._expression is None or not chunks:
            return []
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        match = self._expression.search(data)
        if match is None:  # the common case: the whole chunk is clean
            return []
        return self._flagged(match, data, list(accumulate(map(len, chunks))))

    def _flagged(self, match: _Match | None, data: bytes, ends: list[int]) -> list[int]:
        search = self._expression.search  # type: ignore[union-attr]
        flagged: list[int] = []
        keyed: dict[int, list[tuple[int, int, bool]]] = {}  # per item, found once
        checks = 0
        while match is not None:
            start, end = match.span()
            kind = self._kinds.get(match.lastindex or 0)
            if kind is not None and checks < MAX_CHECKS:
                checks += 1
                if kind == "card":
                    run = _CARD_RUN.match(data, start)
                    run_end = run.end() if run else end
                    if run_end - start <= _LONGEST_RUN and not may_hold_card(
                        data[start:run_end].decode("ascii")
                    ):
                        match = search(data, run_end)  # nothing else starts inside a run
                        continue
                    end = run_end
                else:
                    item = bisect_right(ends, start)
                    if item not in keyed:
                        item_start = ends[item - 1] if item else 0
                        keyed[item] = self._keyed_values(data, item_start, ends[item])
                    if not _overlaps_keyed(data, keyed[item], start, end):
                        match = search(data, start + 1)
                        continue
            first, last = bisect_right(ends, start), bisect_right(ends, end - 1)
            flagged.extend(range(max(first, flagged[-1] + 1 if flagged else 0), last + 1))
            if len(flagged) >= _DENSE_AFTER and 2 * len(flagged) > last + 1:
                # Most items so far hold a trigger: searching on costs more than walking.
                flagged.extend(range(last + 1, len(ends)))
                break
            # The rest of a flagged item needs no look: it is walked whole.
            match = search(data, ends[last]) if ends[last] < len(data) else None
        return flagged

    def _keyed_values(self, data: bytes, start: int, end: int) -> list[tuple[int, int, bool]]:
        """Where values of SQL, URL and query keys lie in ``data[start:end]`` (one item),
        and whether only their query part counts (URL keys)."""
        spans = []
        for pattern in self._keyed:
            at = data.find(pattern, start, end)
            while at >= 0:
                value_start, value_end = _value_span(data, at + len(pattern))
                spans.append((value_start, value_end, pattern in self._url_keys))
                at = data.find(pattern, at + 1, end)
        return spans


def _overlaps_keyed(data: bytes, spans: list[tuple[int, int, bool]], start: int, end: int) -> bool:
    """Whether ``data[start:end]`` overlaps a value in which keyed words count."""
    return any(
        value_start < end
        and start < value_end
        and (not query_only or start < value_start or data.find(b"?", value_start, start) >= 0)
        for value_start, value_end, query_only in spans
    )


def expression(triggers: Triggers) -> str:
    """One regular expression (RE2 and ``re`` syntax) for ``triggers``: a match anywhere
    counts, except in the groups ``card`` and ``keyed``, which need confirming.
    Empty when nothing can change."""
    anywhere = list(triggers.patterns)
    if triggers.words:
        anywhere.insert(0, _words(triggers.words))
    if triggers.parts:
        # A whole dotted part of a key ends at a dot or at the key's end, where serialized
        # OTLP puts the tag of the KeyValue's value (field 2: 0x12).
        anywhere.append(_words(triggers.parts) + r"(?:\.|\x12)")
    alternatives = anywhere
    if triggers.card:
        alternatives.append(f"(?P<card>{triggers.card})")
    # One group, so that a word of both kinds is confirmed in either place.
    keyed = [_words(triggers.sql_words)] if triggers.sql_words else []
    keyed += [_words(triggers.url_words)] if triggers.url_words else []
    keyed += [triggers.url_escape] if triggers.url_escape else []
    if keyed:
        alternatives.append(f"(?P<keyed>{'|'.join(keyed)})")
    return "|".join(alternatives)


def _words(words: Sequence[str]) -> str:
    """Case-insensitive alternatives in which ``_`` also stands for ``-``."""
    rendered = (re.escape(word).replace("_", "[-_]") for word in dict.fromkeys(words))
    return f"(?i:{'|'.join(rendered)})"


def _value_span(data: bytes, at: int) -> tuple[int, int]:
    """Where the length-delimited value whose length starts at ``at`` lies (clamped; all
    the rest when the bytes do not frame one: an overlap then counts)."""
    try:
        length, value_start = read_varint(data, at)
    except IndexError:
        return at, len(data)
    return value_start, min(len(data), value_start + length)
