"""OTLP/HTTP: encodings, compression, limits, bad input and backpressure answers."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import cramjam
import httpx
import pytest
import zstandard
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.errors import OverloadedError, PermanentError, RetryableError
from tests.collector.builders import logs, metrics, traces
from tests.collector.receivers.harness import RunningReceiver, running_receiver

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}
MIB = 1024 * 1024

TRACE_JSON = """{"resourceSpans": [{
  "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
  "scopeSpans": [{"scope": {"name": "orders"}, "spans": [
    {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
     "name": "GET /orders", "kind": 2,
     "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
     "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}},
                    {"key": "http.route", "value": {"stringValue": "/orders"}}],
     "status": {"code": 2}},
    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175",
     "parentSpanId": "EEE19B7EC3C1B174", "name": "SELECT orders", "kind": 3,
     "startTimeUnixNano": "1544712660100000000", "endTimeUnixNano": "1544712660200000000"}
  ]}]}]}"""
METRICS_JSON = """{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
  "name": "orders.placed", "unit": "{order}",
  "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [
    {"asInt": "7", "timeUnixNano": "1544712660000000000",
     "attributes": [{"key": "region", "value": {"stringValue": "eu"}}]},
    {"asInt": 9, "timeUnixNano": "1544712660000000000"}]}}]}]}]}"""
LOGS_JSON = """{"resourceLogs": [{"scopeLogs": [{"logRecords": [
  {"timeUnixNano": "1544712660000000000", "severityNumber": 13, "severityText": "WARN",
   "body": {"stringValue": "payment declined"},
   "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "eee19b7ec3c1b174"}]}]}]}"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[RunningReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def client(receiver: RunningReceiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.http_url, timeout=30) as http:
        yield http


@pytest.fixture(autouse=True)
def _fresh_consumers(receiver: RunningReceiver) -> None:
    for consumer in receiver.consumers.values():
        consumer.payloads.clear()
        consumer.refuse_next.clear()
        consumer.calls = 0


def assert_still_serving(client: httpx.Client, receiver: RunningReceiver) -> None:
    before = receiver.consumers[Signal.TRACES].items()
    body = traces([[2]]).SerializeToString()
    response = client.post("/v1/traces", content=body, headers=PROTOBUF)
    assert response.status_code == 200, response.text
    assert receiver.consumers[Signal.TRACES].items() == before + 2


def status_of(response: httpx.Response) -> Status:
    assert response.headers["content-type"] == "application/x-protobuf"
    return Status.FromString(response.content)


# OTLP/JSON -------------------------------------------------------------------------------


def test_json_traces_keep_hex_ids_in_either_case_and_64_bit_strings(
    client: httpx.Client, receiver: RunningReceiver
) -> None:
    response = client.post("/v1/traces", content=TRACE_JSON, headers=JSON)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    [request] = receiver.consumers[Signal.TRACES].payloads
    assert isinstance(request, ExportTraceServiceRequest)
    parent, child = request.resource_spans[0].scope_spans[0].spans
    trace_id = bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert parent.trace_id == child.trace_id == trace_id
    assert parent.span_id == bytes.fromhex("eee19b7ec3c1b174") == child.parent_span_id
    assert child.span_id == bytes.fromhex("eee19b7ec3c1b175")
    assert parent.start_time_unix_nano == 1544712660000000000
    assert parent.end_time_unix_nano == 1544712661000000000
    assert parent.attributes[0].value.int_value == 200
    assert (parent.kind, parent.status.code) == (2, 2)
    assert receiver.accepted(Signal.TRACES, "http") >= 2


def test_json_metrics_and_logs_arrive(client: httpx.Client, receiver: RunningReceiver) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    assert client.post("/v1/metrics", content=METRICS_JSON, headers=headers).status_code == 200
    assert client.post("/v1/logs", content=LOGS_JSON, headers=headers).status_code == 200

    [m] = receiver.consumers[Signal.METRICS].payloads
    points = m.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points  # type: ignore[union-attr]
    assert [p.as_int for p in points] == [7, 9]
    [lg] = receiver.consumers[Signal.LOGS].payloads
    record = lg.resource_logs[0].scope_logs[0].log_records[0]  # type: ignore[union-attr]
    assert record.body.string_value == "payment declined"
    assert record.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")


def test_malformed_json_is_a_400_with_a_json_status_naming_the_problem(
    client: httpx.Client, receiver: RunningReceiver
) -> None:
    bad_id = TRACE_JSON.replace("EEE19B7EC3C1B174", "not-hex-at-all!!", 1)
    for body in ('{"resourceSpans": [', bad_id):
        response = client.post("/v1/traces", content=body, headers=JSON)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        status = response.json()
        assert status["code"] == 3
        assert "malformed JSON ExportTraceServiceRequest" in status["message"]
    assert "spanId" in status["message"] or "span" in status["message"].lower()
    assert receiver.consumers[Signal.TRACES].calls == 0
    assert_still_serving(client, receiver)


# Compression ----------------------------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "deflate": zlib.compress,
    "deflate-raw": _raw_deflate,
    "snappy": lambda data: bytes(cramjam.snappy.compress_raw(data)),
    "x-snappy-framed": lambda data: bytes(cramjam.snappy.compress(data)),
    "lz4": lambda data: bytes(cramjam.lz4.compress(data)),
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_compressed_bodies_arrive_whole(
    client: httpx.Client, receiver: RunningReceiver, encoding: str
) -> None:
    request = traces([[30, 20], [50]])
    body = ENCODERS[encoding](request.SerializeToString())
    header = encoding.removesuffix("-raw")
    response = client.post(
        "/v1/traces", content=body, headers={**PROTOBUF, "content-encoding": header}
    )
    assert response.status_code == 200, response.text
    assert receiver.consumers[Signal.TRACES].payloads == [request]


def test_gzip_json_body_arrives(client: httpx.Client, receiver: RunningReceiver) -> None:
    headers = {**JSON, "content-encoding": "gzip"}
    response = client.post(
        "/v1/traces", content=gzip.compress(TRACE_JSON.encode()), headers=headers
    )
    assert response.status_code == 200, response.text
    assert receiver.consumers[Signal.TRACES].items() == 2


def test_answers_are_gzipped_only_when_the_client_accepts_gzip(receiver: RunningReceiver) -> None:
    with httpx.Client(base_url=receiver.http_url) as http:
        asked = http.post(
            "/v1/traces", content=TRACE_JSON, headers={**JSON, "accept-encoding": "gzip"}
        )
        plain = http.post(
            "/v1/traces", content=TRACE_JSON, headers={**JSON, "accept-encoding": "identity"}
        )
        refused = http.post(
            "/v1/traces", content=TRACE_JSON, headers={**JSON, "accept-encoding": "br, gzip;q=0"}
        )
    assert asked.headers["content-encoding"] == "gzip"
    assert asked.json() == {}
    assert "content-encoding" not in plain.headers
    assert "content-encoding" not in refused.headers
    assert plain.json() == {}


# Bad input --------------------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param("GET", "/v1/traces", PROTOBUF, b"", 405, "POST", id="GET"),
    pytest.param("PUT", "/v1/logs", PROTOBUF, b"", 405, "POST", id="PUT"),
    pytest.param("POST", "/v1/spans", PROTOBUF, b"", 404, "/v1/traces", id="unknown-path"),
    pytest.param("POST", "/v1/traces", {"content-type": "text/plain"}, b"x", 415, "application/json", id="text-plain"),
    pytest.param("POST", "/v1/traces", {}, b"x", 415, "application/x-protobuf", id="no-content-type"),
    pytest.param("POST", "/v1/traces", {**PROTOBUF, "content-encoding": "br"}, b"x", 415, "Content-Encoding 'br'", id="brotli"),
    pytest.param("POST", "/v1/traces", PROTOBUF, b"\x0a\xff\xff\xff\x0f", 400, "malformed protobuf ExportTraceServiceRequest", id="bad-protobuf"),
    pytest.param("POST", "/v1/metrics", PROTOBUF, b"\xff", 400, "malformed protobuf ExportMetricsServiceRequest", id="bad-protobuf-metrics"),
    pytest.param("POST", "/v1/traces", {**PROTOBUF, "content-encoding": "gzip"}, b"not gzip", 400, "gzip body cannot be decompressed", id="corrupt-gzip"),
    pytest.param("POST", "/v1/traces", {**PROTOBUF, "content-encoding": "gzip"}, gzip.compress(b"abc")[:-6], 400, "truncated", id="truncated-gzip"),
    pytest.param("POST", "/v1/traces", {**PROTOBUF, "content-encoding": "zstd"}, b"\x28\xb5\x2f\xfd junk", 400, "zstd body cannot be decompressed", id="corrupt-zstd"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "says"), BAD_REQUESTS)
def test_bad_requests_get_their_status_and_a_message_and_the_receiver_keeps_serving(
    client: httpx.Client,
    receiver: RunningReceiver,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    says: str,
) -> None:
    response = client.request(method, path, content=body, headers=headers)

    assert response.status_code == status
    if response.headers["content-type"] == "application/x-protobuf":
        message = status_of(response).message
    else:
        message = response.text
    assert says in message
    if status == 405:
        assert response.headers["allow"] == "POST"
    assert all(c.calls == 0 for c in receiver.consumers.values())
    assert_still_serving(client, receiver)


def test_an_empty_request_succeeds_without_reaching_the_pipeline(
    client: httpx.Client, receiver: RunningReceiver
) -> None:
    for path, body in (("/v1/traces", b""), ("/v1/logs", logs([[0]]).SerializeToString())):
        response = client.post(path, content=body, headers=PROTOBUF)
        assert (response.status_code, response.content) == (200, b"")
    assert client.post("/v1/metrics", content="{}", headers=JSON).json() == {}
    assert all(c.calls == 0 for c in receiver.consumers.values())


# Size limits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit() -> Iterator[RunningReceiver]:
    protocols = {"http": {"endpoint": "127.0.0.1:0", "max_request_body_size": "4KiB"}}
    with running_receiver(protocols) as running:
        yield running


def _chunks(data: bytes, size: int = 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_bodies_over_the_limit_are_413_whether_declared_streamed_or_inflated(
    small_limit: RunningReceiver,
) -> None:
    big = traces([[200]]).SerializeToString()
    assert len(big) > 4096
    with httpx.Client(base_url=small_limit.http_url) as http:
        declared = http.post("/v1/traces", content=big, headers=PROTOBUF)
        streamed = http.post("/v1/traces", content=_chunks(big), headers=PROTOBUF)
        headers = {**PROTOBUF, "content-encoding": "gzip"}
        compressed = gzip.compress(big)
        assert len(compressed) < 4096
        inflated = http.post("/v1/traces", content=compressed, headers=headers)
        small = http.post("/v1/traces", content=traces([[3]]).SerializeToString(), headers=PROTOBUF)

    for response in (declared, streamed, inflated):
        assert response.status_code == 413
        assert "4096-byte limit" in status_of(response).message
    assert "gzip body inflates past the 4096-byte limit" in status_of(inflated).message
    assert small.status_code == 200
    assert small_limit.consumers[Signal.TRACES].items() == 3


def _gzip_bomb(total: int) -> Iterator[bytes]:
    """``total`` bytes of zeros as concatenated gzip members, compressed once, streamed."""
    block = 16 * MIB
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MIB)
    member = b"".join(compressor.compress(zeros) for _ in range(block // MIB)) + compressor.flush()
    for _ in range(total // block):
        yield member


def _zstd_bomb(total: int) -> Iterator[bytes]:
    """Zstandard frames that do not declare their size, so only decoding can find it."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False)
    block = 16 * MIB
    frame = compressor.compress(bytes(block))
    for _ in range(total // block):
        yield frame


@pytest.mark.parametrize(("encoding", "bomb"), [("gzip", _gzip_bomb), ("zstd", _zstd_bomb)])
def test_a_compression_bomb_is_refused_without_inflating_it(
    client: httpx.Client, receiver: RunningReceiver, encoding: str, bomb: Any
) -> None:
    one_gib = 1024 * MIB
    headers = {**PROTOBUF, "content-encoding": encoding}
    tracemalloc.start()
    try:
        response = client.post("/v1/traces", content=bomb(one_gib), headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert f"{encoding} body inflates past the {20 * MIB}-byte limit" in status_of(response).message
    assert peak < 120 * MIB, f"peak Python allocation {peak / MIB:.0f} MiB for a 1 GiB bomb"
    assert receiver.consumers[Signal.TRACES].calls == 0
    assert_still_serving(client, receiver)


# Backpressure ---------------------------------------------------------------------------

REFUSALS = [
    (RetryableError("sending queue is full", retry_after=2.5), 503, 14, "3"),
    (OverloadedError("memory limit reached"), 429, 8, "1"),
    (PermanentError("no such tenant"), 400, 3, None),
]


@pytest.mark.parametrize(("error", "status", "code", "retry_after"), REFUSALS)
def test_pipeline_refusals_map_to_http_status_retry_after_and_counted_items(
    client: httpx.Client,
    receiver: RunningReceiver,
    error: Exception,
    status: int,
    code: int,
    retry_after: str | None,
) -> None:
    receiver.consumers[Signal.TRACES].refuse_next.append(error)
    refused_before = receiver.refused(Signal.TRACES, "http")

    response = client.post(
        "/v1/traces", content=traces([[4, 3]]).SerializeToString(), headers=PROTOBUF
    )

    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    answer = status_of(response)
    assert answer.code == code
    assert str(error) in answer.message
    if retry_after is not None:
        info = RetryInfo()
        assert answer.details[0].Unpack(info)
        assert info.retry_delay.ToTimedelta().total_seconds() == pytest.approx(
            getattr(error, "retry_after", None) or 1.0
        )
    assert receiver.refused(Signal.TRACES, "http") - refused_before == 7
    assert_still_serving(client, receiver)


def test_json_requests_get_json_refusals(client: httpx.Client, receiver: RunningReceiver) -> None:
    receiver.consumers[Signal.TRACES].refuse_next.append(RetryableError("busy", retry_after=4))
    response = client.post("/v1/traces", content=TRACE_JSON, headers=JSON)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "4"
    body = json.loads(response.content)
    assert body["code"] == 14
    assert "busy" in body["message"]
    assert body["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"}
    ]


# Routes ---------------------------------------------------------------------------------


def test_signals_without_a_pipeline_are_not_served_and_paths_are_configurable() -> None:
    protocols = {"http": {"endpoint": "127.0.0.1:0", "traces_url_path": "otlp/spans"}}
    with (
        running_receiver(protocols, signals=[Signal.TRACES]) as running,
        httpx.Client(base_url=running.http_url) as http,
    ):
        body = traces([[1]]).SerializeToString()
        assert http.post("/otlp/spans", content=body, headers=PROTOBUF).status_code == 200
        assert http.post("/v1/traces", content=body, headers=PROTOBUF).status_code == 404
        not_served = http.post("/v1/logs", content=b"", headers=PROTOBUF)
        assert not_served.status_code == 404
        assert "/otlp/spans" in not_served.text
        assert (
            http.post(
                "/v1/metrics", content=metrics([1]).SerializeToString(), headers=PROTOBUF
            ).status_code
            == 404
        )
