"""``otelkit logs query`` and ``otelkit logs tail``: search the log store from a shell."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TextIO

from otelkit.collector.runtime.scrub import redact_text
from otelkit.logstore.query import LogQuery, LogRecordView, QueryError, build_query, format_ns
from otelkit.logstore.store import LogStore, StoreError, open_store

EXIT_ERROR = 1
EXIT_USAGE = 2
URL_ENV = "OTELKIT_LOGSTORE_URL"
# PostgreSQL ids come from a sequence shared by concurrent writers, so a transaction that
# commits late can hold ids below ones already shown; tail looks back this far.
_TAIL_LOOKBACK_IDS = 10_000


def register(subparsers: Any) -> None:
    logs = subparsers.add_parser("logs", help="search the log store")
    actions = logs.add_subparsers(dest="action", required=True, metavar="ACTION")
    query = actions.add_parser("query", help="search stored log records, newest first")
    _add_filters(query)
    query.add_argument("--limit", default="100", help="records to show (default 100)")
    query.add_argument(
        "--order", choices=("newest", "oldest"),
        help="newest first by default; oldest first when --trace-id is given",
    )  # fmt: skip
    query.set_defaults(handler=_query)
    tail = actions.add_parser("tail", help="show the latest records and follow new ones")
    _add_filters(tail)
    tail.add_argument("--lines", "-n", default="10", help="records shown before following")
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    tail.add_argument("--max-polls", type=int, default=0, help=argparse.SUPPRESS)
    tail.set_defaults(handler=_tail)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get(URL_ENV),
        help=f"sqlite:///path/to/logs.db or postgresql://... (default ${URL_ENV})",
    )  # fmt: skip
    parser.add_argument("--service", action="append", default=[], help="service.name (repeatable)")
    parser.add_argument("--severity", help="at least this level: trace debug info warn error fatal")
    parser.add_argument("--since", help="records of the last DURATION (15m, 1h, 7d)")
    parser.add_argument("--from", dest="start", help="start time: RFC 3339, date, Unix seconds, or 2h (ago)")  # fmt: skip
    parser.add_argument("--until", help="end time (exclusive), same forms as --from")
    parser.add_argument("--trace-id", help="32 hex digits: every line of one request")
    parser.add_argument("--grep", help="words in the body, matched as a phrase (case-insensitive)")
    parser.add_argument(
        "--attr", action="append", default=[],
        help="key=value on record or resource attributes, or a number comparison: "
        "'duration_ms>=500' (> >= < <=) (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _parse(args: argparse.Namespace, limit: str, order: str | None) -> LogQuery:
    return build_query(
        services=args.service,
        severity=args.severity,
        since=args.since,
        start=args.start,
        until=args.until,
        trace_id=args.trace_id,
        grep=args.grep,
        attributes=args.attr,
        limit=limit,
        order=order,
    )


def _open(args: argparse.Namespace) -> LogStore | None:
    if not args.url:
        print(f"otelkit logs: give --url or set ${URL_ENV}", file=sys.stderr)
        return None
    try:
        return open_store(args.url, create=False)
    except StoreError as exc:
        print(f"otelkit logs: {redact_text(str(exc))}", file=sys.stderr)
        return None


def _query(args: argparse.Namespace) -> int:
    try:
        query = _parse(args, args.limit, args.order)
    except QueryError as exc:
        print(
            f"otelkit logs query: --{exc.field.replace('_', '-')}: {exc.message}", file=sys.stderr
        )
        return EXIT_USAGE
    store = _open(args)
    if store is None:
        return EXIT_ERROR
    try:
        page = store.query(query)
    except StoreError as exc:
        print(f"otelkit logs query: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()
    _print(page.records, args.json, sys.stdout)
    if page.next_cursor is not None and not args.json:
        print("(more records: raise --limit or narrow the search)", file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    try:
        query = _parse(args, args.lines, "newest")
    except QueryError as exc:
        print(f"otelkit logs tail: --{exc.field.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    store = _open(args)
    if store is None:
        return EXIT_ERROR
    try:
        return _follow(store, query, args)
    except KeyboardInterrupt:
        return 0
    except StoreError as exc:
        print(f"otelkit logs tail: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()


def _follow(store: LogStore, query: LogQuery, args: argparse.Namespace) -> int:
    """Print the last records, then poll for records with higher ids (insertion order)."""
    start_id = last_id = store.max_id()
    latest = store.query(query).records
    _print(reversed(latest), args.json, sys.stdout)
    sys.stdout.flush()
    seen = {record.id for record in latest}
    lookback = _TAIL_LOOKBACK_IDS if not store.url.startswith("sqlite:") else 0
    polls = 0
    while not args.max_polls or polls < args.max_polls:
        time.sleep(args.interval)
        polls += 1
        batch = _newer(store, query, max(last_id - lookback, start_id))
        fresh = [record for record in batch if record.id not in seen]
        _print(fresh, args.json, sys.stdout)
        sys.stdout.flush()
        for record in fresh:
            seen.add(record.id)
            last_id = max(last_id, record.id)
        if len(seen) > 4 * _TAIL_LOOKBACK_IDS:
            seen = {i for i in seen if i > last_id - lookback}
    return 0


def _newer(store: LogStore, query: LogQuery, after_id: int) -> list[LogRecordView]:
    """Every record with an id above ``after_id`` that matches, in insertion order."""
    records: list[LogRecordView] = []
    page_query = replace(query, limit=1000, order="oldest", after=None, min_id=after_id)
    while True:
        page = store.query(page_query)
        records.extend(page.records)
        if page.next_cursor is None:
            break
        page_query = replace(page_query, after=page.next_cursor)
    records.sort(key=lambda record: record.id)
    return records


def _print(records: Iterable[LogRecordView], as_json: bool, out: TextIO) -> None:
    if as_json:
        for record in records:
            out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        return
    width = shutil.get_terminal_size((160, 24)).columns
    for record in records:
        out.write(_line(record, width) + "\n")


def _line(record: LogRecordView, width: int) -> str:
    """``time  LEVEL  service  trace  body`` on one line; newlines in the body shown as ⏎,
    and every other character a terminal would act on shown escaped (see :func:`visible`)."""
    body = (
        record.body if isinstance(record.body, str) else json.dumps(record.body, ensure_ascii=False)
    )
    body = visible((body or "").replace("\r\n", "\n"))
    stamp = format_ns(record.ts)[:23] + "Z"
    trace = record.trace_id or "-"
    service = visible(record.service_name or "-")
    return f"{stamp}  {visible(record.severity):<7} {service:<20} {trace}  {body}"


# What a terminal acts on instead of showing: C0 and C1 controls (ESC starts the sequences
# that move the cursor, erase lines and hide text; CR returns to the line's start), DEL
# and the Unicode line and paragraph separators. A tab is shown as space.
_VISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_VISIBLE.update({ord("\t"): "\t", ord("\n"): "⏎", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def visible(text: str) -> str:
    """``text`` as it may reach a terminal: one record's text must not split its line, nor
    move the cursor to overwrite, erase or hide the lines of other records."""
    return text.translate(_VISIBLE)
