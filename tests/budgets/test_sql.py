"""SQL shapes and statement kinds, and the slow-query detector that uses them."""

from __future__ import annotations

import pytest

from otelkit.budgets.detectors import DetectorsConfig, detect
from otelkit.budgets.sql import normalize_query, statement_operation
from tests.budgets.spans import S, to_span


@pytest.mark.parametrize(
    ("query", "shape"),
    [
        (
            "SELECT * FROM t WHERE name = 'O''Brien' AND id IN (1, 2, 3)",
            "SELECT * FROM t WHERE name = ? AND id IN (?)",
        ),
        (
            "/*traceparent='00-4bf9-00f0-01'*/ UPDATE t SET x = $1 -- note\n WHERE y = :y",
            "UPDATE t SET x = ? WHERE y = ?",
        ),
        ("SELECT a::int, %(b)s, %s, ? FROM t", "SELECT a::int, ?, ?, ? FROM t"),
        (
            'SELECT "col-1", t1.c2 FROM "t""x" WHERE n = -1.5',
            'SELECT "col-1", t1.c2 FROM "t""x" WHERE n = ?',
        ),
        ("SELECT 'unterminated", "SELECT ?"),
        ("SELECT 1 /* unterminated", "SELECT ?"),
    ],
)
def test_query_shapes(query: str, shape: str) -> None:
    assert normalize_query(query) == shape


@pytest.mark.parametrize(
    ("query", "operation"),
    [
        ("SELECT 1", "SELECT"),
        ("  select 1", "SELECT"),
        ("(SELECT 1) UNION (SELECT 2)", "SELECT"),
        ("/* app: report */ -- why\n UPDATE t SET x = 1", "UPDATE"),
        ("insert into t values (1)", "INSERT"),
        ("DELETE FROM t", "DELETE"),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
            "SELECT * FROM r",
            "SELECT",
        ),
        (
            "WITH a AS MATERIALIZED (SELECT (1)), \"b)\" AS NOT MATERIALIZED (SELECT ')') "
            "DELETE FROM t USING a",
            "DELETE",
        ),
        ("with x as (select 1) update t set y = 2", "UPDATE"),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
        ("WITH broken", "WITH"),
        ("CALL refresh()", "CALL"),
        ("", "OTHER"),
        ("?", "OTHER"),
    ],
)
def test_statement_kinds(query: str, operation: str) -> None:
    assert statement_operation(normalize_query(query)) == operation


def slow_query(query: str, ms: float = 1500) -> S:
    attrs: dict[str, str | int | bool] = {"db.system": "postgresql", "db.statement": query}
    return S("query", kind="client", ms=ms, attrs=attrs)


RECURSIVE = (
    "WITH RECURSIVE parts(id) AS (SELECT id FROM parts WHERE id = 7 UNION ALL "
    "SELECT p.id FROM parts p JOIN parts q ON p.parent = q.id) SELECT count(*) FROM parts"
)


@pytest.mark.parametrize(
    ("query", "operation"),
    [
        (RECURSIVE, "SELECT"),
        ("UPDATE orders SET state = 'paid' WHERE id = 9", "UPDATE"),
        ("INSERT INTO audit SELECT * FROM staging", "INSERT"),
        ("DELETE FROM sessions WHERE expires < now()", "DELETE"),
        ("-- nightly\n/* job 4 */ SELECT * FROM big", "SELECT"),
    ],
)
def test_every_database_span_is_judged_by_its_duration(query: str, operation: str) -> None:
    [detection] = detect([to_span(slow_query(query))], ["shop-api"], DetectorsConfig())
    assert detection.finding.type == "slow_db_query"
    assert detection.finding.extra["otelkit.perf_issue.db_operation"] == operation
    assert detect([to_span(slow_query(query, 499))], ["shop-api"], DetectorsConfig()) == []


def test_slow_queries_can_be_limited_to_some_statement_kinds() -> None:
    config = DetectorsConfig.model_validate({"slow_db_query": {"operations": ["select"]}})
    spans = [to_span(slow_query(RECURSIVE)), to_span(slow_query("UPDATE t SET x = 1"))]
    [detection] = detect(spans, ["shop-api"] * 2, config)
    assert detection.finding.extra["otelkit.perf_issue.db_operation"] == "SELECT"
