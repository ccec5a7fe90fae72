"""OTLP/JSON codec: round trips over every field, the spec's examples, and bad input."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelkit.collector.pdata.otlp_json import (
    decode_any,
    decode_request,
    encode_request,
    iter_file,
    signal_of_json,
)
from otelkit.collector.pdata.signals import Signal

DATA = Path(__file__).parent / "data"
ID_SIZES = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}
T = FieldDescriptor


# A generator of messages with every field set ---------------------------------------------
def scalar_values(field: FieldDescriptor) -> list[Any]:
    """Non-default values of a field's type, extremes included."""
    kind = field.type
    if kind == T.TYPE_BYTES:
        size = ID_SIZES.get(field.name)
        return [bytes(range(0xA0, 0xA0 + size))] if size else [b"\x00\xff\x10binary", b"x"]
    if kind == T.TYPE_STRING:
        return ['héllo ☃ "quoted" \\ \n\u2028 \U0001f600', "plain"]
    if kind == T.TYPE_BOOL:
        return [True]
    if kind == T.TYPE_DOUBLE:
        return [1.5, -2.25e-300, 1.7976931348623157e308]
    if kind == T.TYPE_ENUM:
        return [v.number for v in field.enum_type.values if v.number] + [99]
    extremes = {
        T.TYPE_INT64: [-(1 << 63), (1 << 63) - 1, -1],
        T.TYPE_SINT64: [-(1 << 63), (1 << 63) - 1],
        T.TYPE_SFIXED64: [-(1 << 63), (1 << 63) - 1, -1],
        T.TYPE_UINT64: [(1 << 64) - 1, 300],
        T.TYPE_FIXED64: [(1 << 64) - 1, 1700000000123456789],
        T.TYPE_INT32: [-(1 << 31), (1 << 31) - 1],
        T.TYPE_SINT32: [-(1 << 31), (1 << 31) - 1, -3],
        T.TYPE_UINT32: [(1 << 32) - 1, 7],
        T.TYPE_FIXED32: [(1 << 32) - 1, 0x101],
    }
    return extremes[kind]


def variants(descriptor: Descriptor, ancestors: tuple[str, ...] = ()) -> list[Message]:
    """Messages that between them set every field (one variant per oneof member).

    Recursive types (AnyValue in ArrayValue in AnyValue ...) nest twice, then stop.
    """
    ancestors = (*ancestors, descriptor.full_name)
    cls = message_factory.GetMessageClass(descriptor)
    oneofs = [o for o in descriptor.oneofs if len(o.fields) > 1 or not o.name.startswith("_")]
    subs = {
        f.name: variants(f.message_type, ancestors)
        for f in descriptor.fields
        if f.message_type is not None and ancestors.count(f.message_type.full_name) < 2
    }
    singular = [
        len(subs[f.name]) for f in descriptor.fields if f.name in subs and not f.is_repeated
    ]
    count = max([len(o.fields) for o in oneofs] + singular + [1])
    out = []
    for index in range(count):
        message = cls()
        chosen = {o.fields[index % len(o.fields)].name for o in oneofs}
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and oneof in oneofs and field.name not in chosen:
                continue
            if field.message_type is None:
                _set_scalar(message, field, index)
            elif field.name in subs and field.is_repeated:
                getattr(message, field.name).extend(subs[field.name])
            elif field.name in subs:
                getattr(message, field.name).CopyFrom(
                    subs[field.name][index % len(subs[field.name])]
                )
        out.append(message)
    return out


def _set_scalar(message: Message, field: FieldDescriptor, index: int) -> None:
    values = scalar_values(field)
    if field.is_repeated:
        getattr(message, field.name).extend(values)
    else:
        setattr(message, field.name, values[index % len(values)])


def every_field_requests() -> list[Message]:
    requests = []
    for signal in Signal:
        requests.extend(variants(signal.request_type.DESCRIPTOR))
    return requests


def field_paths(message: Message, prefix: str = "") -> set[str]:
    """Every field path set anywhere in a message (``Span.events.name`` ...)."""
    found = set()
    for field, value in message.ListFields():
        path = f"{field.containing_type.name}.{field.name}"
        found.add(path)
        if field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                found |= field_paths(item)
    return found


def all_field_paths(descriptor: Descriptor, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return set()
    seen.add(descriptor.full_name)
    paths = set()
    for field in descriptor.fields:
        paths.add(f"{descriptor.name}.{field.name}")
        if field.message_type is not None:
            paths |= all_field_paths(field.message_type, seen)
    return paths


# Round trips -------------------------------------------------------------------------------
def test_generated_requests_set_every_field_of_every_signal() -> None:
    covered = set().union(*(field_paths(r) for r in every_field_requests()))
    expected = set().union(*(all_field_paths(s.request_type.DESCRIPTOR) for s in Signal))
    assert expected - covered == set()


@pytest.mark.parametrize("request_", every_field_requests(), ids=lambda r: type(r).__name__)
def test_round_trip_keeps_every_field(request_: Message) -> None:
    encoded = encode_request(request_)  # type: ignore[arg-type]
    decoded = decode_request(Signal(_signal(request_)), encoded)
    assert decoded == request_
    assert decoded.SerializeToString(deterministic=True) == request_.SerializeToString(
        deterministic=True
    )
    assert encode_request(decoded) == encoded


def _signal(request: Message) -> str:
    return {
        "ExportTraceServiceRequest": "traces",
        "ExportMetricsServiceRequest": "metrics",
        "ExportLogsServiceRequest": "logs",
    }[type(request).__name__]


@pytest.mark.parametrize("request_", every_field_requests(), ids=lambda r: type(r).__name__)
def test_output_is_standard_protobuf_json_apart_from_ids(request_: Message) -> None:
    """Without hex IDs in play, protobuf's own JSON parser reads our output identically."""
    without_ids = type(request_)()
    without_ids.CopyFrom(request_)
    _clear_ids(without_ids)
    parsed = json_format.Parse(encode_request(without_ids), type(request_)())  # type: ignore[arg-type]
    assert parsed == without_ids


def _clear_ids(message: Message) -> None:
    for field, value in message.ListFields():
        if field.name in ID_SIZES:
            message.ClearField(field.name)
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                _clear_ids(item)


def test_special_doubles_round_trip_as_strings() -> None:
    values = [math.nan, math.inf, -math.inf, -0.0]
    request = _logs(*(AnyValue(double_value=v) for v in values))
    encoded = encode_request(request)
    bodies = [r["body"] for r in _records(json.loads(encoded))]
    assert bodies[:3] == [{"doubleValue": "NaN"}, {"doubleValue": "Infinity"},
                          {"doubleValue": "-Infinity"}]  # fmt: skip
    decoded = decode_request(Signal.LOGS, encoded)
    got = [r.body.double_value for r in decoded.resource_logs[0].scope_logs[0].log_records]
    assert math.isnan(got[0]) and got[1:3] == [math.inf, -math.inf]
    assert math.copysign(1.0, got[3]) == -1.0


def test_log_bodies_of_every_any_value_kind_round_trip() -> None:
    bodies = [
        AnyValue(string_value="text"),
        AnyValue(string_value=""),
        AnyValue(bool_value=False),
        AnyValue(int_value=0),
        AnyValue(int_value=-42),
        AnyValue(double_value=0.0),
        AnyValue(bytes_value=b"\x00\x01\xfe\xff"),
        AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue()])),
        AnyValue(array_value=ArrayValue()),
        AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=AnyValue())])),
        AnyValue(kvlist_value=KeyValueList()),
        AnyValue(),
    ]
    request = _logs(*bodies)
    decoded = decode_request(Signal.LOGS, encode_request(request))
    got = [r.body for r in decoded.resource_logs[0].scope_logs[0].log_records]
    assert got == bodies
    # zero values inside a oneof are kept, not dropped as defaults
    assert [b.WhichOneof("value") for b in got[:6]] == [
        "string_value", "string_value", "bool_value", "int_value", "int_value", "double_value"
    ]  # fmt: skip


def test_optional_histogram_fields_keep_presence_at_zero() -> None:
    point = HistogramDataPoint(count=0, sum=0.0, min=0.0, bucket_counts=[0, 3])
    request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[
        ScopeMetrics(metrics=[Metric(name="h", histogram=Histogram(data_points=[point]))])
    ])])  # fmt: skip
    encoded = json.loads(encode_request(request))
    json_point = encoded["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"][
        "dataPoints"
    ][0]
    assert json_point == {"sum": 0.0, "min": 0.0, "bucketCounts": ["0", "3"]}
    decoded = decode_request(Signal.METRICS, encode_request(request))
    got = decoded.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    assert got.HasField("sum") and got.HasField("min") and not got.HasField("max")


# The OTLP/JSON rules ---------------------------------------------------------------------
def test_output_follows_otlp_json_rules() -> None:
    span = Span(
        trace_id=bytes.fromhex("5B8EFFF798038103D269B633813FC60C"),
        span_id=bytes.fromhex("EEE19B7EC3C1B174"),
        name="GET /users/{id}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1700000000000000000,
        attributes=[KeyValue(key="http.response.status_code", value=AnyValue(int_value=200))],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    out = json.loads(encode_request(request))
    assert out["resourceSpans"][0]["scopeSpans"][0]["spans"][0] == {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "GET /users/{id}",
        "kind": 2,
        "startTimeUnixNano": "1700000000000000000",
        "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}],
    }


def test_input_accepts_what_protobufs_json_parser_accepts() -> None:
    text = json.dumps({
        "resource_spans": [{"scope_spans": [{"spans": [{
            "trace_id": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "eee19b7ec3c1b174",
            "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": 1700000000000000001,
            "end_time_unix_nano": "1700000000000000002",
            "droppedAttributesCount": "3",
            "status": {"code": "STATUS_CODE_ERROR", "message": None},
            "attributes": [
                {"key": "b64", "value": {"bytes_value": "_-8"}},
                {"key": "int", "value": {"intValue": 1e3}},
                {"key": "dbl", "value": {"doubleValue": "2.5"}},
            ],
            "somethingNew": {"nested": [1, 2]},
        }]}]}],
        "futureTopLevel": True,
    })  # fmt: skip
    span = decode_request(Signal.TRACES, text).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.span_id.hex() == "eee19b7ec3c1b174"
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.start_time_unix_nano == 1700000000000000001
    assert span.end_time_unix_nano == 1700000000000000002
    assert span.dropped_attributes_count == 3
    assert span.status.code == 2 and span.status.message == ""
    assert span.attributes[0].value.bytes_value == b"\xff\xef"
    assert span.attributes[1].value.int_value == 1000
    assert span.attributes[2].value.double_value == 2.5


@pytest.mark.parametrize("name", ["trace", "metrics", "logs"])
def test_spec_examples_decode_to_the_documented_messages(name: str) -> None:
    expected_type = {"trace": ExportTraceServiceRequest, "metrics": ExportMetricsServiceRequest,
                     "logs": ExportLogsServiceRequest}[name]  # fmt: skip
    expected = text_format.Parse((DATA / f"{name}.protobuf-text").read_text(), expected_type())
    decoded = decode_any((DATA / f"{name}.json").read_bytes())
    assert decoded == expected
    assert decode_any(encode_request(decoded)) == expected


def test_signal_is_told_from_the_top_level_key() -> None:
    assert signal_of_json({"resourceLogs": []}) == Signal.LOGS
    assert signal_of_json({"resource_metrics": []}) == Signal.METRICS
    with pytest.raises(ValueError, match="resourceSpans, resourceMetrics or resourceLogs"):
        signal_of_json({"other": 1})


def test_iter_file_reads_one_request_per_line_and_names_a_bad_line(tmp_path: Path) -> None:
    requests = [_logs(AnyValue(string_value=f"line {i}")) for i in range(3)]
    good = b"\n".join(encode_request(r) for r in requests) + b"\n\n"
    path = tmp_path / "out.jsonl"
    path.write_bytes(good)
    assert list(iter_file(path)) == requests
    path.write_bytes(good + b'{"resourceLogs": [{"scopeLogs": 5}]}\n')
    with pytest.raises(ValueError, match=r"out.jsonl:5: resourceLogs\[0\].scopeLogs: expected an"):
        list(iter_file(path))


# Errors ------------------------------------------------------------------------------------
def _span_json(**fields: Any) -> str:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{}, {}, {}, fields]}]}]})


SPAN = "resourceSpans[0].scopeSpans[0].spans[3]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_span_json(traceId="xyz"), f"{SPAN}.traceId: expected 32 hex characters, got 'xyz'"),
        (_span_json(traceId="zz" * 16), f"{SPAN}.traceId: expected 32 hex characters, got 'zzzz"),
        (_span_json(spanId="00" * 16), f"{SPAN}.spanId: expected 16 hex characters, got '0000"),
        (_span_json(spanId="00 " * 5 + "0"), f"{SPAN}.spanId: expected 16 hex characters"),
        (_span_json(parentSpanId=12), f"{SPAN}.parentSpanId: expected a string of 16 hex"),
        (_span_json(name=5), f"{SPAN}.name: expected a string, got a number 5"),
        (_span_json(kind="SERVER"), f"{SPAN}.kind: expected an integer or one of SPAN_KIND_"),
        (_span_json(kind=1.5), f"{SPAN}.kind: expected an integer or one of"),
        (_span_json(startTimeUnixNano="soon"), f"{SPAN}.startTimeUnixNano: expected an unsigned 64-bit integer"),
        (_span_json(startTimeUnixNano=-1), f"{SPAN}.startTimeUnixNano: expected an unsigned 64-bit integer, got -1, which is out of range"),
        (_span_json(droppedAttributesCount=1 << 32), f"{SPAN}.droppedAttributesCount: expected an unsigned 32-bit integer"),
        (_span_json(flags=True), f"{SPAN}.flags: expected an unsigned 32-bit integer (a number or a decimal string), got a boolean True"),
        (_span_json(attributes={}), f"{SPAN}.attributes: expected an array, got an object"),
        (_span_json(attributes=[{"key": "a", "value": {"stringValue": "x"}}, "b"]), f"{SPAN}.attributes[1]: expected an object (KeyValue), got a string 'b'"),
        (_span_json(attributes=[{"key": "a", "value": {"intValue": "1.5"}}]), f"{SPAN}.attributes[0].value.intValue: expected a 64-bit integer"),
        (_span_json(attributes=[{"key": "a", "value": {"boolValue": "true"}}]), f"{SPAN}.attributes[0].value.boolValue: expected true or false"),
        (_span_json(attributes=[{"key": "a", "value": {"doubleValue": "fast"}}]), f"{SPAN}.attributes[0].value.doubleValue: expected a number, \"NaN\""),
        (_span_json(attributes=[{"key": "a", "value": {"bytesValue": "!!"}}]), f"{SPAN}.attributes[0].value.bytesValue: expected a base64 string"),
        (_span_json(attributes=[{"key": 1, "value": {}}]), f"{SPAN}.attributes[0].key: expected a string"),
        (_span_json(events=[{"attributes": [{"key": "k", "value": {"arrayValue": {"values": [1]}}}]}]),
         f"{SPAN}.events[0].attributes[0].value.arrayValue.values[0]: expected an object (AnyValue)"),
        (_span_json(status=[]), f"{SPAN}.status: expected an object (Status), got an array"),
        ('{"resourceSpans": 1}', "resourceSpans: expected an array, got a number 1"),
        ('{"resource_spans": [{"resource": {"attributes": [{"key": "k", "value": {"intValue": true}}]}}]}',
         "resource_spans[0].resource.attributes[0].value.intValue: expected a 64-bit integer"),
        ("[]", "expected a JSON object at the top level (ExportTraceServiceRequest), got an array"),
        ('"text"', "expected a JSON object at the top level (ExportTraceServiceRequest), got a string"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_input_names_the_path_that_failed(text: str | bytes, message: str) -> None:
    with pytest.raises(ValueError) as failure:
        decode_request(Signal.TRACES, text)
    assert str(failure.value).startswith(message)


def _log_body_json(body: str) -> str:
    return '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":BODY}]}]}]}'.replace("BODY", body)


@pytest.mark.parametrize(
    ("depth", "message"),
    [(60, "values nested too deeply: protobuf allows at most 100 levels"),
     (5000, "JSON nested too deeply")],
)  # fmt: skip
def test_deep_nesting_is_refused_with_a_value_error(depth: int, message: str) -> None:
    body = '{"stringValue":"x"}'
    for _ in range(depth):
        body = '{"arrayValue":{"values":[' + body + "]}}"
    with pytest.raises(ValueError, match=message):
        decode_request(Signal.LOGS, _log_body_json(body))


@pytest.mark.parametrize(
    "body",
    [rb'{"stringValue":"\ud800"}', b'{"stringValue":"\xff"}', b'{"stringValue":"a\tb"}'],
    ids=["lone surrogate", "not UTF-8", "raw control character"],
)
def test_invalid_strings_are_refused(body: bytes) -> None:
    text = _log_body_json("{}").encode().replace(b"{}", body)
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_request(Signal.LOGS, text)


def test_bad_metric_value_and_enum_name_are_named() -> None:
    text = json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"sum": {"aggregationTemporality": "DELTA", "dataPoints": []}}
    ]}]}]})  # fmt: skip
    with pytest.raises(ValueError, match=r"metrics\[0\]\.sum\.aggregationTemporality: expected an "
                       r"integer or one of AGGREGATION_TEMPORALITY_UNSPECIFIED"):  # fmt: skip
        decode_request(Signal.METRICS, text)
    text = json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"histogram": {"dataPoints": [{"bucketCounts": ["1", "x"]}]}}
    ]}]}]})  # fmt: skip
    with pytest.raises(
        ValueError, match=r"dataPoints\[0\]\.bucketCounts\[1\]: expected an unsigned"
    ):
        decode_request(Signal.METRICS, text)


def test_repeated_attributes_decode_the_same_every_time() -> None:
    """Remembered attribute encodings must not leak from one pair into another."""
    pairs = [{"key": k, "value": {kind: v}} for k, kind, v in itertools.product(
        ["a", "b"], ["stringValue", "intValue"], ["1", "2"])]  # fmt: skip
    text = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": pairs}]}]}]})
    for _ in range(3):
        record = decode_request(Signal.LOGS, text).resource_logs[0].scope_logs[0].log_records[0]
        got = [(a.key, a.value.WhichOneof("value"), a.value.string_value or a.value.int_value)
               for a in record.attributes]  # fmt: skip
        assert got == [
            ("a", "string_value", "1"), ("a", "string_value", "2"), ("a", "int_value", 1),
            ("a", "int_value", 2), ("b", "string_value", "1"), ("b", "string_value", "2"),
            ("b", "int_value", 1), ("b", "int_value", 2),
        ]  # fmt: skip


# Helpers -----------------------------------------------------------------------------------
def _logs(*bodies: AnyValue) -> ExportLogsServiceRequest:
    records = [LogRecord(body=body) for body in bodies]
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])]
    )


def _records(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["resourceLogs"][0]["scopeLogs"][0]["logRecords"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("request_", every_field_requests(), ids=lambda r: type(r).__name__)
def test_every_decoding_road_gives_the_same_message(request_: Message) -> None:
    """Structs from JSON text, compiled dict decoding and the checked walk all agree."""
    from otelkit.collector.pdata import otlp_json

    signal = Signal(_signal(request_))
    text = encode_request(request_)  # type: ignore[arg-type]
    codec, checked = otlp_json._BY_SIGNAL[signal], otlp_json._CHECKED[signal]
    obj = json.loads(text)
    roads = [codec.json_to_wire(text), codec.decode(obj), checked.wire(obj)]
    assert [otlp_json._parse_wire(signal, raw) for raw in roads] == [request_] * 3
    assert json.loads(text) == checked.to_json(request_)  # type: ignore[arg-type]


def test_short_string_pairs_read_from_bytes_match_the_general_path() -> None:
    from otelkit.collector.pdata._otlpjson_checked import message_codec
    from otelkit.collector.pdata._otlpjson_compiled import string_pair_json

    reference = message_codec(KeyValue.DESCRIPTOR).to_json
    pairs = [
        KeyValue(key=key, value=AnyValue(string_value=value))
        for key in ["k", "", "ключ ☃", "k" * 125, "k" * 126, "k" * 200]
        for value in ["v", "", "значение", "v" * 125, "v" * 126, "v" * 300]
    ]
    pairs += [variant for variant in variants(KeyValue.DESCRIPTOR)]
    pairs += [KeyValue(key="k"), KeyValue(value=AnyValue(string_value="v"))]
    pairs += [KeyValue(key='say "hi"\\', value=AnyValue(string_value="tab\tnew\nline\x00"))]
    fast = 0
    for pair in pairs:
        got = string_pair_json(pair.SerializeToString())
        if got:
            fast += 1
            assert json.loads(got) == reference(pair), pair
    assert fast == 17  # the 4 x 4 whose lengths fit in one byte (and the escaped one)
    assert string_pair_json(pairs[0].SerializeToString() + b"\x18\x01") == b""


@pytest.mark.parametrize(
    ("text", "direct"),
    [
        (b'{"key":"http.route","value":{"stringValue":"/users/{id}"}}', True),
        (b'{"key":"","value":{"stringValue":""}}', True),
        ('{"key":"ключ ☃","value":{"stringValue":"значение"}}'.encode(), True),
        (b'{"key":"k","value":{"stringValue":"' + b"v" * 300 + b'"}}', True),
        (b'{"key":"k","value":{"stringValue":"a\\"b"}}', False),  # escapes: general road
        (b'{"key":"k","value":{"stringValue":"a\\u00e9b"}}', False),
        (b'{"key": "k", "value": {"stringValue": "spaced"}}', False),
        (b'{"key":"k","value":{"intValue":"5"}}', False),
    ],
)
def test_compact_string_pairs_read_by_pattern_match_the_general_path(
    text: bytes, direct: bool
) -> None:
    from otelkit.collector.pdata._otlpjson_checked import message_codec
    from otelkit.collector.pdata._otlpjson_compiled import string_pair_wire

    expected = KeyValue.FromString(message_codec(KeyValue.DESCRIPTOR).wire(json.loads(text)))
    raw = string_pair_wire(text)
    assert bool(raw) == direct
    if direct:
        assert KeyValue.FromString(raw) == expected
    request = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[%s]}]}]}]}' % text
    record = decode_request(Signal.LOGS, request).resource_logs[0].scope_logs[0].log_records[0]
    assert list(record.attributes) == [expected]


def test_requests_the_opentelemetry_sdk_builds_round_trip_with_hex_ids() -> None:
    """Spans, metrics and logs from the real SDK, through the SDK's own protobuf encoders."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    spans_out = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans_out))
    tracer = tracer_provider.get_tracer("test", "1.0")
    with (
        tracer.start_as_current_span("parent", attributes={"http.route": "/x", "n": 3}),
        tracer.start_as_current_span("child") as child,
    ):
        child.add_event("retry", {"attempt": 2, "ok": False, "ratio": 0.5})
        child.set_status(Status(StatusCode.ERROR, "boom"))
        child.set_attribute("tags", ["a", "b"])
    spans = spans_out.get_finished_spans()
    traces_request = encode_spans(spans)
    decoded = decode_request(Signal.TRACES, encode_request(traces_request))
    assert decoded == traces_request
    text = encode_request(traces_request).decode()
    for span in spans:
        assert f'"traceId":"{span.context.trace_id:032x}"' in text
        assert f'"spanId":"{span.context.span_id:016x}"' in text

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    meter.create_counter("requests").add(3, {"route": "/x"})
    meter.create_histogram("latency", unit="s").record(0.25, {"route": "/x"})
    meter.create_up_down_counter("active").add(-2)
    metrics_request = encode_metrics(reader.get_metrics_data())
    assert decode_request(Signal.METRICS, encode_request(metrics_request)) == metrics_request

    logs_out = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs_out))
    logger = logger_provider.get_logger("test")
    with tracer.start_as_current_span("logging"):
        logger.emit(severity_number=SeverityNumber.WARN, severity_text="WARNING",
                    body={"message": "disk full", "disk": "/var", "used": [0.93, 1]},
                    attributes={"code.function": "check"}, event_name="disk.full")  # fmt: skip
        logger.emit(body=b"\x00binary")
    logs_request = encode_logs(logs_out.get_finished_logs())
    records = logs_request.resource_logs[0].scope_logs[0].log_records
    assert len(records) == 2 and records[0].trace_id and records[0].body.kvlist_value.values
    assert decode_request(Signal.LOGS, encode_request(logs_request)) == logs_request
