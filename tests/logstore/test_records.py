"""Rows as the store keeps them: every kind of attribute value, and IDs absent or zero."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelkit.logstore.records import COLUMNS, rows_from_request


def row(record: LogRecord) -> dict[str, object]:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.append(record)
    [made] = rows_from_request(request, now_ns=1)
    return dict(zip(COLUMNS, made, strict=True))


def test_each_kind_of_value_is_stored_as_the_json_it_stands_for() -> None:
    record = LogRecord(time_unix_nano=5)
    listed = AnyValue()
    listed.array_value.values.add(string_value="a")
    listed.array_value.values.add(int_value=-3)
    mapped = AnyValue()
    mapped.kvlist_value.values.add(key="inner", value=AnyValue(bool_value=False))
    values = {
        "text": AnyValue(string_value="héllo"),
        "empty": AnyValue(string_value=""),
        "zero": AnyValue(int_value=0),
        "negative": AnyValue(int_value=-(2**63)),
        "yes": AnyValue(bool_value=True),
        "ratio": AnyValue(double_value=0.25),
        "nan": AnyValue(double_value=float("nan")),
        "raw": AnyValue(bytes_value=b"\x00\xff"),
        "list": listed,
        "map": mapped,
        "unset": AnyValue(),
    }
    for key, value in values.items():
        record.attributes.add(key=key, value=value)
    record.attributes.append(KeyValue(key="text"))  # a repeated key keeps its last value
    assert json.loads(str(row(record)["attributes"])) == {
        "text": None,
        "empty": "",
        "zero": 0,
        "negative": -(2**63),
        "yes": True,
        "ratio": 0.25,
        "nan": "nan",
        "raw": "AP8=",
        "list": ["a", -3],
        "map": {"inner": False},
        "unset": None,
    }


def test_absent_and_all_zero_ids_are_none() -> None:
    assert (row(LogRecord())["trace_id"], row(LogRecord())["span_id"]) == (None, None)
    zero = row(LogRecord(trace_id=bytes(16), span_id=bytes(8)))
    assert (zero["trace_id"], zero["span_id"]) == (None, None)
    some = row(LogRecord(trace_id=bytes(15) + b"\x01", span_id=b"\x01" + bytes(7)))
    assert (some["trace_id"], some["span_id"]) == (bytes(15) + b"\x01", b"\x01" + bytes(7))
    assert row(LogRecord())["attributes"] is None


def test_a_body_is_its_text_or_its_json_and_an_empty_one_is_not_an_absent_one() -> None:
    def body(value: AnyValue | None) -> tuple[object, object]:
        record = LogRecord() if value is None else LogRecord(body=value)
        made = row(record)
        return made["body"], made["body_json"]

    mapped = AnyValue()
    mapped.kvlist_value.values.add(key="n", value=AnyValue(int_value=1))
    assert body(AnyValue(string_value="GET / 200")) == ("GET / 200", False)
    assert body(AnyValue(string_value="")) == ("", False)
    assert body(None) == (None, False)
    assert body(AnyValue()) == (None, False)
    assert body(AnyValue(int_value=0)) == ("0", True)
    assert body(mapped) == ('{"n":1}', True)
