"""Search input validation: every bad input is refused with an error naming it."""

from __future__ import annotations

import pytest

from otelkit.logstore.query import (
    Cursor,
    QueryError,
    build_query,
    format_ns,
    parse_severity,
    parse_time,
    query_from_params,
    severity_name,
)

NOW = 1_800_000_000 * 1_000_000_000


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("trace", 1),
        ("DEBUG", 5),
        ("info", 9),
        ("warn", 13),
        ("Warning", 13),
        ("error", 17),
        ("error3", 19),
        ("fatal", 21),
        ("critical", 21),
        ("17", 17),
    ],
)
def test_severity_names_and_numbers(text: str, number: int) -> None:
    assert parse_severity(text) == number


@pytest.mark.parametrize("text", ["loud", "0", "25", "error5", "", "warn; drop"])
def test_unknown_severity_is_refused(text: str) -> None:
    with pytest.raises(QueryError, match="severity: unknown severity"):
        build_query(severity=text or " ")


def test_severity_names_for_display() -> None:
    assert [severity_name(n) for n in (0, 1, 9, 14, 24)] == [
        "UNSPECIFIED", "TRACE", "INFO", "WARN2", "FATAL4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-15T08:00:00Z", 1_800_000_000 * 10**9),
        ("2027-01-15T08:00:00.5+00:00", 1_800_000_000 * 10**9 + 500_000_000),
        ("2027-01-15 08:00:00", 1_800_000_000 * 10**9),
        ("1800000000", 1_800_000_000 * 10**9),
        ("2h", NOW - 7200 * 10**9),
    ],
)
def test_time_forms(text: str, expected: int) -> None:
    assert parse_time(text, "from", NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "12:00", "1h ago", "--"])
def test_bad_time_is_refused(text: str) -> None:
    with pytest.raises(QueryError, match=r"from: .* is not a time"):
        build_query(start=text, now_ns=NOW)


def test_time_range_must_be_ordered() -> None:
    with pytest.raises(QueryError, match="until: must be later"):
        build_query(start="2027-01-15T09:00:00Z", until="2027-01-15T08:00:00Z")


def test_since_and_from_together_are_refused() -> None:
    with pytest.raises(QueryError, match="since: give --since or --from"):
        build_query(since="1h", start="2h")


def test_bad_since_is_refused() -> None:
    with pytest.raises(QueryError, match="since: '5' is not a duration"):
        build_query(since="5")


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6a3ce929d0e0e4736ff",
        "0" * 32,
        "4bf92f3577b34da6a3ce929d0e0e473g",
        "' OR 1=1 --",
    ],
)
def test_bad_trace_id_is_refused(text: str) -> None:
    with pytest.raises(QueryError, match=r"trace_id: .* is not a trace ID"):
        build_query(trace_id=text)


def test_trace_id_is_case_insensitive_and_orders_oldest_first() -> None:
    query = build_query(trace_id="4BF92F3577B34DA6A3CE929D0E0E4736")
    assert query.trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert query.order == "oldest"
    assert build_query().order == "newest"


@pytest.mark.parametrize("text", ["0", "-1", "10001", "ten"])
def test_bad_limit_is_refused(text: str) -> None:
    with pytest.raises(QueryError, match="limit: "):
        build_query(limit=text)


def test_attribute_filters_need_key_and_value() -> None:
    assert build_query(attributes=["http.route=/a=b"]).attributes == (("http.route", "/a=b"),)
    with pytest.raises(QueryError, match="attr: 'novalue' is not key=value"):
        build_query(attributes=["novalue"])
    with pytest.raises(QueryError, match="attr: '>=5' is not key=value or a comparison"):
        build_query(attributes=[">=5"])


def test_number_comparisons_on_attributes() -> None:
    query = build_query(
        attributes=["http.route=/checkout", "duration_ms>=500", "size < 1e3", "n>-2", "x<=0.5"]
    )
    assert query.attributes == (("http.route", "/checkout"),)
    assert query.comparisons == (
        ("duration_ms", ">=", 500.0),
        ("size", "<", 1000.0),
        ("n", ">", -2.0),
        ("x", "<=", 0.5),
    )
    assert build_query(attributes=["note=a>b"]).attributes == (("note", "a>b"),)
    for text in ["duration_ms>=slow", "duration_ms>nan", "duration_ms<inf", "d>="]:
        with pytest.raises(QueryError, match="is not a number to compare"):
            build_query(attributes=[text])


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(1_800_000_000_123_456_789, 42)
    assert Cursor.decode(cursor.encode()) == cursor
    for garbage in ["x", "!!!!", "MTIz"]:
        with pytest.raises(QueryError, match="cursor: not a cursor"):
            Cursor.decode(garbage)


def test_http_parameters() -> None:
    query = query_from_params(
        {"service": ["a", "b"], "severity": ["error"], "attr": ["k=v"], "limit": ["5"]}
    )
    assert (query.services, query.min_severity, query.limit) == (("a", "b"), 17, 5)
    slow = query_from_params({"attr": ["http.route=/checkout", "duration_ms>=500"]})
    assert slow.comparisons == (("duration_ms", ">=", 500.0),)
    with pytest.raises(QueryError, match="sevrity: unknown parameter"):
        query_from_params({"sevrity": ["error"]})
    with pytest.raises(QueryError, match="limit: given more than once"):
        query_from_params({"limit": ["5", "6"]})
    with pytest.raises(QueryError, match="limit: must be between 1 and 1000"):
        query_from_params({"limit": ["5000"]})


def test_times_are_shown_in_utc_with_nanoseconds() -> None:
    assert format_ns(1_800_000_000_123_456_789) == "2027-01-15T08:00:00.123456789Z"
