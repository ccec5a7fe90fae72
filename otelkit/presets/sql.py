"""Query text without literal values, so ``db.statement`` never carries user data.

Bound parameters (``%(name)s``, ``:name``, ``$1``, ``?``) are kept; quoted strings and
numeric literals become ``?``.
"""

from __future__ import annotations

import re

_LITERALS = re.compile(
    r"""
    '(?:[^']|'')*'                                    # string literal
    | (?<![\w$.:%])-?\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b  # number not part of a name or $1
    """,
    re.VERBOSE,
)


# Every match of ``_LITERALS`` holds a quote or a ``\d`` digit: a statement with neither,
# as most parameterized queries are, is returned as it is after one scan in C.
_LITERAL_PART = re.compile(r"[\d']")


def sanitize_sql(statement: object) -> object:
    if not isinstance(statement, str) or _LITERAL_PART.search(statement) is None:
        return statement
    return _LITERALS.sub("?", statement)
