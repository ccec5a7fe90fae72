"""Hostile OTLP for the fuzz tests: mutated bytes and JSON, and valid messages with odd
values in every field that some component reads.

Everything is drawn from a seeded ``random.Random`` so a failing case can be replayed;
:func:`describe` names each case.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelkit.collector.pdata.otlp_json import encode_request
from otelkit.collector.pdata.signals import Payload, Signal

WEIRD_STRINGS = [
    "", " ", "\x00", "\x00" * 50, "\u202e\u200b", "🙂" * 40, "é" * 300, "a" * 5000,
    "GET /users/{id}", "/a/" * 500, "SELECT * FROM t WHERE a = '" + "x" * 2000,
    "%s%s%n", "${jndi:ldap://x}", "\\" * 100, '"' * 50, "\n" * 2000, "\r\n\t" * 100,
    "http://user:pass@host:99999/p?q=" + "%" * 200, "null", "NaN", "-0", "1e309",
]  # fmt: skip
WEIRD_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 42]
WEIRD_DOUBLES = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, 1.5]
ID_LENGTHS = [0, 1, 8, 15, 16, 17, 20, 32]
ATTRIBUTE_KEYS = [
    "http.route", "http.request.method", "http.response.status_code", "url.full",
    "db.query.text", "db.statement", "db.system", "db.system.name", "server.address",
    "exception.type", "exception.message", "exception.stacktrace", "service.name",
    "otelkit.budget.exceeded", "otelkit.perf_issue.type", "sentry.release", "user.id",
    "", "\x00", "k" * 300,
]  # fmt: skip
SPAN_EVENTS = ["exception", "otelkit.finding", "", "log"]


@dataclass(frozen=True)
class Case:
    """One request to send: its signal, body, content type and encoding."""

    name: str
    signal: Signal
    body: bytes
    content_type: str = "application/x-protobuf"
    content_encoding: str = ""


# Valid messages with odd values ------------------------------------------------------------
def any_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(7 if depth < 12 else 5)
    value = AnyValue()
    if kind == 0:
        value.string_value = rng.choice(WEIRD_STRINGS)
    elif kind == 1:
        value.int_value = rng.choice(WEIRD_INTS)
    elif kind == 2:
        value.double_value = rng.choice(WEIRD_DOUBLES)
    elif kind == 3:
        value.bool_value = rng.random() < 0.5
    elif kind == 4:
        value.bytes_value = rng.randbytes(rng.choice((0, 3, 64)))
    elif kind == 5:
        value.array_value.values.extend(any_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    else:
        for _ in range(rng.randrange(4)):
            value.kvlist_value.values.add(key=rng.choice(ATTRIBUTE_KEYS)).value.CopyFrom(
                any_value(rng, depth + 1)
            )
    return value


def attributes(rng: random.Random, count: int) -> list[KeyValue]:
    out = []
    for _ in range(count):
        key = rng.choice(ATTRIBUTE_KEYS)
        value = (
            any_value(rng)
            if rng.random() < 0.6
            else AnyValue(string_value=rng.choice(WEIRD_STRINGS))
        )
        out.append(KeyValue(key=key, value=value))
    return out


def _id(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(rng.choice(ID_LENGTHS) if rng.random() < 0.3 else size)


def odd_traces(rng: random.Random) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, 3)):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(attributes(rng, rng.randrange(4)))
        if rng.random() < 0.7:
            rs.resource.attributes.add(key="service.name").value.string_value = rng.choice(
                WEIRD_STRINGS
            )
        ss = rs.scope_spans.add()
        ss.scope.name = rng.choice(WEIRD_STRINGS)
        trace_id = _id(rng, 16)
        for i in range(rng.randrange(1, 12)):
            span = ss.spans.add(
                trace_id=trace_id if rng.random() < 0.8 else _id(rng, 16),
                span_id=_id(rng, 8),
                parent_span_id=_id(rng, 8) if i else b"",
                name=rng.choice(WEIRD_STRINGS),
                kind=rng.choice((0, 1, 2, 3, 4, 5, 99, -7)),  # type: ignore[arg-type]
                start_time_unix_nano=rng.choice((0, 1, 1_700_000_000_000_000_000, 2**64 - 1)),
                end_time_unix_nano=rng.choice((0, 5, 1_700_000_000_500_000_000, 2**64 - 1)),
            )
            span.attributes.extend(attributes(rng, rng.randrange(6)))
            span.status.code = rng.choice((0, 1, 2, 7))  # type: ignore[assignment]
            span.status.message = rng.choice(WEIRD_STRINGS)
            for _ in range(rng.randrange(3)):
                event = span.events.add(name=rng.choice(SPAN_EVENTS),
                                        time_unix_nano=rng.choice([*WEIRD_INTS[:2], 2**64 - 1]))  # fmt: skip
                event.attributes.extend(attributes(rng, rng.randrange(5)))
            if rng.random() < 0.2:
                span.links.add(trace_id=_id(rng, 16), span_id=_id(rng, 8))
    return request


def odd_logs(rng: random.Random) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(attributes(rng, rng.randrange(4)))
    sl = rl.scope_logs.add()
    for _ in range(rng.randrange(1, 15)):
        record = sl.log_records.add(
            time_unix_nano=rng.choice((0, 1, 1_700_000_000_000_000_000, 2**64 - 1)),
            observed_time_unix_nano=rng.choice((0, 2**64 - 1, 1_700_000_000_000_000_000)),
            severity_number=rng.choice((0, 9, 17, 21, 24, 25, 2**31 - 1, -3)),  # type: ignore[arg-type]
            severity_text=rng.choice(WEIRD_STRINGS),
            trace_id=_id(rng, 16),
            span_id=_id(rng, 8),
            flags=rng.choice((0, 1, 2**32 - 1)),
            event_name=rng.choice(WEIRD_STRINGS),
        )
        record.body.CopyFrom(any_value(rng))
        record.attributes.extend(attributes(rng, rng.randrange(6)))
    return request


def odd_metrics(rng: random.Random) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(attributes(rng, rng.randrange(4)))
    sm = rm.scope_metrics.add()
    for _ in range(rng.randrange(1, 8)):
        metric = sm.metrics.add(name=rng.choice(WEIRD_STRINGS + ["ok.metric"] * 5),
                                unit=rng.choice(["", "s", "By", "{x}", "1", "/", "m/s", "\x00"]))  # fmt: skip
        kind = rng.choice(("gauge", "sum", "histogram", "exponential_histogram", "summary"))
        data = getattr(metric, kind)
        if kind in ("sum", "histogram", "exponential_histogram"):
            data.aggregation_temporality = rng.choice((0, 1, 2, 9))
        if kind == "sum":
            data.is_monotonic = rng.random() < 0.5
        for _ in range(rng.randrange(1, 4)):
            point = data.data_points.add(
                time_unix_nano=rng.choice((0, 5, 2**64 - 1)),
                start_time_unix_nano=rng.choice((0, 4, 2**64 - 1)),
            )
            point.attributes.extend(attributes(rng, rng.randrange(4)))
            _odd_point(rng, kind, point)
    return request


def _odd_point(rng: random.Random, kind: str, point: Any) -> None:
    if kind in ("gauge", "sum"):
        if rng.random() < 0.5:
            point.as_double = rng.choice(WEIRD_DOUBLES)
        else:
            point.as_int = rng.choice(WEIRD_INTS)
        if rng.random() < 0.3:
            point.exemplars.add(as_double=rng.choice(WEIRD_DOUBLES), trace_id=_id(rng, 16),
                                span_id=_id(rng, 8), time_unix_nano=2**64 - 1)  # fmt: skip
    elif kind == "histogram":
        bounds = [rng.choice(WEIRD_DOUBLES) for _ in range(rng.randrange(4))]
        point.explicit_bounds.extend(bounds)
        point.bucket_counts.extend(
            rng.randrange(5) for _ in range(len(bounds) + rng.choice((0, 1, 2)))
        )
        point.count = rng.choice([*WEIRD_INTS[:2], 2**64 - 1])
        point.sum = rng.choice(WEIRD_DOUBLES)
    elif kind == "exponential_histogram":
        point.scale = rng.choice((-100, -11, -10, 0, 3, 20, 21, 2**31 - 1))
        point.zero_threshold = rng.choice(WEIRD_DOUBLES)
        for side in (point.positive, point.negative):
            side.offset = rng.choice((0, -5, 2**31 - 1, -(2**31)))
            side.bucket_counts.extend(rng.randrange(3) for _ in range(rng.randrange(5)))
        point.count = rng.randrange(10)
    else:
        for _ in range(rng.randrange(3)):
            point.quantile_values.add(quantile=rng.choice([*WEIRD_DOUBLES, 0.5, 0.99]),
                                      value=rng.choice(WEIRD_DOUBLES))  # fmt: skip


ODD: dict[Signal, Callable[[random.Random], Payload]] = {
    Signal.TRACES: odd_traces,
    Signal.LOGS: odd_logs,
    Signal.METRICS: odd_metrics,
}


# Mutations ---------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: flips, inserted or deleted runs, truncation, duplicated slices,
    length prefixes made huge."""
    buffer = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        if not buffer:
            buffer.extend(rng.randbytes(8))
        op = rng.randrange(6)
        at = rng.randrange(len(buffer))
        if op == 0:
            buffer[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buffer[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 2:
            del buffer[at : at + rng.randrange(1, 16)]
        elif op == 3:
            del buffer[at:]
        elif op == 4:
            buffer[at:at] = buffer[at : at + rng.randrange(1, 64)] * rng.randrange(2, 20)
        else:
            buffer[at : at + 5] = b"\xff\xff\xff\xff\x0f"  # a varint near 4 GiB
    return bytes(buffer)


def mutate_json(rng: random.Random, text: bytes) -> bytes:
    """Structural edits of OTLP/JSON: wrong types, nulls, huge numbers, bad IDs and enums,
    deep nesting, unknown keys; sometimes byte edits on the text instead."""
    if rng.random() < 0.3:
        return mutate_bytes(rng, text)
    tree = json.loads(text)
    for _ in range(rng.randrange(1, 4)):
        _mutate_tree(rng, tree)
    return json.dumps(tree, allow_nan=True).encode()


_REPLACEMENTS: list[Any] = [
    None, True, -1, 1e309, 2**70, "2" * 40, "NaN", "", "zz", [], {}, [[[[[]]]]],
    {"arrayValue": {"values": [{"intValue": "x"}]}}, "0" * 33, 3.5, "-Infinity",
    {"kvlistValue": {"values": [{"key": "k", "value": {"bytesValue": "%%%"}}]}},
]  # fmt: skip


def _mutate_tree(rng: random.Random, tree: Any) -> None:
    containers: list[Any] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            containers.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    node = rng.choice(containers)
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        choice = rng.randrange(4)
        if choice == 0:
            node[key] = rng.choice(_REPLACEMENTS)
        elif choice == 1:
            node["unknownField" + str(rng.randrange(9))] = rng.choice(_REPLACEMENTS)
        elif choice == 2:
            del node[key]
        else:
            node[key] = {"arrayValue": {"values": [node[key]]}}
    elif isinstance(node, list) and node:
        index = rng.randrange(len(node))
        if rng.random() < 0.5:
            node[index] = rng.choice(_REPLACEMENTS)
        else:
            node.extend(node[index : index + 1] * rng.randrange(1, 5))


# Cases -------------------------------------------------------------------------------------
def cases(seed: int, count: int) -> Iterator[Case]:
    """``count`` cases: odd-but-valid requests, and mutated protobuf and JSON ones (some
    gzip-compressed), over the three signals."""
    rng = random.Random(seed)
    for n in range(count):
        signal = rng.choice(list(Signal))
        message = ODD[signal](rng)
        kind = rng.randrange(4)
        try:
            text = encode_request(message)
        except ValueError:  # an ID of a length OTLP/JSON cannot carry: protobuf only
            kind = kind % 2 * 2
        if kind == 0:
            yield Case(f"{n}: odd {signal} (protobuf)", signal, message.SerializeToString())
        elif kind == 1:
            yield Case(
                f"{n}: odd {signal} (JSON)", signal, encode_request(message), "application/json"
            )
        elif kind == 2:
            body = mutate_bytes(rng, message.SerializeToString())
            yield Case(f"{n}: mutated {signal} protobuf", signal, body)
        else:
            body = mutate_json(rng, text)
            yield Case(f"{n}: mutated {signal} JSON", signal, body, "application/json")


def gzipped(case: Case, rng: random.Random) -> Case:
    """The same case compressed, sometimes with the compressed stream damaged too."""
    body = gzip.compress(case.body, mtime=0)
    if rng.random() < 0.3:
        body = mutate_bytes(rng, body)
    return Case(case.name + " (gzip)", case.signal, body, case.content_type, "gzip")


def describe(case: Case) -> str:
    head = base64.b64encode(case.body[:48]).decode()
    return f"{case.name} [{len(case.body)} bytes, starts {head}]"
