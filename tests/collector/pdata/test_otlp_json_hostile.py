"""Hostile OTLP/JSON of 1 to 4 MB costs bounded time, and oversized input is refused
before it is parsed. The bound is generous (a loaded 2-core machine); the failure it
guards against took 50 s for 1 MB (a bad value at the bottom of nested arrays made every
level walk its whole subtree again)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest

from otelkit.collector.pdata.otlp_json import MAX_REQUEST_BYTES, decode_any, decode_request
from otelkit.collector.pdata.signals import Signal

BOUND_SECONDS = 20.0


def nested_arrays(size: int, depth: int, bad_leaf: bool) -> bytes:
    """Attribute values nested ``depth`` arrays deep, each level wide, the leaf last."""
    width = max(1, size // (depth * 17))
    siblings = b",".join([b'{"intValue":"1"}'] * width)
    inner = b'{"intValue":true}' if bad_leaf else b'{"intValue":"2"}'
    for _ in range(depth):
        inner = b'{"arrayValue":{"values":[' + siblings + b"," + inner + b"]}}"
    return b'{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":' + inner + b"}]}}]}"


def spans(size: int, last: bytes) -> bytes:
    span = b'{"name":"GET /x","traceId":"0102030405060708090a0b0c0d0e0f10","kind":2}'
    count = size // (len(span) + 1)
    return (
        b'{"resourceSpans":[{"scopeSpans":[{"spans":['
        + b",".join([span] * count)
        + b","
        + last
        + b"]}]}]}"
    )


def wrap_string(value: bytes) -> bytes:
    return (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"'
        + value
        + b'"}}]}]}]}'
    )


HOSTILE: dict[str, Callable[[int], bytes]] = {
    "deep arrays": lambda n: b"[" * n + b"]" * n,
    "deep objects": lambda n: b'{"a":' * (n // 5) + b"1" + b"}" * (n // 5),
    "wide nesting, bad leaf": lambda n: nested_arrays(n, 30, True),
    "wide nesting, too deep": lambda n: nested_arrays(n, 90, False),
    "bad value after many spans": lambda n: spans(n, b'{"name":5}'),
    "bad ID after many spans": lambda n: spans(n, b'{"traceId":"xyz"}'),
    "huge number": lambda n: spans(n // 2, b'{"startTimeUnixNano":' + b"9" * (n // 2) + b"}"),
    "huge numeric string": lambda n: spans(
        n // 2, b'{"startTimeUnixNano":"' + b"9" * (n // 2) + b'"}'
    ),
    "newlines in a body": lambda n: wrap_string(b"\\n" * (n // 2)),
    "escapes in a body": lambda n: wrap_string(b"\\u00e9\\ud83d\\ude00" * (n // 18)),
    "lone surrogates": lambda n: wrap_string(b"\\ud800" * (n // 6)),
    "many unknown keys": lambda n: (
        b'{"resourceSpans":[{'
        + b",".join(b'"k%d":[1,{"x":null}]' % i for i in range(n // 20))
        + b"}]}"
    ),
    "repeated keys": lambda n: (
        b'{"resourceSpans":[{' + b",".join([b'"resource":{"attributes":[]}'] * (n // 28)) + b"}]}"
    ),
    "empty objects": lambda n: b'{"resourceSpans":[' + b",".join([b"{}"] * (n // 3)) + b"]}",
    "whitespace": lambda n: b" " * n + b"{}",
    "bad base64 bytes": lambda n: (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"bytesValue":"'
        + b"Q===" * (n // 4)
        + b'"}}]}]}]}'
    ),
    "unterminated": lambda n: b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"' + b"a" * n,
}


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("megabytes", [1, 4])
def test_hostile_input_finishes_within_a_bound(name: str, megabytes: int) -> None:
    data = HOSTILE[name](megabytes * 1_000_000)
    started = time.monotonic()
    with contextlib.suppress(ValueError):  # refused with a reason: fine; anything else fails
        decode_any(data)
    took = time.monotonic() - started
    assert took < BOUND_SECONDS, f"{name}: {len(data)} bytes took {took:.1f}s"


def test_input_over_the_size_cap_is_refused_before_parsing() -> None:
    assert MAX_REQUEST_BYTES == 64 * 1024 * 1024
    data = spans(200_000, b"{}")
    with pytest.raises(ValueError, match="over the 100000-byte limit"):
        decode_request(Signal.TRACES, data, limit=100_000)
    with pytest.raises(ValueError, match="over the 100000-byte limit"):
        decode_any(data, limit=100_000)
    assert decode_request(Signal.TRACES, data)  # within the default cap
