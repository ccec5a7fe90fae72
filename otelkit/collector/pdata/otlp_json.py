"""OTLP/JSON: the JSON encoding of OTLP export requests, fast.

OTLP/JSON is protobuf's JSON mapping with three OTLP rules on top: trace and span IDs
are hex strings (not base64), enums are integers, and field names are lowerCamelCase.
protobuf's ``json_format`` gets the IDs wrong and runs at a few thousand spans a second,
so this module has its own codec, compiled once from the protobuf descriptors:

* decoding turns the ``json.loads`` output straight into protobuf *wire bytes* and lets
  the C parser (``ParseFromString``) build the message, so Python never sets a field;
* encoding reads only the fields that are set (``ListFields``) into plain dicts for the
  C JSON serializer;
* attributes repeat across spans (``http.request.method: GET``), so both directions
  remember the encoding of recently seen key/value pairs.

Input is accepted as protobuf's JSON parser accepts it: lowerCamelCase or the proto
field names, IDs in either hex case, enums as integers or names, 64-bit integers as
numbers or strings, doubles as numbers or ``"NaN"``/``"Infinity"``/``"-Infinity"``;
unknown fields are ignored, as the OTLP specification asks of receivers. Output uses
lowerCamelCase, lowercase hex IDs, integer enums, 64-bit integers as strings, and omits
fields that hold their default value.

Errors raise :class:`ValueError` naming the JSON path that failed, for example
``resourceSpans[0].scopeSpans[0].spans[3].traceId: expected 32 hex characters, got 'xyz'``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from otelkit.collector.pdata.signals import Payload, Signal


def _standard_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


_loads: Callable[[bytes | str], Any]
_dumps: Callable[[Any], bytes]
try:  # orjson is several times faster than the standard library in both directions
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover - only where orjson is missing
    _loads, _dumps = json.loads, _standard_dumps

__all__ = [
    "decode_any",
    "decode_request",
    "encode_request",
    "iter_file",
    "signal_of_json",
]

# Bytes fields that OTLP/JSON writes as hex, with their length in bytes.
_HEX_ID_FIELDS = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}
# The top-level key of each signal's request.
_TOP_KEYS = {
    "resourceSpans": Signal.TRACES,
    "resource_spans": Signal.TRACES,
    "resourceMetrics": Signal.METRICS,
    "resource_metrics": Signal.METRICS,
    "resourceLogs": Signal.LOGS,
    "resource_logs": Signal.LOGS,
}
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
# Cached attribute encodings; cleared when full, so memory stays bounded.
_CACHE_LIMIT = 1 << 16

_Wire = Callable[[Any], bytes]
_ToJson = Callable[[Any], Any]


# Errors -------------------------------------------------------------------------------
class _JsonPathError(ValueError):
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


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
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


def _expected(what: str, value: Any) -> _JsonPathError:
    return _JsonPathError(f"expected {what}, got {_json_type(value)} {_describe(value)}")


# Wire-format primitives -----------------------------------------------------------------
_SMALL_VARINTS = [bytes([n]) for n in range(128)]
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_sfixed64 = struct.Struct("<q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_sfixed32 = struct.Struct("<i").pack
_pack_float = struct.Struct("<f").pack


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n] if n >= 0 else _varint(n + (1 << 64))
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _delimited(tag: bytes, body: bytes) -> bytes:
    size = len(body)
    return tag + (_SMALL_VARINTS[size] if size < 128 else _varint(size)) + body


# JSON value -> Python scalar ------------------------------------------------------------
_INT_RANGES = {
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
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _integer_reader(low: int, high: int, what: str) -> Callable[[Any], int]:
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
            raise _expected(expectation, value)
        if not low <= number <= high:
            raise _JsonPathError(f"expected {what}, got {value!r}, which is out of range")
        return number

    return read


def _integral_float(text: str, expectation: str) -> int:
    """protobuf's JSON parser also takes exponent forms such as ``"1e3"``."""
    try:
        number = float(text)
    except ValueError:
        raise _expected(expectation, text) from None
    if not number.is_integer():
        raise _expected(expectation, text)
    return int(number)


def _read_double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        try:
            return float(value)
        except ValueError:
            pass
    raise _expected('a number, "NaN", "Infinity" or "-Infinity"', value)


def _read_string(value: Any) -> bytes:
    if type(value) is not str:
        raise _expected("a string", value)
    return value.encode("utf-8", "surrogatepass")


def _read_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise _expected("true or false", value)


def _read_base64(value: Any) -> bytes:
    if type(value) is not str:
        raise _expected("a base64 string", value)
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _expected("a base64 string", value) from None


def _hex_reader(size: int) -> Callable[[Any], bytes]:
    expectation = f"{size * 2} hex characters"

    def read(value: Any) -> bytes:
        if type(value) is not str:
            raise _expected(f"a string of {expectation}", value)
        if not value:
            return b""
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) != size or len(value) != size * 2:
            raise _JsonPathError(f"expected {expectation}, got {_describe(value)}")
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


class _MessageCodec:
    """The compiled codec of one message type; fields are filled in by :func:`_compile`."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.by_key: dict[str, _FieldCodec] = {}  # JSON name and proto name
        self.by_field: dict[FieldDescriptor, _FieldCodec] = {}

    def wire(self, obj: Any) -> bytes:
        """The wire encoding of a JSON object; unknown keys and nulls are skipped."""
        if type(obj) is not dict:
            raise _expected(f"an object ({self.descriptor.name})", obj)
        by_key = self.by_key
        parts = []
        for key, value in obj.items():
            field = by_key.get(key)
            if field is None or value is None:
                continue
            try:
                parts.append(field.wire(value))
            except _JsonPathError as error:
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


_CODECS: dict[str, _MessageCodec] = {}


def _codec(descriptor: Descriptor) -> _MessageCodec:
    codec = _CODECS.get(descriptor.full_name)
    if codec is None:
        codec = _CODECS[descriptor.full_name] = _MessageCodec(descriptor)
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
    tag = _tag(field.number, wire_type)
    if not field.is_repeated:

        def write_one(value: Any) -> bytes:
            return tag + write(read(value))

        return _FieldCodec(field.json_name, write_one, to_json)
    if wire_type == 2:  # strings and bytes repeat one by one; numbers are packed

        def write_all(items: list[Any]) -> bytes:
            return b"".join([tag + write(read(item)) for item in items])

    else:
        packed_tag = _tag(field.number, 2)

        def write_all(items: list[Any]) -> bytes:
            return _delimited(packed_tag, b"".join([write(read(item)) for item in items]))

    def wire(value: Any) -> bytes:
        return _each(value, write_all, read)

    def list_to_json(values: Any) -> list[Any]:
        return [to_json(item) for item in values]

    return _FieldCodec(field.json_name, wire, list_to_json)


def _each(value: Any, write_all: Callable[[list[Any]], bytes], check: _Wire) -> bytes:
    """``write_all`` of a JSON array; on failure, find the element ``check`` refuses."""
    if type(value) is not list:
        raise _expected("an array", value)
    try:
        return write_all(value)
    except _JsonPathError:
        for index, item in enumerate(value):
            try:
                check(item)
            except _JsonPathError as error:
                error.segments.append(f"[{index}]")
                raise
        raise


def _scalar(
    field: FieldDescriptor,
) -> tuple[int, Callable[[Any], Any], Callable[[Any], bytes], _ToJson]:
    """(wire type, JSON reader, wire writer, JSON writer) of a scalar field."""
    kind = field.type
    same: _ToJson = _identity
    if kind == FieldDescriptor.TYPE_STRING:
        return 2, _read_string, _length_prefixed, same
    if kind == FieldDescriptor.TYPE_BYTES:
        size = _HEX_ID_FIELDS.get(field.name)
        if size is not None:
            return 2, _hex_reader(size), _length_prefixed, _hex
        return 2, _read_base64, _length_prefixed, _base64
    if kind == FieldDescriptor.TYPE_BOOL:
        return 0, _read_bool, _write_bool, same
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return 1, _read_double, _pack_double, _double_to_json
    if kind == FieldDescriptor.TYPE_FLOAT:
        return 5, _read_double, _pack_float, _double_to_json
    if kind == FieldDescriptor.TYPE_ENUM:
        return 0, _enum_reader(field), _varint, same
    low, high, what = _INT_RANGES[kind]
    read = _integer_reader(low, high, what)
    to_json: _ToJson = str if high > (1 << 32) else same  # 64-bit integers as strings
    writers: dict[int, tuple[int, Callable[[Any], bytes]]] = {
        FieldDescriptor.TYPE_FIXED64: (1, _pack_fixed64),
        FieldDescriptor.TYPE_SFIXED64: (1, _pack_sfixed64),
        FieldDescriptor.TYPE_FIXED32: (5, _pack_fixed32),
        FieldDescriptor.TYPE_SFIXED32: (5, _pack_sfixed32),
        FieldDescriptor.TYPE_SINT32: (0, _zigzag),
        FieldDescriptor.TYPE_SINT64: (0, _zigzag),
    }
    wire_type, write = writers.get(kind, (0, _varint))
    return wire_type, read, write, to_json


def _enum_reader(field: FieldDescriptor) -> Callable[[Any], int]:
    enum = field.enum_type
    by_name = {value.name: value.number for value in enum.values}
    read_int = _integer_reader(-(1 << 31), (1 << 31) - 1, "a 32-bit integer")
    names = ", ".join(by_name)

    def read(value: Any) -> int:
        if type(value) is str and value in by_name:
            return int(by_name[value])
        try:
            return read_int(value)
        except _JsonPathError:
            raise _expected(f"an integer or one of {names} ({enum.name})", value) from None

    return read


def _compile_message(field: FieldDescriptor) -> _FieldCodec:
    codec = _codec(field.message_type)
    tag = _tag(field.number, 2)
    if field.is_repeated and field.message_type.full_name == _KEY_VALUE:
        return _key_values(field.json_name, tag, codec)

    def message_wire(value: Any) -> bytes:
        return _delimited(tag, codec.wire(value))

    if not field.is_repeated:
        return _FieldCodec(field.json_name, message_wire, codec.to_json)

    def write_all(items: list[Any]) -> bytes:
        return b"".join([_delimited(tag, codec.wire(item)) for item in items])

    def repeated_wire(value: Any) -> bytes:
        return _each(value, write_all, codec.wire)

    def repeated_to_json(values: Any) -> list[dict[str, Any]]:
        to_json = codec.to_json
        return [to_json(item) for item in values]

    return _FieldCodec(field.json_name, repeated_wire, repeated_to_json)


def _key_values(json_name: str, tag: bytes, codec: _MessageCodec) -> _FieldCodec:
    """Attributes: the hot spot of every signal, so recently seen pairs are remembered.

    A pair with a string-valued AnyValue (``stringValue``, and ``intValue`` as OTLP/JSON
    writes it) is looked up by ``(key, value kind, value)`` when decoding and by its wire
    bytes when encoding.
    """
    decoded: dict[tuple[Any, str, str], bytes] = {}
    encoded: dict[bytes, dict[str, Any]] = {}

    def wire_one(pair: Any) -> bytes:
        if type(pair) is dict and len(pair) == 2:
            value = pair.get("value")
            if type(value) is dict and len(value) == 1:
                ((kind, text),) = value.items()
                key = pair.get("key")
                if type(text) is str and type(key) is str:
                    cache_key = (key, kind, text)
                    hit = decoded.get(cache_key)
                    if hit is None:
                        hit = _delimited(tag, codec.wire(pair))
                        if len(decoded) >= _CACHE_LIMIT:
                            decoded.clear()
                        decoded[cache_key] = hit
                    return hit
        return _delimited(tag, codec.wire(pair))

    def write_all(items: list[Any]) -> bytes:
        return b"".join([wire_one(pair) for pair in items])

    def wire(value: Any) -> bytes:
        return _each(value, write_all, wire_one)

    def to_json_one(pair: Message) -> dict[str, Any]:
        raw = pair.SerializeToString()
        hit = encoded.get(raw)
        if hit is None:
            hit = codec.to_json(pair)
            if len(encoded) >= _CACHE_LIMIT:
                encoded.clear()
            encoded[raw] = hit
        return hit

    def to_json(values: Any) -> list[dict[str, Any]]:
        return [to_json_one(pair) for pair in values]

    return _FieldCodec(json_name, wire, to_json)


def _identity(value: Any) -> Any:
    return value


def _length_prefixed(raw: bytes) -> bytes:
    size = len(raw)
    return (_SMALL_VARINTS[size] if size < 128 else _varint(size)) + raw


def _write_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63) if n < 0 else n << 1)


def _hex(raw: bytes) -> str:
    return raw.hex()


def _base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _double_to_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


_REQUEST_CODECS = {signal: _codec(signal.request_type.DESCRIPTOR) for signal in Signal}


# Public API ---------------------------------------------------------------------------
def decode_request(signal: Signal, data: bytes | str) -> Payload:
    """Parse one OTLP/JSON export request of ``signal``; ValueError names what is wrong."""
    return _from_object(signal, _parse_json(data))


def decode_any(data: bytes | str) -> Payload:
    """Parse one OTLP/JSON export request of whichever signal its top-level key names."""
    obj = _parse_json(data)
    return _from_object(signal_of_json(obj), obj)


def encode_request(payload: Payload) -> bytes:
    """OTLP/JSON of an export request, as compact UTF-8 bytes without a newline."""
    codec = _CODECS[payload.DESCRIPTOR.full_name]
    return _dumps(codec.to_json(payload))


def signal_of_json(obj: Any) -> Signal:
    """The signal of a parsed OTLP/JSON request, from its top-level key."""
    if type(obj) is dict:
        for key in obj:
            signal = _TOP_KEYS.get(key)
            if signal is not None:
                return signal
        if not obj:
            raise ValueError("empty object: cannot tell traces, metrics and logs apart")
    raise ValueError(
        "expected an object with resourceSpans, resourceMetrics or resourceLogs, "
        f"got {_describe(obj)}"
    )


def iter_file(path: str | Path) -> Iterator[Payload]:
    """The requests in a ``file`` exporter's JSON output, one per non-empty line.

    A ValueError names the line that failed (``otel.jsonl:12: ...``).
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield decode_any(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None


def _parse_json(data: bytes | str) -> Any:
    try:
        return _loads(data)
    except ValueError as error:
        raise ValueError(f"not valid JSON: {error}") from None


def _from_object(signal: Signal, obj: Any) -> Payload:
    if type(obj) is not dict:
        raise ValueError(
            f"expected a JSON object at the top level ({signal.request_type.__name__}), "
            f"got {_json_type(obj)}"
        )
    try:
        raw = _REQUEST_CODECS[signal].wire(obj)
    except _JsonPathError as error:
        raise error.located() from None
    payload = signal.new_request()
    payload.ParseFromString(raw)
    return payload
