"""Rows as the store keeps them: every kind of attribute value, and IDs absent or zero."""

from __future__ import annotations

import json
from collections import Counter

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelkit.logstore.records import COLUMNS, MAX_AHEAD_NS, MAX_NS, rows_from_request


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


NOW = 1_800_000_000 * 10**9


def stored_times(*records: LogRecord) -> tuple[list[tuple[object, object]], Counter[str]]:
    """(ts, observed_ts) of each record's row, received at NOW, and what was repaired."""
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.extend(records)
    repairs: Counter[str] = Counter()
    rows = rows_from_request(request, NOW, repairs)
    made = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    return [(m["ts"], m["observed_ts"]) for m in made], repairs


def test_a_time_far_ahead_of_arrival_falls_back_to_the_observed_time_then_arrival() -> None:
    end = 2**64 - 1
    times, repaired = stored_times(
        LogRecord(time_unix_nano=NOW + MAX_AHEAD_NS, observed_time_unix_nano=NOW),
        LogRecord(time_unix_nano=end, observed_time_unix_nano=NOW - 5),
        LogRecord(time_unix_nano=NOW + 2 * MAX_AHEAD_NS, observed_time_unix_nano=end),
        LogRecord(observed_time_unix_nano=end),
        LogRecord(time_unix_nano=1),
    )
    assert times == [
        (NOW + MAX_AHEAD_NS, NOW),  # a clock a little ahead: kept as sent
        (NOW - 5, NOW - 5),
        (NOW, MAX_NS),
        (NOW, MAX_NS),
        (1, None),  # far in the past is the record's own business
    ]
    assert repaired == Counter(time=3)


def test_severity_numbers_outside_the_data_model_are_unspecified_and_counted() -> None:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.extend(LogRecord(severity_number=n) for n in (99, -5, 24, 0))  # type: ignore[arg-type]
    repairs: Counter[str] = Counter()
    rows = rows_from_request(request, NOW, repairs)
    assert [row[COLUMNS.index("severity_number")] for row in rows] == [0, 0, 24, 0]
    assert repairs == Counter(severity=2)
    assert rows_from_request(request, NOW) == rows  # nothing to count them in
