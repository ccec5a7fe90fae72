"""Attributes read from wire bytes agree with walking them, in every value shape."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.pdata.values import any_value_text
from otelkit.collector.pdata.wire import AttributeReader


def test_reader_agrees_with_walking_the_attributes() -> None:
    span = Span(name="x")
    values = {
        "s": AnyValue(string_value="/checkout"),
        "long": AnyValue(string_value="é" * 300),
        "b": AnyValue(bool_value=True),
        "f": AnyValue(bool_value=False),
        "i": AnyValue(int_value=-42),
        "big": AnyValue(int_value=2**40),
        "d": AnyValue(double_value=1.5),
        "arr": AnyValue(array_value={"values": [AnyValue(string_value="a")]}),
        "empty": AnyValue(),
    }
    span.attributes.extend(KeyValue(key=k, value=v) for k, v in values.items())
    # the same key inside an event must not be read as the span's
    span.events.add(name="e").attributes.add(key="only_in_event", value=AnyValue(string_value="no"))
    found = AttributeReader([*values, "missing", "only_in_event"]).texts(span)
    assert found == {k: any_value_text(v) for k, v in values.items()}


def test_key_that_is_a_prefix_of_another_is_not_confused() -> None:
    span = Span(name="x")
    span.attributes.add(key="db.system.name", value=AnyValue(string_value="postgresql"))
    assert AttributeReader(["db.system"]).texts(span) == {}
    span.attributes.add(key="db.system", value=AnyValue(string_value="mysql"))
    assert AttributeReader(["db.system", "db.system.name"]).texts(span) == {
        "db.system": "mysql",
        "db.system.name": "postgresql",
    }


def test_scope_spans_layout_finds_every_span_and_its_trace_id() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

    from otelkit.collector.pdata.wire import scope_spans_layout

    ss = ScopeSpans(schema_url="s")
    ss.scope.name = "scope"
    ss.spans.add(trace_id=b"\x01" * 16, name="short")
    ss.spans.add(trace_id=b"\x02" * 16, name="long" * 5000)  # a three-byte length
    ss.spans.add(name="no trace id")
    data = ss.SerializeToString()
    starts, ends, ids = scope_spans_layout(data)
    assert [Span.FromString(data[a:b]) for a, b in zip(starts, ends, strict=True)] == list(ss.spans)
    assert ids == [b"\x01" * 16, b"\x02" * 16, None]
