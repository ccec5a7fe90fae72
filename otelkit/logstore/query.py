"""Search requests: validated once, here, for the CLI and the HTTP API alike.

Every user input is checked and turned into typed values (nanosecond times, a severity
number, trace ID bytes); the backends only ever bind these values as SQL parameters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from otelkit.collector.runtime.types import parse_duration

Order = Literal["newest", "oldest"]
Comparison = Literal[">", ">=", "<", "<="]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_GREP_CHARS = 100_000
# PostgreSQL evaluates a phrase as a tree; thousands of words exhaust its stack.
MAX_GREP_WORDS = 1_000
_WORD = re.compile(r"[^\W_]+")

# Log data model severity ranges: TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16,
# ERROR 17-20, FATAL 21-24.
SEVERITY_BASES = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
_SEVERITY_ALIASES = {"warning": "warn", "critical": "fatal", "err": "error"}
_SEVERITY_NAME = re.compile(r"^([a-z]+)([2-4]?)$")
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")


class QueryError(ValueError):
    """A search input that is not valid; ``field`` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the last record's time and id."""

    ts: int
    id: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.ts}.{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            ts, _, id_ = raw.partition(".")
            return cls(int(ts), int(id_))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise QueryError("cursor", "not a cursor returned by this API") from None


@dataclass(frozen=True)
class LogQuery:
    """A validated search. Times are Unix nanoseconds, ``[start_ns, end_ns)``."""

    services: tuple[str, ...] = ()
    min_severity: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    trace_id: bytes | None = None
    grep: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    # Numeric comparisons on record or resource attributes: (key, operator, number).
    comparisons: tuple[tuple[str, Comparison, float], ...] = ()
    limit: int = DEFAULT_LIMIT
    order: Order = "newest"
    after: Cursor | None = None
    # Only records stored after this id (for tail); not a user-facing filter.
    min_id: int | None = None


@dataclass
class LogRecordView:
    """One stored record as the CLI and the API present it."""

    id: int
    ts: int
    observed_ts: int | None
    severity_number: int
    severity_text: str | None
    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]
    service_name: str | None
    service_namespace: str | None
    service_version: str | None
    deployment_environment: str | None
    service_instance_id: str | None
    scope_name: str | None
    scope_version: str | None
    trace_id: str | None
    span_id: str | None
    flags: int
    event_name: str | None

    @property
    def severity(self) -> str:
        return self.severity_text or severity_name(self.severity_number)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": format_ns(self.ts),
            "time_unix_nano": self.ts,
            "observed_time_unix_nano": self.observed_ts,
            "severity_number": self.severity_number,
            "severity_text": self.severity_text,
            "body": self.body,
            "attributes": self.attributes,
            "resource": self.resource,
            "service_name": self.service_name,
            "service_namespace": self.service_namespace,
            "service_version": self.service_version,
            "deployment_environment": self.deployment_environment,
            "service_instance_id": self.service_instance_id,
            "scope_name": self.scope_name,
            "scope_version": self.scope_version,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "flags": self.flags,
            "event_name": self.event_name,
        }


@dataclass
class Page:
    records: list[LogRecordView] = field(default_factory=list)
    next_cursor: Cursor | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "records": [record.to_json() for record in self.records],
            "next_cursor": self.next_cursor.encode() if self.next_cursor else None,
        }


def view_from_row(row: Sequence[Any]) -> LogRecordView:
    """A record from a row selected as :data:`otelkit.logstore.sql.SELECT_COLUMNS`."""
    (id_, ts, observed, sev_num, sev_text, body, body_json, attrs, resource, service,
     namespace, version, env, instance, scope, scope_version, trace_id, span_id, flags,
     event_name) = row  # fmt: skip
    return LogRecordView(
        id=id_,
        ts=ts,
        observed_ts=observed,
        severity_number=sev_num or 0,
        severity_text=sev_text,
        body=_json_value(body) if body_json else body,
        attributes=_json_object(attrs),
        resource=_json_object(resource),
        service_name=service,
        service_namespace=namespace,
        service_version=version,
        deployment_environment=env,
        service_instance_id=instance,
        scope_name=scope,
        scope_version=scope_version,
        trace_id=bytes(trace_id).hex() if trace_id else None,
        span_id=bytes(span_id).hex() if span_id else None,
        flags=flags or 0,
        event_name=event_name,
    )


def page_from_rows(rows: Sequence[Sequence[Any]], query: LogQuery) -> Page:
    """A page from up to ``limit + 1`` selected rows; the extra row means more follow."""
    views = [view_from_row(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit and views
    return Page(views, Cursor(views[-1].ts, views[-1].id) if more else None)


def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _json_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    loaded = _json_value(value)
    return loaded if isinstance(loaded, dict) else {}


# Parsing ---------------------------------------------------------------------------------
def parse_severity(text: str, field: str = "severity") -> int:
    """The lowest severity number a filter keeps: ``warn`` -> 13, ``error3`` -> 19, ``9``."""
    value = text.strip().lower()
    if value.isdigit() and 1 <= int(value) <= 24:
        return int(value)
    match = _SEVERITY_NAME.match(value)
    if match:
        base = _SEVERITY_ALIASES.get(match.group(1), match.group(1))
        if base in SEVERITY_BASES:
            return SEVERITY_BASES[base] + int(match.group(2) or 1) - 1
    raise QueryError(
        field,
        f"unknown severity {text!r}: expected trace, debug, info, warn, error or fatal "
        "(optionally with 2-4, as in error2), or a severity number 1-24",
    )


def severity_name(number: int) -> str:
    """``INFO``, ``ERROR2`` ... for a severity number; ``UNSPECIFIED`` for 0."""
    if not 1 <= number <= 24:
        return "UNSPECIFIED"
    names = list(SEVERITY_BASES)
    base = names[(number - 1) // 4].upper()
    step = (number - 1) % 4 + 1
    return base if step == 1 else f"{base}{step}"


def parse_time(text: str, field: str, now_ns: int) -> int:
    """Unix nanoseconds from RFC 3339 / ISO 8601 (naive means UTC), a date, Unix seconds,
    or a duration meaning that long ago (``15m``, ``2h``)."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 1e9)
    try:
        return now_ns - int(parse_duration(value) * 1e9)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(
            field,
            f"{text!r} is not a time: expected RFC 3339 (2026-11-28T19:00:00Z), a date "
            "(2026-11-28), Unix seconds, or a duration ago (15m, 2h, 7d)",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def parse_trace_id(text: str, field: str = "trace_id") -> bytes:
    value = text.strip()
    if not _TRACE_ID.match(value) or not value.strip("0"):
        raise QueryError(
            field, f"{text[:80]!r} is not a trace ID: expected 32 hex digits, not all zero"
        )
    return bytes.fromhex(value)


_ATTRIBUTE_OPERATOR = re.compile(r"[=<>]")


def parse_attribute(text: str, field: str = "attr") -> tuple[str, str, str | float]:
    """``key=value`` (text equality), or ``key>N``, ``key>=N``, ``key<N``, ``key<=N`` (a
    numeric comparison, true only where the attribute is a number):
    ``duration_ms>=500``. The key ends at the first ``=``, ``<`` or ``>``."""
    match = _ATTRIBUTE_OPERATOR.search(text)
    key = text[: match.start()].strip() if match else ""
    if match is None or not key:
        raise QueryError(
            field, f"{text[:80]!r} is not key=value or a comparison such as duration_ms>=500"
        )
    operator, value = match.group(), text[match.end() :]
    if operator == "=":
        return key, "=", value
    if value.startswith("="):
        operator, value = operator + "=", value[1:]
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise QueryError(field, f"{value[:80]!r} is not a number to compare {key} with")
    return key, operator, number


def parse_limit(text: str | int, field: str = "limit", maximum: int = MAX_LIMIT) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise QueryError(field, f"{text!r} is not a whole number") from None
    if not 1 <= limit <= maximum:
        raise QueryError(field, f"must be between 1 and {maximum}, not {limit}")
    return limit


def build_query(
    *,
    services: Iterable[str] = (),
    severity: str | None = None,
    since: str | None = None,
    start: str | None = None,
    until: str | None = None,
    trace_id: str | None = None,
    grep: str | None = None,
    attributes: Iterable[str] = (),
    limit: str | int = DEFAULT_LIMIT,
    order: str | None = None,
    cursor: str | None = None,
    max_limit: int = MAX_LIMIT,
    now_ns: int | None = None,
) -> LogQuery:
    """Validate raw text inputs (names as on the command line) into a :class:`LogQuery`.

    With a trace ID the default order is oldest first: a request's lines read top down.
    """
    now = now_ns or time.time_ns()
    if since is not None and start is not None:
        raise QueryError("since", "give --since or --from, not both")
    start_ns = None
    if since is not None:
        try:
            start_ns = now - int(parse_duration(since) * 1e9)
        except ValueError:
            raise QueryError(
                "since", f"{since!r} is not a duration such as 15m, 1h or 7d"
            ) from None
    elif start is not None:
        start_ns = parse_time(start, "from", now)
    end_ns = parse_time(until, "until", now) if until is not None else None
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise QueryError("until", "must be later than the start of the time range")
    if grep is not None and len(grep) > MAX_GREP_CHARS:
        raise QueryError("grep", f"longer than {MAX_GREP_CHARS} characters")
    if grep is not None and len(_WORD.findall(grep)) > MAX_GREP_WORDS:
        raise QueryError("grep", f"more than {MAX_GREP_WORDS} words")
    trace = parse_trace_id(trace_id) if trace_id else None
    parsed = [parse_attribute(a) for a in attributes]
    if order not in (None, "newest", "oldest"):
        raise QueryError("order", f"{order!r} is not newest or oldest")
    resolved: Order = order or ("oldest" if trace else "newest")  # type: ignore[assignment]
    return LogQuery(
        services=tuple(s.strip() for s in services if s.strip()),
        min_severity=parse_severity(severity) if severity else None,
        start_ns=start_ns,
        end_ns=end_ns,
        trace_id=trace,
        grep=grep if grep else None,
        attributes=tuple((key, str(value)) for key, op, value in parsed if op == "="),
        comparisons=tuple(
            (key, op, float(value))  # type: ignore[misc]
            for key, op, value in parsed
            if op != "="
        ),
        limit=parse_limit(limit, maximum=max_limit),
        order=resolved,
        after=Cursor.decode(cursor) if cursor else None,
    )


def query_from_params(params: Mapping[str, list[str]], max_limit: int = 1000) -> LogQuery:
    """A query from HTTP query parameters (``parse_qs`` output)."""
    known = {"service", "severity", "since", "from", "until", "trace_id", "grep", "attr",
             "limit", "order", "cursor"}  # fmt: skip
    for name in params:
        if name not in known:
            raise QueryError(name, f"unknown parameter; known: {', '.join(sorted(known))}")

    def one(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise QueryError(name, "given more than once")
        return values[0]

    return build_query(
        services=params.get("service", []),
        severity=one("severity"),
        since=one("since"),
        start=one("from"),
        until=one("until"),
        trace_id=one("trace_id"),
        grep=one("grep"),
        attributes=params.get("attr", []),
        limit=one("limit") or DEFAULT_LIMIT,
        order=one("order"),
        cursor=one("cursor"),
        max_limit=max_limit,
    )


def format_ns(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2026-11-28T19:40:01.123456789Z``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"
