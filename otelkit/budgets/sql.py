"""SQL statements as the detectors see them: a shape that groups repeated queries, and
the kind of statement (SELECT, UPDATE, ...).

Query text comes from applications and travels in spans, so it is treated as hostile:
only the first :data:`MAX_QUERY_CHARS` characters are read, and every pattern here runs
in time linear in its input (possessive quantifiers, no nested repetition that can
backtrack), so a megabyte of newlines, quotes, parentheses or digits costs a few
milliseconds, not minutes.
"""

from __future__ import annotations

import re

MAX_QUERY_CHARS = 32_768

# One pass over the text, so a quote inside a comment or a digit inside a quoted
# identifier is read as what it is: string literals, comments and quoted identifiers
# (each running to the end of the text when unterminated, so a failed match never
# rescans what follows), then parameters and numbers.
_TOKEN = re.compile(
    r"'(?:[^']|'')*+'?"  # a string literal ('' is an escaped quote)
    r"|--[^\n]*+"  # a line comment
    r"|/\*(?:[^*]|\*(?!/))*+(?:\*/)?"  # a block comment
    r'|"(?:[^"]|"")*+"?'  # a quoted identifier, kept as it is
    r"|%\(\w++\)s|%s|\$\d++|(?<!:):(?!:)\w++|\?"  # a parameter
    r"|(?<![\w.])-?\d++(?:\.\d++)?+(?!\w)"  # a number
)
_IN_LIST = re.compile(r"\(\s*+\?(?:\s*+,\s*+\?)*+\s*+\)")
_SPACES = re.compile(r"\s++")


def _token(match: re.Match[str]) -> str:
    text = match.group()
    if text[0] == '"':
        return text
    if text.startswith(("--", "/*")):
        return " "
    return "?"


def normalize_query(query: str) -> str:
    """The query's shape: comments dropped, literals and parameters ``?``, IN lists
    ``(?)``, runs of white space one space. Only the first ``MAX_QUERY_CHARS`` count."""
    shape = _TOKEN.sub(_token, query[:MAX_QUERY_CHARS])
    shape = _IN_LIST.sub("(?)", shape)
    return _SPACES.sub(" ", shape).strip()


_WORD = re.compile(r"[ (]*+([A-Za-z_]\w*+)")
_NAME = re.compile(r' ?(?:[A-Za-z_]\w*+|"[^"]*+")')
_PARENS = re.compile(r'[()"]')


def statement_operation(shape: str) -> str:
    """The kind of statement a query shape is, upper case: ``SELECT``, ``INSERT``,
    ``UPDATE``, ``DELETE``, ``MERGE``, ``CALL`` ...; a ``WITH`` query is the statement
    after its common table expressions. ``OTHER`` when no keyword leads the text."""
    match = _WORD.match(shape)
    if match is None:
        return "OTHER"
    word = match.group(1).upper()
    if word != "WITH":
        return word
    return _after_ctes(shape, match.end())


def _after_ctes(shape: str, pos: int) -> str:
    """The statement after ``WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED]
    (...), ...``; ``WITH`` when the list cannot be read."""
    pos = _skip_keywords(shape, pos, ("RECURSIVE",))
    while True:
        name = _NAME.match(shape, pos)
        if name is None:
            return "WITH"
        pos = _skip_space(shape, name.end())
        if shape.startswith("(", pos):  # the column list
            pos = _skip_space(shape, _close(shape, pos))
        keywords = _skip_keywords(shape, pos, ("AS",))
        if keywords == pos:
            return "WITH"
        pos = _skip_space(shape, _skip_keywords(shape, keywords, ("NOT", "MATERIALIZED")))
        if not shape.startswith("(", pos):
            return "WITH"
        pos = _skip_space(shape, _close(shape, pos))
        if not shape.startswith(",", pos):
            break
        pos += 1
    word = _WORD.match(shape, pos)
    return word.group(1).upper() if word is not None else "WITH"


def _skip_space(shape: str, pos: int) -> int:
    return pos + 1 if shape.startswith(" ", pos) else pos


def _skip_keywords(shape: str, pos: int, keywords: tuple[str, ...]) -> int:
    """The position after any of ``keywords`` (in any case) that follow ``pos``."""
    while True:
        word = _WORD.match(shape, pos)
        if word is None or word.group(1).upper() not in keywords:
            return pos
        pos = word.end()


def _close(shape: str, pos: int) -> int:
    """The position after the parenthesis that closes the one at ``pos`` (the end of the
    text when it is never closed)."""
    depth = 0
    quoted = False
    for found in _PARENS.finditer(shape, pos):
        char = found.group()
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return found.end()
    return len(shape)
