"""The compiled OTLP/JSON codec: straight-line Python generated from the descriptors.

A generic walk over descriptors spends most of its time dispatching (a dict lookup and
two or three calls per field), and a JSON parser spends most of its time creating the
dicts and strings of attributes. So each message type gets, when the module loads:

* ``Struct_<type>``: a msgspec Struct that the JSON is decoded into directly, with the
  types checked in C; key/value lists (and the other types of the recursive AnyValue
  family) stay :class:`msgspec.Raw` slices of the input, looked up in a cache by their
  bytes, since attributes repeat (``http.request.method: GET``);
* ``wire_<type>``: Struct -> protobuf wire bytes;
* ``decode_<type>``: parsed JSON (dicts) -> wire bytes, for the Raw slices and for
  input the Structs refuse (snake_case or unknown keys);
* ``encode_<type>``: message -> dict ready for the JSON serializer. A request is
  encoded from its *shadow*: the same bytes parsed as a copy of the OTLP types in which
  every key/value list is ``repeated bytes``. Python then never creates a wrapper per
  attribute (the costliest step of reading protobuf from Python), each attribute's
  bytes are the key of a cache of its JSON text, and a whole list goes to the
  serializer as one pre-encoded :class:`msgspec.Raw` fragment.

The fast paths are optimistic: they check only what they must to never accept bad
input. An exception makes the caller fall back, ultimately to the checked codec, which
explains the failure with its JSON path (or, if a fast path was merely too strict,
decodes the input).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from otelkit.collector.pdata._otlpjson_checked import (
    HEX_ID_FIELDS,
    INT_RANGES,
    SMALL_VARINTS,
    double_to_json,
    enum_reader,
    field_tag,
    id_length_error,
    integer_reader,
    length_prefixed,
    message_codec,
    pack_double,
    pack_fixed32,
    pack_fixed64,
    pack_float,
    pack_sfixed32,
    pack_sfixed64,
    read_base64,
    read_double,
    to_base64,
    varint,
    zigzag,
)

Decoder = Callable[[Any], bytes]
Encoder = Callable[[Message], dict[str, Any]]

KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
# Attribute encodings remembered per attributes field and direction; a full cache is
# cleared. 16Ki entries hold the values that repeat in real traffic while keeping each
# cache to a few MiB when values never repeat.
CACHE_LIMIT = 1 << 14

F = FieldDescriptor
_FIXED_PACKERS = {
    F.TYPE_FIXED64: "pack_fixed64",
    F.TYPE_SFIXED64: "pack_sfixed64",
    F.TYPE_FIXED32: "pack_fixed32",
    F.TYPE_SFIXED32: "pack_sfixed32",
}
_VARINT_WRITERS = {
    F.TYPE_INT32: "varint",
    F.TYPE_INT64: "varint",
    F.TYPE_UINT32: "varint",
    F.TYPE_UINT64: "varint",
    F.TYPE_SINT32: "zigzag",
    F.TYPE_SINT64: "zigzag",
}
_SIXTY_FOUR_BITS = {
    F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64,
}  # fmt: skip
_LENGTH = "(SMALL[n] if n < 128 else varint(n))"
loads = msgspec.json.Decoder().decode
dumps = msgspec.json.Encoder().encode


class FastPathError(Exception):
    """The compiled decoder leaves this input to the checked one."""


def fail() -> NoReturn:
    raise FastPathError


# Attributes: the hot spot of every signal -----------------------------------------------
def raw_attributes_wire(
    items: list[msgspec.Raw], cache: dict[bytes, bytes], tag: bytes, decode_pair: Decoder
) -> list[bytes]:
    """The wire form of each key/value pair, remembered by its JSON text."""
    get = cache.get
    return [get(text := bytes(raw)) or _wire_miss(text, cache, tag, decode_pair) for raw in items]


def _wire_miss(text: bytes, cache: dict[bytes, bytes], tag: bytes, decode_pair: Decoder) -> bytes:
    body = string_pair_wire(text) or decode_pair(loads(text))
    n = len(body)
    encoded = tag + (SMALL_VARINTS[n] if n < 128 else varint(n)) + body
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[text] = encoded
    return encoded


# {"key":"...","value":{"stringValue":"..."}} as SDKs and this codec write it, no escapes
_STRING_PAIR = re.compile(
    rb'\{"key":"([^"\\\x00-\x1f]*)","value":\{"stringValue":"([^"\\\x00-\x1f]*)"\}\}'
)


def string_pair_wire(text: bytes) -> bytes:
    """Wire bytes of a compact string-valued pair read by a regular expression, or b""."""
    match = _STRING_PAIR.fullmatch(text)
    if match is None:
        return b""
    key, value = match.groups()
    any_value = b"\x0a" + _length(len(value)) + value
    return b"\x0a" + _length(len(key)) + key + b"\x12" + _length(len(any_value)) + any_value


def _length(n: int) -> bytes:
    return SMALL_VARINTS[n] if n < 128 else varint(n)


def attributes_json(
    items: Any, cache: dict[bytes, dict[str, Any]], encode_pair: Encoder
) -> list[dict[str, Any]]:
    """JSON of key/value pairs, remembered by their wire bytes (the dicts are shared)."""
    get = cache.get
    return [
        get(raw := pair.SerializeToString()) or _json_miss(pair, raw, cache, encode_pair)
        for pair in items
    ]


def _json_miss(
    pair: Message, raw: bytes, cache: dict[bytes, dict[str, Any]], encode_pair: Encoder
) -> dict[str, Any]:
    encoded = encode_pair(pair)
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[raw] = encoded
    return encoded


def raw_attributes_json(
    items: Any, cache: dict[bytes, bytes], encode_raw: Callable[[bytes], bytes]
) -> msgspec.Raw:
    """JSON of key/value pairs given as their wire bytes (a shadow's ``repeated bytes``).

    The cache holds each pair's JSON text, and the list goes to the serializer as one
    pre-encoded fragment.
    """
    get = cache.get
    pairs = [get(raw) or _raw_json_miss(raw, cache, encode_raw) for raw in items]
    return msgspec.Raw(b"[" + b",".join(pairs) + b"]")


def _raw_json_miss(
    raw: bytes, cache: dict[bytes, bytes], encode_raw: Callable[[bytes], bytes]
) -> bytes:
    encoded = string_pair_json(raw) or encode_raw(raw)
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[raw] = encoded
    return encoded


_NEEDS_ESCAPE = re.compile(rb'["\\\x00-\x1f]')


def string_pair_json(raw: bytes) -> bytes:
    """JSON text of a key/value pair with a short string value, from its bytes directly.

    Wire form: ``0x0A len key 0x12 len (0x0A len value)`` with every length below 128;
    anything else (or any extra byte) returns b"" for the general path. Protobuf strings
    are valid UTF-8, so text without quotes, backslashes or control characters is
    copied into the JSON as it is.
    """
    try:
        at = raw[1] + 2  # where the AnyValue field starts
        size = raw[at + 1]
        if not (
            raw[0] == 0x0A and at < 130 and raw[at] == 0x12 and raw[at + 2] == 0x0A
            and size < 128 and size == raw[at + 3] + 2 == len(raw) - at - 2
        ):  # fmt: skip
            return b""
    except IndexError:
        return b""
    key, value = raw[2:at], raw[at + 4 :]
    if _NEEDS_ESCAPE.search(key) or _NEEDS_ESCAPE.search(value):
        return dumps({"key": key.decode(), "value": {"stringValue": value.decode()}})
    return b'{"key":"' + key + b'","value":{"stringValue":"' + value + b'"}}'


def negative_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) < 0


# Code generation ----------------------------------------------------------------------
class _Generator:
    """Writes the source of every message type's decoder and encoder, then compiles it."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "SMALL": SMALL_VARINTS, "varint": varint, "zigzag": zigzag, "fail": fail,
            "pack_double": pack_double, "pack_float": pack_float,
            "pack_fixed64": pack_fixed64, "pack_sfixed64": pack_sfixed64,
            "pack_fixed32": pack_fixed32, "pack_sfixed32": pack_sfixed32,
            "read_double": read_double, "read_base64": read_base64,
            "length_prefixed": length_prefixed, "to_base64": to_base64,
            "double_to_json": double_to_json, "negative_zero": negative_zero,
            "attributes_json": attributes_json, "raw_attributes_wire": raw_attributes_wire,
            "raw_attributes_json": raw_attributes_json,
            "loads": loads, "id_error": _raise_id_error,
        }  # fmt: skip
        self.lines: list[str] = []
        self.done: set[str] = set()
        self.recursive: set[str] = set()
        self.shadow_lists: set[str] = set()  # "message.field" of shadow key/value lists

    def constant(self, value: Any) -> str:
        name = f"c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def add(self, descriptor: Descriptor) -> None:
        if descriptor.full_name in self.done:
            return
        self.done.add(descriptor.full_name)
        if _reaches(descriptor, descriptor.full_name, set()):
            self.recursive.add(descriptor.full_name)
        self._decoder(descriptor)
        self._encoder(descriptor)
        for field in descriptor.fields:
            if field.message_type is not None:
                self.add(field.message_type)

    def add_shadow(self, descriptor: Descriptor, lists: set[str]) -> None:
        """Encoders of a shadow type, whose key/value lists (``lists``) are bytes."""
        self.shadow_lists |= lists
        if descriptor.full_name in self.done:
            return
        self.done.add(descriptor.full_name)
        self._encoder(descriptor)
        for field in descriptor.fields:
            if field.message_type is not None:
                self.add_shadow(field.message_type, lists)

    def compile(self, roots: list[Descriptor]) -> dict[str, Any]:
        for root in roots:
            self._struct(root)
        exec(compile("\n".join(self.lines), "<otlp_json compiled>", "exec"), self.namespace)
        return self.namespace

    # Structs and their wire writers ---------------------------------------------------
    def _struct(self, descriptor: Descriptor) -> type[msgspec.Struct]:
        """The Struct of a non-recursive message type (recursive ones stay Raw)."""
        name = struct_name(descriptor)
        if name in self.namespace:
            return self.namespace[name]  # type: ignore[no-any-return]
        fields = [(f.name, self._struct_type(f), None) for f in descriptor.fields]
        struct = msgspec.defstruct(
            name, fields, rename={f.name: f.json_name for f in descriptor.fields},
            forbid_unknown_fields=True, gc=False,
        )  # fmt: skip
        self.namespace[name] = struct
        self._wire(descriptor)
        return struct

    def _struct_type(self, field: FieldDescriptor) -> Any:
        kind = field.type
        item: Any
        if field.message_type is not None:
            recursive = field.message_type.full_name in self.recursive
            item = msgspec.Raw if recursive else self._struct(field.message_type)
        elif kind in (F.TYPE_STRING, F.TYPE_BYTES):
            item = str
        elif kind == F.TYPE_BOOL:
            item = bool
        elif kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            item = float | str
        else:
            item = int | str
        if field.is_repeated:
            return list[item] | None
        return item if item is msgspec.Raw else item | None  # Raw takes no union

    def _wire(self, descriptor: Descriptor) -> None:
        self.lines += [
            f"def {wire_name(descriptor)}(obj):",
            "    parts = []",
            "    add = parts.append",
        ]
        for field in descriptor.fields:
            self.lines.append(f"    v = obj.{field.name}")
            self.lines.append("    if v is not None:")
            self.lines += ["        " + line for line in self._wire_field(field)]
        self.lines += ['    return b"".join(parts)', ""]

    def _wire_field(self, field: FieldDescriptor) -> list[str]:
        message = field.message_type
        if message is None or message.full_name not in self.recursive:
            # the same code as for dicts, with Structs for messages
            lines = self._decode_field(field)
            if message is not None:
                lines = [line.replace(decoder_name(message), wire_name(message)) for line in lines]
            return lines
        tag = self.constant(field_tag(field.number, 2))
        decoder = decoder_name(message)
        if field.is_repeated and message.full_name == KEY_VALUE:
            cache = self.constant({})
            return [f"parts += raw_attributes_wire(v, {cache}, {tag}, {decoder})"]
        encode_one = [f"b = {decoder}(loads(x))", "n = len(b)", f"add({tag} + {_LENGTH} + b)"]
        if not field.is_repeated:
            return ["x = v", *encode_one]
        return ["for x in v:"] + ["    " + line for line in encode_one]

    # Decoders ------------------------------------------------------------------------
    def _decoder(self, descriptor: Descriptor) -> None:
        keys = self.constant(frozenset(field.json_name for field in descriptor.fields))
        checked = self.constant(message_codec(descriptor).wire)
        self.lines += [
            f"def {decoder_name(descriptor)}(obj):",
            f"    if type(obj) is not dict or not {keys}.issuperset(obj):",
            f"        return {checked}(obj)",
            "    parts = []",
            "    add = parts.append",
        ]
        for field in descriptor.fields:
            self.lines.append(f"    v = obj.get({field.json_name!r})")
            self.lines.append("    if v is not None:")
            self.lines += ["        " + line for line in self._decode_field(field)]
        self.lines += ['    return b"".join(parts)', ""]

    def _decode_field(self, field: FieldDescriptor) -> list[str]:
        tag = field_tag(field.number, 2 if field.is_repeated else _wire_type(field))
        if field.message_type is not None:
            return self._decode_message_field(field, tag)
        if field.is_repeated:
            item = self._scalar_bytes(field, "x")
            if _wire_type(field) == 2:  # strings and bytes repeat field by field
                return [
                    "if type(v) is not list:",
                    "    fail()",
                    "for x in v:",
                    f"    add({self.constant(tag)} + {item})",
                ]
            return [
                "if type(v) is not list:",
                "    fail()",
                f'b = b"".join([{item} for x in v])',
                "n = len(b)",
                f"add({self.constant(tag)} + {_LENGTH} + b)",
            ]
        size = HEX_ID_FIELDS.get(field.name) if field.type == F.TYPE_BYTES else None
        if size is not None:
            prefix = self.constant(tag + varint(size))
            return [
                'if v != "":',
                "    b = bytes.fromhex(v)",
                f"    if len(b) != {size} or len(v) != {size * 2}:",
                "        fail()",
                f"    add({prefix} + b)",
            ]
        if field.type == F.TYPE_STRING:
            return ["b = v.encode()", "n = len(b)", f"add({self.constant(tag)} + {_LENGTH} + b)"]
        return [f"add({self.constant(tag)} + {self._scalar_bytes(field, 'v')})"]

    def _decode_message_field(self, field: FieldDescriptor, tag: bytes) -> list[str]:
        decoder = decoder_name(field.message_type)
        encode_one = [
            f"b = {decoder}(x)",
            "n = len(b)",
            f"add({self.constant(tag)} + {_LENGTH} + b)",
        ]
        if not field.is_repeated:
            return ["x = v", *encode_one]
        return ["if type(v) is not list:", "    fail()", "for x in v:"] + [
            "    " + line for line in encode_one
        ]

    def _scalar_bytes(self, field: FieldDescriptor, var: str) -> str:
        """An expression for the wire bytes of scalar ``var`` (without the tag)."""
        kind = field.type
        if kind == F.TYPE_STRING:
            return f"length_prefixed({var}.encode())"
        if kind == F.TYPE_BYTES:
            return f"length_prefixed(read_base64({var}))"
        if kind == F.TYPE_BOOL:
            return f'(b"\\x01" if {var} is True else b"\\x00" if {var} is False else fail())'
        if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            pack = "pack_double" if kind == F.TYPE_DOUBLE else "pack_float"
            return f"{pack}({var} if type({var}) is float else read_double({var}))"
        if kind == F.TYPE_ENUM:
            low, high, read = -(1 << 31), (1 << 31) - 1, enum_reader(field)
        else:
            low, high, what = INT_RANGES[kind]
            read = integer_reader(low, high, what)
        reader = self.constant(read)
        if kind in _FIXED_PACKERS:  # struct.pack refuses values out of range
            # 64-bit integers usually come as decimal strings, parsed here without a call
            value = f"int({var}) if type({var}) is str else {var} if type({var}) is int"
            return f"{_FIXED_PACKERS[kind]}({value} else {reader}({var}))"
        writer = _VARINT_WRITERS.get(kind, "varint")
        in_range = f"type({var}) is int and {low} <= {var} <= {high}"
        return f"{writer}({var} if {in_range} else {reader}({var}))"

    # Encoders ------------------------------------------------------------------------
    def _encoder(self, descriptor: Descriptor) -> None:
        self.lines += [f"def {encoder_name(descriptor)}(m):", "    out = {}"]
        for oneof in descriptor.oneofs:
            if len(oneof.fields) > 1:
                self.lines += self._encode_oneof(oneof.name, oneof.fields)
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and len(oneof.fields) > 1:
                continue
            self.lines += ["    " + line for line in self._encode_field(field)]
        self.lines += ["    return out", ""]

    def _encode_oneof(self, name: str, fields: Any) -> list[str]:
        lines = [f"    w = m.WhichOneof({name!r})"]
        for index, field in enumerate(fields):
            keyword = "if" if index == 0 else "elif"
            lines.append(f"    {keyword} w == {field.name!r}:")
            lines.append(f"        v = m.{field.name}")
            lines.append(f"        out[{field.json_name!r}] = {self._json_value(field, 'v')}")
        return lines

    def _encode_field(self, field: FieldDescriptor) -> list[str]:
        set_it = f"    out[{field.json_name!r}] = "
        if field.is_repeated:
            if f"{field.containing_type.full_name}.{field.name}" in self.shadow_lists:
                cache, decode = self.constant({}), self.constant(self._key_value_from_bytes())
                value = f"raw_attributes_json(v, {cache}, {decode})"
            elif field.message_type is not None and field.message_type.full_name == KEY_VALUE:
                cache, encoder = self.constant({}), encoder_name(field.message_type)
                value = f"attributes_json(v, {cache}, {encoder})"
            else:
                item = self._json_value(field, "x")
                value = "list(v)" if item == "x" else f"[{item} for x in v]"
            return [f"v = m.{field.name}", "if v:", set_it + value]
        if field.has_presence:  # messages and proto3 optional scalars
            value = self._json_value(field, "v")
            return [f"if m.HasField({field.name!r}):", f"    v = m.{field.name}", set_it + value]
        test = "v or negative_zero(v)" if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT) else "v"
        return [f"v = m.{field.name}", f"if {test}:", set_it + self._json_value(field, "v")]

    def _key_value_from_bytes(self) -> Callable[[bytes], bytes]:
        """JSON text of one key/value pair from its wire bytes, by KeyValue's encoder."""
        parse = _message_class(KEY_VALUE).FromString
        name = "encode_" + KEY_VALUE.replace(".", "_")
        namespace = self.namespace

        def encode(raw: bytes) -> bytes:
            return dumps(namespace[name](parse(raw)))

        return encode

    def _json_value(self, field: FieldDescriptor, var: str) -> str:
        """An expression for the JSON form of one value of ``field``."""
        kind = field.type
        if field.message_type is not None:
            return f"{encoder_name(field.message_type)}({var})"
        if kind == F.TYPE_BYTES:
            size = HEX_ID_FIELDS.get(field.name)
            if size is None:
                return f"to_base64({var})"
            return f"({var}.hex() if len({var}) == {size} else id_error({var}, {size}))"
        if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return f"({var} if {var} - {var} == 0 else double_to_json({var}))"
        if kind in _SIXTY_FOUR_BITS:
            return f"str({var})"
        return var


def _raise_id_error(raw: bytes, size: int) -> NoReturn:
    raise id_length_error(raw, size)


def _wire_type(field: FieldDescriptor) -> int:
    kind = field.type
    if field.message_type is not None or kind in (F.TYPE_STRING, F.TYPE_BYTES):
        return 2
    if kind in (F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return 1
    if kind in (F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return 5
    return 0


def _reaches(descriptor: Descriptor, target: str, seen: set[str]) -> bool:
    """Whether a message of ``target`` type can nest inside ``descriptor`` (recursion)."""
    for field in descriptor.fields:
        sub = field.message_type
        if sub is None or sub.full_name in seen:
            continue
        if sub.full_name == target:
            return True
        seen.add(sub.full_name)
        if _reaches(sub, target, seen):
            return True
    return False


def _identifier(descriptor: Descriptor) -> str:
    full_name: str = descriptor.full_name
    return full_name.replace(".", "_")


def struct_name(descriptor: Descriptor) -> str:
    return "Struct_" + _identifier(descriptor)


def wire_name(descriptor: Descriptor) -> str:
    return "wire_" + _identifier(descriptor)


def decoder_name(descriptor: Descriptor) -> str:
    return "decode_" + _identifier(descriptor)


def encoder_name(descriptor: Descriptor) -> str:
    return "encode_" + _identifier(descriptor)


def _message_class(full_name: str) -> type[Message]:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


# Shadow types ---------------------------------------------------------------------------
SHADOW_PACKAGE = "otelkit.shadow."


class _ShadowPool:
    """Copies of the OTLP files, in a pool of their own, with key/value lists as bytes."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.lists: set[str] = set()
        self._files: set[str] = set()

    def shadow_of(self, descriptor: Descriptor) -> Descriptor:
        self._add_file(descriptor.file)
        return self.pool.FindMessageTypeByName(SHADOW_PACKAGE + descriptor.full_name)

    def _add_file(self, file: FileDescriptor) -> None:
        if file.name in self._files:
            return
        for dependency in file.dependencies:
            self._add_file(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        proto.name = "otelkit_shadow/" + proto.name
        proto.package = SHADOW_PACKAGE + proto.package
        proto.dependency[:] = ["otelkit_shadow/" + name for name in proto.dependency]
        proto.ClearField("service")
        proto.ClearField("options")
        for message in proto.message_type:
            self._rewrite(message, proto.package)
        self.pool.Add(proto)
        self._files.add(file.name)

    def _rewrite(self, message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        full_name = f"{scope}.{message.name}"
        message.ClearField("options")
        for field in message.field:
            if field.type_name == "." + KEY_VALUE and field.label == field.LABEL_REPEATED:
                field.type = field.TYPE_BYTES
                field.ClearField("type_name")
                self.lists.add(f"{full_name}.{field.name}")
            elif field.type_name.startswith(".opentelemetry."):
                field.type_name = "." + SHADOW_PACKAGE + field.type_name[1:]
        for nested in message.nested_type:
            self._rewrite(nested, full_name)


class RootCodec:
    """The compiled functions of one request type."""

    def __init__(self, namespace: dict[str, Any], root: Descriptor, shadow: Descriptor) -> None:
        self.struct_decoder = msgspec.json.Decoder(namespace[struct_name(root)])
        self.wire: Callable[[Any], bytes] = namespace[wire_name(root)]
        self.decode: Decoder = namespace[decoder_name(root)]
        self._shadow_parse = message_factory.GetMessageClass(shadow).FromString
        self._shadow_encode: Encoder = namespace[encoder_name(shadow)]

    def json_to_wire(self, data: bytes | str) -> bytes:
        """Wire bytes straight from JSON text; any exception means: take the slow road."""
        return self.wire(self.struct_decoder.decode(data))

    def encode(self, message: Message) -> dict[str, Any]:
        """The JSON-ready dict of a request, read through its shadow."""
        return self._shadow_encode(self._shadow_parse(message.SerializeToString()))


def compile_codecs(roots: list[Descriptor]) -> dict[str, RootCodec]:
    """The compiled codec of each root message type, by full name."""
    generator, shadows = _Generator(), _ShadowPool()
    shadow_roots = [shadows.shadow_of(root) for root in roots]
    for root, shadow in zip(roots, shadow_roots, strict=True):
        generator.add(root)
        generator.add_shadow(shadow, shadows.lists)
    namespace = generator.compile(roots)
    return {
        root.full_name: RootCodec(namespace, root, shadow)
        for root, shadow in zip(roots, shadow_roots, strict=True)
    }
