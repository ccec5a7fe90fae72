"""The checked OTLP/JSON codec: one generic walk over the protobuf descriptors.

It is the reference the compiled codec (``_otlpjson_compiled``) is measured against and
the path that explains bad input: every failure names its JSON path. Decoding writes
protobuf wire bytes, so the C parser builds the message.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# Bytes fields that OTLP/JSON writes as hex, with their length in bytes.
HEX_ID_FIELDS = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}

_Wire = Callable[[Any], bytes]
_ToJson = Callable[[Any], Any]


# Errors -------------------------------------------------------------------------------
class JsonPathError(ValueError):
    """A decoding failure; each enclosing level adds its segment of the path on the way out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.segments: list[str] = []  # innermost first

    def located(self) -> ValueError:
        path = ""
        for segment in reversed(self.segments):
            path += segment if segment.startswith("[") or not path else "." + segment
        return ValueError(f"{path}: {self.message}" if path else self.message)


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def expected(what: str, value: Any) -> JsonPathError:
    return JsonPathError(f"expected {what}, got {json_type(value)} {describe(value)}")


# Wire-format primitives -----------------------------------------------------------------
SMALL_VARINTS = [bytes([n]) for n in range(128)]
pack_double = struct.Struct("<d").pack
pack_fixed64 = struct.Struct("<Q").pack
pack_sfixed64 = struct.Struct("<q").pack
pack_fixed32 = struct.Struct("<I").pack
pack_sfixed32 = struct.Struct("<i").pack
pack_float = struct.Struct("<f").pack


def varint(n: int) -> bytes:
    if n < 128:
        return SMALL_VARINTS[n] if n >= 0 else varint(n + (1 << 64))
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def delimited(tag: bytes, body: bytes) -> bytes:
    size = len(body)
    return tag + (SMALL_VARINTS[size] if size < 128 else varint(size)) + body


# JSON value -> Python scalar ------------------------------------------------------------
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1, "an unsigned 64-bit integer"),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1, "an unsigned 64-bit integer"),
}
SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def integer_reader(low: int, high: int, what: str) -> Callable[[Any], int]:
    """Integers come as numbers or decimal strings (64-bit ones usually as strings)."""
    expectation = f"{what} (a number or a decimal string)"

    def read(value: Any) -> int:
        kind = type(value)
        number: int
        if kind is int:
            number = value
        elif kind is str:
            try:
                number = int(value)
            except ValueError:
                number = _integral_float(value, expectation)
        elif kind is float and value.is_integer():
            number = int(value)
        else:
            raise expected(expectation, value)
        if not low <= number <= high:
            raise JsonPathError(f"expected {what}, got {value!r}, which is out of range")
        return number

    return read


def _integral_float(text: str, expectation: str) -> int:
    """protobuf's JSON parser also takes exponent forms such as ``"1e3"``."""
    try:
        number = float(text)
    except ValueError:
        raise expected(expectation, text) from None
    if not number.is_integer():
        raise expected(expectation, text)
    return int(number)


def read_double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        try:
            return float(value)
        except ValueError:
            pass
    raise expected('a number, "NaN", "Infinity" or "-Infinity"', value)


def read_string(value: Any) -> bytes:
    if type(value) is not str:
        raise expected("a string", value)
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise JsonPathError(f"expected valid Unicode, got {describe(value)}") from None


def read_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise expected("true or false", value)


def read_base64(value: Any) -> bytes:
    if type(value) is not str:
        raise expected("a base64 string", value)
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise expected("a base64 string", value) from None


def hex_reader(size: int) -> Callable[[Any], bytes]:
    expectation = f"{size * 2} hex characters"

    def read(value: Any) -> bytes:
        if type(value) is not str:
            raise expected(f"a string of {expectation}", value)
        if not value:
            return b""
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) != size or len(value) != size * 2:
            raise JsonPathError(f"expected {expectation}, got {describe(value)}")
        return raw

    return read


# Compiled message codecs -------------------------------------------------------------
class _FieldCodec:
    """How one protobuf field goes from JSON to wire bytes and from a message to JSON."""

    __slots__ = ("json_name", "to_json", "wire")

    def __init__(self, json_name: str, wire: _Wire, to_json: _ToJson) -> None:
        self.json_name = json_name
        self.wire = wire
        self.to_json = to_json


class MessageCodec:
    """The compiled codec of one message type; fields are filled in by :func:`_compile`."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.by_key: dict[str, _FieldCodec] = {}  # JSON name and proto name
        self.by_field: dict[FieldDescriptor, _FieldCodec] = {}

    def wire(self, obj: Any) -> bytes:
        """The wire encoding of a JSON object; unknown keys and nulls are skipped."""
        if type(obj) is not dict:
            raise expected(f"an object ({self.descriptor.name})", obj)
        by_key = self.by_key
        parts = []
        for key, value in obj.items():
            field = by_key.get(key)
            if field is None or value is None:
                continue
            try:
                parts.append(field.wire(value))
            except JsonPathError as error:
                error.segments.append(key)
                raise
        return b"".join(parts)

    def to_json(self, message: Message) -> dict[str, Any]:
        by_field = self.by_field
        out = {}
        for descriptor, value in message.ListFields():
            field = by_field[descriptor]
            out[field.json_name] = field.to_json(value)
        return out


_CODECS: dict[str, MessageCodec] = {}


def message_codec(descriptor: Descriptor) -> MessageCodec:
    codec = _CODECS.get(descriptor.full_name)
    if codec is None:
        codec = _CODECS[descriptor.full_name] = MessageCodec(descriptor)
        for field in descriptor.fields:
            compiled = _compile(field)
            codec.by_key[field.json_name] = compiled
            codec.by_key[field.name] = compiled
            codec.by_field[field] = compiled
    return codec


def _compile(field: FieldDescriptor) -> _FieldCodec:
    if field.message_type is not None:
        return _compile_message(field)
    wire_type, read, write, to_json = _scalar(field)
    tag = field_tag(field.number, wire_type)
    if not field.is_repeated:

        def write_one(value: Any) -> bytes:
            return tag + write(read(value))

        return _FieldCodec(field.json_name, write_one, to_json)
    if wire_type == 2:  # strings and bytes repeat one by one; numbers are packed

        def wire(value: Any) -> bytes:
            return b"".join(_each(value, lambda item: tag + write(read(item))))

    else:
        packed_tag = field_tag(field.number, 2)

        def wire(value: Any) -> bytes:
            return delimited(packed_tag, b"".join(_each(value, lambda item: write(read(item)))))

    def list_to_json(values: Any) -> list[Any]:
        return [to_json(item) for item in values]

    return _FieldCodec(field.json_name, wire, list_to_json)


def _each(value: Any, write_one: _Wire) -> list[bytes]:
    """Each element of a JSON array written; a failure names the element's index.

    One pass, each element written once: finding a bad element deep in nested arrays
    costs no more than writing them (no re-walking of subtrees on the way out).
    """
    if type(value) is not list:
        raise expected("an array", value)
    parts = []
    for index, item in enumerate(value):
        try:
            parts.append(write_one(item))
        except JsonPathError as error:
            error.segments.append(f"[{index}]")
            raise
    return parts


def _scalar(
    field: FieldDescriptor,
) -> tuple[int, Callable[[Any], Any], Callable[[Any], bytes], _ToJson]:
    """(wire type, JSON reader, wire writer, JSON writer) of a scalar field."""
    kind = field.type
    same: _ToJson = _identity
    if kind == FieldDescriptor.TYPE_STRING:
        return 2, read_string, length_prefixed, same
    if kind == FieldDescriptor.TYPE_BYTES:
        size = HEX_ID_FIELDS.get(field.name)
        if size is not None:
            return 2, hex_reader(size), length_prefixed, hex_writer(size)
        return 2, read_base64, length_prefixed, to_base64
    if kind == FieldDescriptor.TYPE_BOOL:
        return 0, read_bool, write_bool, same
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return 1, read_double, pack_double, double_to_json
    if kind == FieldDescriptor.TYPE_FLOAT:
        return 5, read_double, pack_float, double_to_json
    if kind == FieldDescriptor.TYPE_ENUM:
        return 0, enum_reader(field), varint, same
    low, high, what = INT_RANGES[kind]
    read = integer_reader(low, high, what)
    to_json: _ToJson = str if high > (1 << 32) else same  # 64-bit integers as strings
    writers: dict[int, tuple[int, Callable[[Any], bytes]]] = {
        FieldDescriptor.TYPE_FIXED64: (1, pack_fixed64),
        FieldDescriptor.TYPE_SFIXED64: (1, pack_sfixed64),
        FieldDescriptor.TYPE_FIXED32: (5, pack_fixed32),
        FieldDescriptor.TYPE_SFIXED32: (5, pack_sfixed32),
        FieldDescriptor.TYPE_SINT32: (0, zigzag),
        FieldDescriptor.TYPE_SINT64: (0, zigzag),
    }
    wire_type, write = writers.get(kind, (0, varint))
    return wire_type, read, write, to_json


def enum_reader(field: FieldDescriptor) -> Callable[[Any], int]:
    enum = field.enum_type
    by_name = {value.name: value.number for value in enum.values}
    read_int = integer_reader(-(1 << 31), (1 << 31) - 1, "a 32-bit integer")
    names = ", ".join(by_name)

    def read(value: Any) -> int:
        if type(value) is str and value in by_name:
            return int(by_name[value])
        try:
            return read_int(value)
        except JsonPathError:
            raise expected(f"an integer or one of {names} ({enum.name})", value) from None

    return read


def _compile_message(field: FieldDescriptor) -> _FieldCodec:
    codec = message_codec(field.message_type)
    tag = field_tag(field.number, 2)

    def message_wire(value: Any) -> bytes:
        return delimited(tag, codec.wire(value))

    if not field.is_repeated:
        return _FieldCodec(field.json_name, message_wire, codec.to_json)

    def repeated_wire(value: Any) -> bytes:
        return b"".join(_each(value, message_wire))

    def repeated_to_json(values: Any) -> list[dict[str, Any]]:
        to_json = codec.to_json
        return [to_json(item) for item in values]

    return _FieldCodec(field.json_name, repeated_wire, repeated_to_json)


def _identity(value: Any) -> Any:
    return value


def length_prefixed(raw: bytes) -> bytes:
    size = len(raw)
    return (SMALL_VARINTS[size] if size < 128 else varint(size)) + raw


def write_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def zigzag(n: int) -> bytes:
    return varint((n << 1) ^ (n >> 63) if n < 0 else n << 1)


def hex_writer(size: int) -> Callable[[bytes], str]:
    """An ID as OTLP/JSON hex; an ID of another length has no OTLP/JSON form."""

    def write(raw: bytes) -> str:
        if len(raw) != size:
            raise id_length_error(raw, size)
        return raw.hex()

    return write


def id_length_error(raw: bytes, size: int) -> ValueError:
    return ValueError(f"an ID of {len(raw)} bytes has no OTLP/JSON form (expected {size})")


def to_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def double_to_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
