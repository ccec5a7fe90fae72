"""The storage engine on both backends: what is stored, and what each filter finds."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from otelkit.logstore.query import QueryError, build_query
from otelkit.logstore.sqlite import SqliteBackend
from otelkit.logstore.store import LogStore, StoreError, open_store
from tests.logstore.conftest import random_trace_id
from tests.logstore.requests import SECOND, Rec, request


def bodies(store: LogStore, **filters: object) -> list[object]:
    return [r.body for r in store.query(build_query(**filters)).records]  # type: ignore[arg-type]


def write(store: LogStore, *records: Rec, **kwargs: object) -> None:
    assert store.submit(request(records, **kwargs)).result(timeout=30) == len(records)  # type: ignore[arg-type]


def test_every_field_is_stored_and_read_back(store: LogStore) -> None:
    trace, span = random_trace_id(), b"\x01" * 8
    ts = time.time_ns() - 5 * SECOND
    rec = Rec(
        "payment declined: card_expired",
        severity=17,
        severity_text="ERROR",
        ts=ts,
        trace_id=trace,
        span_id=span,
        attributes={"user.id": 42, "retry": True, "ratio": 0.5, "tags": ["a", "b"]},
    )
    resource = {
        "service.namespace": "shop",
        "service.version": "1.4.2",
        "deployment.environment.name": "prod",
        "service.instance.id": "pod-7",
        "host.name": "node-1",
    }
    write(store, rec, service="checkout", resource=resource, scope="shop.payments")
    (got,) = store.query(build_query()).records
    assert (got.ts, got.severity_number, got.severity_text) == (ts, 17, "ERROR")
    assert got.observed_ts is not None and got.observed_ts >= ts
    assert got.body == "payment declined: card_expired"
    assert got.attributes == {"user.id": 42, "retry": True, "ratio": 0.5, "tags": ["a", "b"]}
    assert got.resource["host.name"] == "node-1"
    assert (got.service_name, got.service_namespace, got.service_version) == (
        "checkout",
        "shop",
        "1.4.2",
    )
    assert (got.deployment_environment, got.service_instance_id) == ("prod", "pod-7")
    assert got.scope_name == "shop.payments"
    assert (got.trace_id, got.span_id, got.flags) == (trace.hex(), span.hex(), 1)


def test_structured_and_unicode_bodies(store: LogStore) -> None:
    structured = {"event": "login", "user": {"name": "Zoë", "roles": ["admin"]}, "ok": True}
    write(store, Rec(structured), Rec("naïve café — 東京 🚀"), Rec(None))
    found = bodies(store, order="oldest")
    assert found == [structured, "naïve café — 東京 🚀", None]
    assert bodies(store, grep="東京") == ["naïve café — 東京 🚀"]
    assert bodies(store, grep="Zoë") == [structured]


def test_a_time_far_in_the_future_is_kept_at_its_observed_time(store: LogStore) -> None:
    """Kept, not refused (it is beyond what a signed 64-bit integer holds), and not parked
    above the records of the present in every newest-first search for good."""
    write(store, Rec("from the far future", ts=2**64 - 1))
    write(store, Rec("now"))
    assert bodies(store) == ["now", "from the far future"]
    assert bodies(store, since="1m") == ["now", "from the far future"]
    assert max(record.ts for record in store.query(build_query()).records) <= time.time_ns()


def test_nul_characters_are_kept_or_replaced_not_refused(store: LogStore) -> None:
    write(store, Rec("before\x00after", attributes={"k": "v\x00w"}))
    (got,) = store.query(build_query()).records
    # SQLite keeps NUL; PostgreSQL text cannot hold it and gets U+FFFD instead.
    assert got.body in ("before\x00after", "before\ufffdafter")
    assert got.attributes["k"] in ("v\x00w", "v\ufffdw")


def test_each_filter_finds_exactly_its_records(store: LogStore) -> None:
    now = time.time_ns()
    trace = random_trace_id()
    write(
        store,
        Rec("old checkout line", ts=now - 3 * 3600 * SECOND),
        Rec("cart updated", severity=9, ts=now - 50 * SECOND, attributes={"cart.id": "c-1"}),
        Rec("slow query", severity=13, ts=now - 40 * SECOND, trace_id=trace),
        Rec("charge failed", severity=17, ts=now - 30 * SECOND, trace_id=trace),
        service="checkout",
    )
    write(store, Rec("user signed in", severity=9, ts=now - 20 * SECOND), service="auth")
    assert bodies(store, services=["auth"]) == ["user signed in"]
    assert bodies(store, severity="warn") == ["charge failed", "slow query"]
    assert bodies(store, severity="error") == ["charge failed"]
    assert bodies(store, since="1h", services=["checkout"]) == [
        "charge failed",
        "slow query",
        "cart updated",
    ]
    assert bodies(store, start="4h", until="2h") == ["old checkout line"]
    assert bodies(store, trace_id=trace.hex()) == ["slow query", "charge failed"]
    assert bodies(store, grep="CHARGE") == ["charge failed"]
    assert bodies(store, attributes=["cart.id=c-1"]) == ["cart updated"]
    assert bodies(store, attributes=["service.name=auth"]) == ["user signed in"]
    assert bodies(store, attributes=["cart.id=c-2"]) == []


def test_number_comparisons_find_slow_requests_to_one_route(store: LogStore) -> None:
    now = time.time_ns()
    write(
        store,
        *(
            Rec(name, ts=now - (10 - i) * SECOND, attributes=attributes)
            for i, (name, attributes) in enumerate(
                [
                    ("fast checkout", {"http.route": "/checkout", "duration_ms": 12.5}),
                    ("slow checkout", {"http.route": "/checkout", "duration_ms": 740.25}),
                    ("edge checkout", {"http.route": "/checkout", "duration_ms": 500}),
                    ("slow cart", {"http.route": "/cart", "duration_ms": 900.0}),
                    ("text duration", {"http.route": "/checkout", "duration_ms": "900"}),
                    ("no duration", {"http.route": "/checkout"}),
                ]
            )
        ),
        service="shop",
    )
    route = "http.route=/checkout"
    assert bodies(store, attributes=[route, "duration_ms>=500"]) == [
        "edge checkout",
        "slow checkout",
    ]
    assert bodies(store, attributes=[route, "duration_ms>500"]) == ["slow checkout"]
    assert bodies(store, attributes=[route, "duration_ms<500"]) == ["fast checkout"]
    assert bodies(store, attributes=[route, "duration_ms<=12.5"]) == ["fast checkout"]
    assert bodies(store, attributes=["duration_ms>800"]) == ["slow cart"]
    assert bodies(store, attributes=["duration_ms>1e6"]) == []


def test_trace_search_returns_one_requests_lines_in_time_order(store: LogStore) -> None:
    now = time.time_ns()
    mine, other = random_trace_id(), random_trace_id()
    # Written out of order and interleaved with another request's lines.
    write(
        store,
        Rec("step 3", ts=now + 3, trace_id=mine),
        Rec("other 1", ts=now + 1, trace_id=other),
        Rec("step 1", ts=now + 1, trace_id=mine),
        Rec("no trace", ts=now + 2),
        Rec("step 2", ts=now + 2, trace_id=mine),
    )
    assert bodies(store, trace_id=mine.hex()) == ["step 1", "step 2", "step 3"]
    assert bodies(store, trace_id=mine.hex(), order="newest") == ["step 3", "step 2", "step 1"]


def test_cursor_pages_cover_everything_once(store: LogStore) -> None:
    now = time.time_ns()
    # Equal timestamps across page boundaries must neither repeat nor vanish.
    write(store, *(Rec(f"line {i}", ts=now + i // 3) for i in range(25)))
    seen: list[str] = []
    cursor = None
    while True:
        page = store.query(build_query(limit=4, cursor=cursor))
        seen.extend(r.body for r in page.records)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor.encode()
    assert sorted(seen) == sorted(f"line {i}" for i in range(25))
    assert len(seen) == 25


HOSTILE = [
    "'; DROP TABLE logs; --",
    '" OR 1=1 --',
    "body:secret OR NEAR(a b) AND *",
    "NOT",
    '"unbalanced',
    "%_%",
    "\\",
    "\x00",
    "a" * 100_000,
    "word " * 1_000,
    "ünï " * 900,
    "))((",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_search_text_is_only_text(store: LogStore, text: str) -> None:
    write(store, Rec("an ordinary line"), Rec(f"prefix {text} suffix"))
    found = bodies(store, grep=text)
    # Never an error, never everything: at most the record that contains the text
    # (PostgreSQL stores NUL as U+FFFD).
    assert len(found) <= 1
    assert all(str(b).replace("\ufffd", "\x00") == f"prefix {text} suffix" for b in found)
    assert store.count() == 2
    assert bodies(store, attributes=[f"{text}={text}"]) == []
    with pytest.raises(QueryError, match="is not a number"):
        build_query(attributes=[f"k>={text}"])
    assert bodies(store, services=[text]) == []


def test_search_text_of_too_many_words_is_refused_clearly() -> None:
    with pytest.raises(QueryError, match="grep: more than 1000 words"):
        build_query(grep="word " * 1001)
    with pytest.raises(QueryError, match="grep: longer than 100000 characters"):
        build_query(grep="x" * 100_001)


def test_search_text_with_operators_matches_literally(store: LogStore) -> None:
    write(store, Rec('query was "a OR b" NEAR the end'), Rec("a"), Rec("b"))
    assert bodies(store, grep='"a OR b" NEAR') == ['query was "a OR b" NEAR the end']
    assert bodies(store, grep="a OR b") == ['query was "a OR b" NEAR the end']


def test_retention_removes_what_is_old_and_nothing_else(store: LogStore) -> None:
    now = time.time_ns()
    day = 86400 * SECOND
    old = [Rec(f"old {i}", ts=now - 8 * day - i * SECOND) for i in range(7)]
    young = [Rec(f"young {i}", ts=now - 6 * day + i * SECOND) for i in range(5)]
    write(store, *old, *young, Rec("just written"))
    assert store.prune(7 * 86400) == 7
    assert sorted(bodies(store, limit=100)) == sorted(
        [f"young {i}" for i in range(5)] + ["just written"]
    )
    assert bodies(store, grep="old") == []
    assert store.prune(7 * 86400) == 0


def test_size_retention_keeps_the_newest_under_the_limit(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    store.start_writer()
    now = time.time_ns()
    for batch in range(10):
        recs = [Rec(f"{batch}-{i} " + "x" * 400, ts=now + batch * 1000 + i) for i in range(500)]
        store.submit(request(recs)).result(timeout=30)
    removed = store.prune(None, max_bytes=1_000_000)
    assert 0 < removed < 5000
    newest = store.query(build_query(limit=1)).records[0].body
    assert newest.startswith("9-499 ")
    backend = store.backend
    assert isinstance(backend, SqliteBackend)
    assert backend.integrity_check() == []
    store.close()


def test_migrations_run_once_and_record_the_version(store_url: str) -> None:
    first = open_store(store_url)
    first.start_writer()
    write(first, Rec("kept across reopen"))
    first.close()
    second = open_store(store_url)
    second.start_writer()
    assert bodies(second) == ["kept across reopen"]
    assert second.backend.schema_version() == 1  # type: ignore[attr-defined]
    second.close()


def test_sqlite_store_is_wal_and_has_fts5(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    store.start_writer()
    store.close()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"logs", "logs_fts", "logs_trace_fts", "schema_version", "logs_service_ts"} <= names


@pytest.mark.parametrize("count", [1, 7, 511, 512, 1300])
def test_a_write_of_any_size_stores_and_indexes_every_record_in_order(
    sqlite_url: str, count: int
) -> None:
    store = open_store(sqlite_url)
    store.start_writer()
    trace = random_trace_id()
    write(store, *(Rec(f"line {n}", ts=SECOND + n, trace_id=trace) for n in range(count)))
    expected = [f"line {n}" for n in range(count)]
    assert bodies(store, order="oldest", limit=count) == expected
    assert bodies(store, trace_id=trace.hex(), order="oldest", limit=count) == expected
    assert bodies(store, grep=f"line {count - 1}") == [f"line {count - 1}"]
    store.close()


def test_sqlite_columns_hold_nulls_blobs_and_integers(sqlite_url: str) -> None:
    """What the file shows to other SQLite tools: absent fields NULL, IDs as blobs,
    body_json as 0 or 1."""
    store = open_store(sqlite_url)
    store.start_writer()
    trace = random_trace_id()
    write(store, Rec({"k": "v"}, trace_id=trace, span_id=b"\x02" * 8), Rec("plain"))
    store.close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "SELECT trace_id, typeof(span_id), body_json, typeof(body_json),"
            " typeof(service_namespace), typeof(event_name), typeof(severity_text)"
            " FROM logs ORDER BY id"
        ).fetchall()
    assert rows == [
        (trace, "blob", 1, "integer", "null", "null", "null"),
        (None, "null", 0, "integer", "null", "null", "null"),
    ]


def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    store.start_writer()
    store.close()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version, description) VALUES (99, 'future')")
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(sqlite_url).start_writer()


def test_query_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'nope.db'}", create=False)
    with pytest.raises(StoreError, match="no log store at"):
        store.query(build_query())
    assert not (tmp_path / "nope.db").exists()


def test_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(StoreError, match="not a log store URL"):
        open_store("mysql://localhost/logs")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///otelkit-data/logs.db", "otelkit-data/logs.db"),
        ("sqlite:////var/lib/otelkit/logs.db", "/var/lib/otelkit/logs.db"),
        ("sqlite:logs.db", "logs.db"),
        ("sqlite:///logs.db?mode=rwc", "logs.db"),
    ],
)
def test_sqlite_urls_read_as_sqlalchemy_reads_them(url: str, path: str) -> None:
    assert SqliteBackend(url).path == Path(path)


def test_three_slashes_write_below_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///otelkit-data/logs.db")
    store.start_writer()
    write(store, Rec("relative"))
    store.close()
    assert (tmp_path / "otelkit-data" / "logs.db").is_file()
    assert store.backend.location == f"SQLite {tmp_path / 'otelkit-data' / 'logs.db'}"


@pytest.mark.parametrize("url", ["sqlite://host/logs.db", "sqlite:///", "sqlite:///:memory:"])
def test_sqlite_urls_without_a_file_are_refused(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite"):
        SqliteBackend(url)
