"""The one query builder: filters to a WHERE clause, with every value a bound parameter.

Backends differ only in a :class:`Dialect` (placeholder style, full-text and attribute
clauses). No text from a user is ever formatted into SQL: the only strings joined into
a statement are the fixed fragments below, with placeholders for every value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from otelkit.logstore.query import LogQuery
from otelkit.logstore.records import COLUMNS

SELECT_COLUMNS = "id, " + ", ".join(COLUMNS)
# A search with at least one letter or digit goes to the full-text index; one without
# (only punctuation) has no tokens to look up and is matched as a plain substring.
_HAS_TOKEN = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class Dialect:
    placeholder: str
    # Full-text phrase match on the body; {p} is the placeholder.
    fulltext: str
    # Substring match on the body, for searches without any word characters.
    substring: str
    # Attribute equality on record or resource attributes; four parameters:
    # key, value, key, value.
    attribute: str
    # A numeric comparison ({op}: one of COMPARISON_OPERATORS) on record or resource
    # attributes; parameters from comparison_params.
    comparison: str = ""
    # Records of one trace; parameters from trace_params.
    trace: str = "trace_id = {p}"

    def phrase(self, text: str) -> str:
        """The bound value of the full-text parameter for ``text`` (quoted, never parsed)."""
        return text

    def trace_params(self, trace_id: bytes) -> list[object]:
        return [trace_id]

    def comparison_params(self, key: str, number: float) -> list[object]:
        return [key, number, key, number]


# The only operator texts ever joined into a statement.
COMPARISON_OPERATORS = {">": ">", ">=": ">=", "<": "<", "<=": "<="}


class SqliteDialect(Dialect):
    def phrase(self, text: str) -> str:
        # An FTS5 string: everything between the double quotes is text to tokenize;
        # operators (AND, OR, NEAR, *, ^, column:) have no meaning inside one.
        return '"' + text.replace('"', '""') + '"'

    def trace_params(self, trace_id: bytes) -> list[object]:
        # The FTS5 lookup finds candidates; the equality keeps the match exact.
        return [f'"{trace_id.hex()}"', trace_id]


_SQLITE_NUMBER = (
    "EXISTS (SELECT 1 FROM json_each(logs.{column}) WHERE key = {p}"
    " AND type IN ('integer', 'real') AND value {op} {p})"
)
SQLITE = SqliteDialect(
    placeholder="?",
    comparison="("
    + _SQLITE_NUMBER.replace("{column}", "attributes")
    + " OR "
    + _SQLITE_NUMBER.replace("{column}", "resource_attributes")
    + ")",
    fulltext="id IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH {p})",
    trace="id IN (SELECT rowid FROM logs_trace_fts WHERE logs_trace_fts MATCH {p}) AND trace_id = {p}",
    substring="instr(body, {p}) > 0",
    attribute=(
        "(EXISTS (SELECT 1 FROM json_each(logs.attributes) WHERE key = {p} AND {v} = {p})"
        " OR EXISTS (SELECT 1 FROM json_each(logs.resource_attributes)"
        " WHERE key = {p} AND {v} = {p}))"
    ).replace(
        "{v}",
        "(CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        "ELSE CAST(value AS TEXT) END)",
    ),
)

POSTGRES_TSVECTOR = "to_tsvector('simple', left(body, 100000))"
# jsonb_typeof guards the cast: only JSON numbers are compared, text never fails the query.
_POSTGRES_NUMBER = (
    "CASE WHEN jsonb_typeof({column} -> {p}) = 'number'"
    " THEN ({column} ->> {p})::float8 {op} {p} ELSE false END"
)


class PostgresDialect(Dialect):
    def comparison_params(self, key: str, number: float) -> list[object]:
        return [key, key, number, key, key, number]


POSTGRES = PostgresDialect(
    placeholder="%s",
    comparison="("
    + _POSTGRES_NUMBER.replace("{column}", "attributes")
    + " OR "
    + _POSTGRES_NUMBER.replace("{column}", "resource_attributes")
    + ")",
    fulltext=POSTGRES_TSVECTOR + " @@ phraseto_tsquery('simple', {p})",
    substring="strpos(body, {p}) > 0",
    attribute="(attributes ->> {p} = {p} OR resource_attributes ->> {p} = {p})",
)


def select_statement(query: LogQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """``SELECT`` of one page (``limit + 1`` rows, so the caller knows if more follow)."""
    p = dialect.placeholder
    where: list[str] = []
    params: list[Any] = []
    if query.services:
        where.append(f"service_name IN ({', '.join(p for _ in query.services)})")
        params.extend(query.services)
    if query.min_severity is not None:
        where.append(f"severity_number >= {p}")
        params.append(query.min_severity)
    if query.start_ns is not None:
        where.append(f"ts >= {p}")
        params.append(query.start_ns)
    if query.end_ns is not None:
        where.append(f"ts < {p}")
        params.append(query.end_ns)
    if query.trace_id is not None:
        where.append(dialect.trace.format(p=p))
        params.extend(dialect.trace_params(query.trace_id))
    if query.grep is not None:
        if _HAS_TOKEN.search(query.grep):
            where.append(dialect.fulltext.format(p=p))
            params.append(dialect.phrase(query.grep))
        else:
            where.append(dialect.substring.format(p=p))
            params.append(query.grep)
    for key, value in query.attributes:
        where.append(dialect.attribute.format(p=p))
        params.extend((key, value, key, value))
    for key, operator, number in query.comparisons:
        where.append(dialect.comparison.format(p=p, op=COMPARISON_OPERATORS[operator]))
        params.extend(dialect.comparison_params(key, number))
    if query.min_id is not None:
        where.append(f"id > {p}")
        params.append(query.min_id)
    if query.after is not None:
        where.append(f"(ts, id) {'<' if query.order == 'newest' else '>'} ({p}, {p})")
        params.extend((query.after.ts, query.after.id))
    direction = "DESC" if query.order == "newest" else "ASC"
    sql = f"SELECT {SELECT_COLUMNS} FROM logs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY ts {direction}, id {direction} LIMIT {p}"
    params.append(query.limit + 1)
    return sql, params
