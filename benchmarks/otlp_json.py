"""OTLP/JSON codec throughput, in spans per second, against protobuf binary in the same run.

    python benchmarks/otlp_json.py [--quick] [--batch 512] [--seconds 3]

Requests hold 512 realistic server spans (10 attributes each: method, route, full URL,
status code, server address and port, user agent, client address, protocol version and
a request ID; one span in eight has an exception event). Two data sets are measured:
``realistic``, where most attribute values repeat across spans as they do in real
traffic (the URL and the request ID do not), and ``unique``, where every attribute
value is distinct (the codec's attribute caches never hit). Each figure is reported with its ratio to protobuf's own C
``ParseFromString`` / ``SerializeToString`` of the same requests, and, for context, to
``google.protobuf.json_format`` (which writes base64 IDs, so it is not OTLP/JSON).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from otelkit.collector.pdata.otlp_json import decode_request, encode_request
from otelkit.collector.pdata.signals import Signal

ROUTES = ["/users/{id}", "/orders/{id}", "/health", "/search", "/cart/{id}/items", "/login"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "curl/8.4.0", "python-httpx/0.27.0"]


def _attribute(key: str, value: str | int) -> KeyValue:
    any_value = (
        AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    )
    return KeyValue(key=key, value=any_value)


def make_span(rng: random.Random, index: int, unique: bool) -> Span:
    route = rng.choice(ROUTES)
    item = rng.randrange(100_000)
    tag = f"-{index}" if unique else ""
    start = 1_700_000_000_000_000_000 + index * 1_000_000
    span = Span(
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
        parent_span_id=rng.randbytes(8),
        name=f"GET {route}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + rng.randrange(100_000, 50_000_000),
        status=Status(code=Status.STATUS_CODE_OK),
        flags=0x101,
        attributes=[
            _attribute("http.request.method", rng.choice(["GET", "POST"]) + tag),
            _attribute("http.route", route + tag),
            _attribute("url.full", f"https://shop.example.com{route.replace('{id}', str(item))}"),
            _attribute("http.response.status_code", rng.choice([200, 200, 200, 404, 500])),
            _attribute("server.address", "shop.example.com" + tag),
            _attribute("server.port", 443 + (index if unique else 0)),
            _attribute("user_agent.original", rng.choice(AGENTS) + tag),
            _attribute("client.address", f"10.0.{rng.randrange(4)}.{rng.randrange(256)}{tag}"),
            _attribute("network.protocol.version", "1.1" + tag),
            _attribute("http.request.header.x-request-id", rng.randbytes(8).hex()),
        ],
    )
    if index % 8 == 0:
        event = span.events.add(name="exception", time_unix_nano=start + 5000)
        event.attributes.extend([
            _attribute("exception.type", "ValueError"),
            _attribute("exception.message", f"bad item {item}"),
        ])  # fmt: skip
    return span


def make_request(
    rng: random.Random, spans: int, unique: bool, offset: int
) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_attribute("service.name", "shop"),
                                    _attribute("service.version", "1.4.2")])  # fmt: skip
    scope = InstrumentationScope(name="opentelemetry.instrumentation.fastapi", version="0.48b0")
    batch = [make_span(rng, offset + i, unique) for i in range(spans)]
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=batch)])
    ])  # fmt: skip


def spans_per_second(
    work: Callable[[int], object], requests: int, spans: int, seconds: float
) -> float:
    """Spans per CPU second of ``work(i)``, round-robin over the requests; best of 3 rounds.

    CPU time of this process, not wall time, so other work on the machine distorts less.
    """
    best = 0.0
    for _ in range(3):
        done, started = 0, time.process_time()
        while (elapsed := time.process_time() - started) < seconds / 3 or done == 0:
            work(done % requests)
            done += 1
        best = max(best, done * spans / elapsed)
    return best


def measure(name: str, unique: bool, args: argparse.Namespace) -> None:
    rng = random.Random(7)
    # enough distinct spans that values unique to a span cannot stay in the codec's
    # attribute caches (16Ki entries each) from one pass over the requests to the next
    count = max(8, -(-200_000 // (10 * args.batch)))
    requests = [make_request(rng, args.batch, unique, i * args.batch) for i in range(count)]
    binary = [r.SerializeToString() for r in requests]
    texts = [encode_request(r) for r in requests]
    assert all(decode_request(Signal.TRACES, t) == r for t, r in zip(texts, requests, strict=True))
    n, secs, spans = len(requests), args.seconds, args.batch

    def parse(i: int) -> object:
        return ExportTraceServiceRequest.FromString(binary[i])

    rates = {
        "protobuf ParseFromString": spans_per_second(parse, n, spans, secs),
        "protobuf SerializeToString": spans_per_second(lambda i: requests[i].SerializeToString(), n, spans, secs),
        "otlp_json decode_request": spans_per_second(lambda i: decode_request(Signal.TRACES, texts[i]), n, spans, secs),
        "otlp_json encode_request": spans_per_second(lambda i: encode_request(requests[i]), n, spans, secs),
    }  # fmt: skip
    if not args.quick:
        std = [json_format.MessageToJson(r) for r in requests[:2]]  # slow: 2 suffice
        rates["json_format Parse"] = spans_per_second(
            lambda i: json_format.Parse(std[i], ExportTraceServiceRequest()), 2, spans, secs / 3
        )
        rates["json_format MessageToJson"] = spans_per_second(
            lambda i: json_format.MessageToJson(requests[i]), 2, spans, secs / 3
        )
    size = sum(map(len, texts)) / sum(map(len, binary))
    print(f"\n{name}: {n} requests x {spans} spans, JSON is {size:.2f}x the protobuf size")
    print(f"  {'':28} {'spans/s':>12} {'ratio':>8}")
    for label, rate in rates.items():
        base = rates["protobuf ParseFromString" if "decode" in label or "Parse" in label
                     else "protobuf SerializeToString"]  # fmt: skip
        print(f"  {label:28} {rate:12,.0f} {rate / base:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20 seconds in all")
    parser.add_argument("--batch", type=int, default=512, help="spans per request")
    parser.add_argument("--seconds", type=float, help="measuring time per figure")
    args = parser.parse_args()
    args.seconds = args.seconds or (1.5 if args.quick else 6.0)
    print(
        f"python {sys.version.split()[0]}; spans per CPU second; ratios are to protobuf binary in the same run"
    )
    measure("realistic (attribute values repeat)", False, args)
    measure("unique (no attribute value repeats)", True, args)


if __name__ == "__main__":
    main()
