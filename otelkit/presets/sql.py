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


def sanitize_sql(statement: object) -> object:
    if not isinstance(statement, str) or not any(ch.isdigit() or ch == "'" for ch in statement):
        return statement
    return _LITERALS.sub("?", statement)
