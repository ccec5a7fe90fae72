"""Span attributes read from the span's wire bytes.

Walking a span's attributes in Python costs about half a microsecond per attribute
(each ``KeyValue`` becomes a Python object); serialising the span (in C) and
``bytes.find``-ing the few keys a matcher needs costs a fraction of that. A match is
accepted only where it is framed as a top-level span attribute (``Span.attributes`` is
field 9), so the same key inside an event or a link is not mistaken for it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from otelkit.collector.pdata._otlpjson_checked import delimited, field_tag, varint
from otelkit.collector.pdata.values import any_value_text, format_float

_ATTRIBUTE_TAG = 0x4A  # Span.attributes: field 9, length-delimited


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, position after it)."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def key_pattern(key: str) -> bytes:
    """The bytes that start a ``KeyValue`` with this key and open its value."""
    encoded = key.encode()
    return b"\x0a" + varint(len(encoded)) + encoded + b"\x12"


def raw_value(data: bytes, pattern: bytes) -> bytes | None:
    """The ``AnyValue`` bytes of the top-level attribute ``pattern`` starts, if any."""
    at = data.find(pattern)
    return None if at < 0 else raw_value_at(data, pattern, at)


def raw_value_at(data: bytes, pattern: bytes, at: int) -> bytes | None:
    """As :func:`raw_value`, given where ``pattern`` first occurs."""
    # Fast path: value and KeyValue both shorter than 128 bytes (one-byte lengths).
    end = at + len(pattern)
    if end >= len(data):  # the pattern ends the bytes: part of a value, not a key
        return None
    length = data[end]
    if (
        length < 0x80
        and at >= 2
        and data[at - 2] == _ATTRIBUTE_TAG
        and data[at - 1] == len(pattern) + 1 + length
    ):
        return data[end + 1 : end + 1 + length]
    while at >= 0:
        try:
            length, value_at = read_varint(data, at + len(pattern))
        except IndexError:  # an occurrence inside the last value's bytes, at their end
            return None
        prefix = bytes([_ATTRIBUTE_TAG]) + varint(value_at - at + length)
        if at >= len(prefix) and data[at - len(prefix) : at] == prefix:
            return data[value_at : value_at + length]
        at = data.find(pattern, at + 1)
    return None


def value_text(raw: bytes) -> str:
    """An ``AnyValue``'s text, as :func:`otelkit.collector.pdata.values.any_value_text` gives."""
    if not raw:
        return ""
    tag = raw[0]
    if tag == 0x0A and raw[1] < 0x80:  # a short string_value
        return raw[2 : 2 + raw[1]].decode("utf-8", "replace")
    if tag == 0x0A:  # string_value
        length, at = read_varint(raw, 1)
        return raw[at : at + length].decode("utf-8", "replace")
    if tag == 0x10:  # bool_value
        return "true" if raw[1] else "false"
    if tag == 0x18:  # int_value
        value, _ = read_varint(raw, 1)
        return str(value - (1 << 64) if value >= 1 << 63 else value)
    if tag == 0x21:  # double_value
        return format_float(struct.unpack_from("<d", raw, 1)[0])
    return any_value_text(AnyValue.FromString(raw))


class AttributeReader:
    """Reads a fixed set of span attributes as text."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._patterns = tuple((key, key_pattern(key)) for key in sorted(set(keys)))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self._patterns)

    def texts(self, span: Span) -> dict[str, str]:
        if not self._patterns:
            return {}
        data = span.SerializeToString()
        found: dict[str, str] = {}
        for key, pattern in self._patterns:
            at = data.find(pattern)
            if at >= 0:
                raw = raw_value_at(data, pattern, at)
                if raw is not None:
                    found[key] = value_text(raw)
        return found


def scope_spans_layout(data: bytes) -> tuple[list[int], list[int], list[bytes | None]]:
    """Where each span of a serialised ``ScopeSpans`` starts and ends, and its trace ID
    where the span's bytes begin with one (serialisers write field 1 first; None
    elsewhere: read it from the message). Raises ValueError on bytes it cannot walk."""
    starts, ends, ids, irregular = _walk(data)
    found: list[bytes | None] = list(ids)
    for k in irregular:
        found[k] = None
    return starts, ends, found


def led_scope_spans_layout(data: bytes) -> tuple[list[int], list[int], list[bytes]] | None:
    """As :func:`scope_spans_layout` where every span's bytes begin with its trace ID;
    None where some span's do not."""
    starts, ends, ids, irregular = _walk(data)
    return None if irregular else (starts, ends, ids)


def span_field_starts(starts: Sequence[int], ends: Sequence[int]) -> list[int]:
    """Where each span's field (tag and length included) begins: serialisation writes
    the spans one after the other, so each begins where the one before ends."""
    if not starts:
        return []
    first = starts[0] - 1 - len(varint(ends[0] - starts[0]))  # tag 0x12, then the length
    return [first, *ends[:-1]]


def _walk(data: bytes) -> tuple[list[int], list[int], list[bytes], list[int]]:
    try:
        return _walk_scope_spans(data)
    except IndexError:
        raise ValueError("truncated ScopeSpans") from None


def _walk_scope_spans(data: bytes) -> tuple[list[int], list[int], list[bytes], list[int]]:
    # The hot loop of tail sampling: literals and bound methods, no calls per span.
    starts: list[int] = []
    ends: list[int] = []
    irregular: list[int] = []  # spans whose bytes do not begin with a 16-byte trace ID
    add_start, add_end = starts.append, ends.append
    pos, size = 0, len(data)
    while pos < size:
        if data[pos] != 0x12:  # not ScopeSpans.spans (field 2, length-delimited)
            pos = _skip_field(data, pos)
            continue
        length = data[pos + 1]
        if length < 0x80:
            pos += 2
        else:
            high = data[pos + 2]
            if high < 0x80:  # spans of 128 bytes to 16 KiB
                length = (length & 0x7F) | (high << 7)
                pos += 3
            else:
                length, pos = read_varint(data, pos + 1)
        # Span.trace_id: field 1 (tag 0x0A), 16 bytes long.
        if length < 18 or data[pos] != 0x0A or data[pos + 1] != 0x10:
            irregular.append(len(starts))
        add_start(pos)
        pos += length
        add_end(pos)
    if pos != size:
        raise ValueError("truncated span")
    return starts, ends, [data[at + 2 : at + 18] for at in starts], irregular


def _skip_field(data: bytes, pos: int) -> int:
    """The position after the field starting at ``pos``."""
    tag, pos = read_varint(data, pos)
    wire_type = tag & 7
    if wire_type == 0:
        _, pos = read_varint(data, pos)
    elif wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = read_varint(data, pos)
        pos += length
    elif wire_type == 5:
        pos += 4
    else:
        raise ValueError(f"unsupported wire type {wire_type}")
    if pos > len(data):
        raise ValueError("truncated field")
    return pos


# A field of a shadow message: name, number, type and label (``FieldDescriptorProto``'s
# constants), and the name of its message type among the shadows ("" for a scalar).
ShadowField = tuple[str, int, int, int, str]


def shadow_classes(package: str, messages: dict[str, Sequence[ShadowField]]) -> dict[str, Any]:
    """Message types that read chosen fields of OTLP bytes in C: the parser skips every
    field a shadow does not declare, so reading a span's IDs does not build its
    attributes. ``messages`` maps each type's name to its fields."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto3"
    )
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        for field_name, number, type_, label, type_name in fields:
            added = message.field.add(name=field_name, number=number, type=type_, label=label)
            if type_name:
                added.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in messages
    }


# The tags of length-delimited fields 0..15 (one byte each).
DELIMITED_TAGS = [field_tag(number, 2) for number in range(16)]


def delimited_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (tag, length, bytes) of number 0..15."""
    return delimited(DELIMITED_TAGS[number], payload)


def logs_under_resources(
    scope: bytes, records: Iterable[tuple[ResourceSpans, list[bytes]]]
) -> ExportLogsServiceRequest:
    """Log records made from spans, under the spans' resources: per ResourceSpans with
    records, one ResourceLogs of its resource and schema URL and one ScopeLogs of
    ``scope`` (its serialised scope field) and the records (their fields' bytes, in
    pieces), written as bytes and parsed once."""
    resource_logs: list[bytes] = []
    for rs, pieces in records:
        if not pieces:
            continue
        fields = delimited_field(1, rs.resource.SerializeToString()) + delimited_field(
            2, scope + b"".join(pieces)
        )
        if rs.schema_url:
            fields += delimited_field(3, rs.schema_url.encode())
        resource_logs.append(delimited_field(1, fields))
    logs: ExportLogsServiceRequest = ExportLogsServiceRequest.FromString(b"".join(resource_logs))
    return logs
