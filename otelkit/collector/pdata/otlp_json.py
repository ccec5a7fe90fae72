"""OTLP/JSON: the JSON encoding of OTLP export requests, fast.

OTLP/JSON is protobuf's JSON mapping with three OTLP rules on top: trace and span IDs
are hex strings (not base64), enums are integers, and field names are lowerCamelCase.
protobuf's ``json_format`` gets the IDs wrong and runs at a few thousand spans a second,
so this module has its own codec, generated once from the protobuf descriptors:

* decoding turns the parsed JSON straight into protobuf *wire bytes* and lets the C
  parser (``ParseFromString``) build the message, so Python never sets a field;
* encoding reads the fields into plain dicts for the C JSON serializer (msgspec);
* each message type has straight-line code for both directions
  (``_otlpjson_compiled``); anything unusual, and every error, goes through the checked
  codec (``_otlpjson_checked``), which names the JSON path that failed;
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

Hostile input costs bounded time: every path is linear in the input (a bad value deep in
nested arrays is found in one pass, nesting stops at protobuf's depth limit), and input
over :data:`MAX_REQUEST_BYTES` is refused before it is parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from google.protobuf.message import DecodeError

from otelkit.collector.pdata._otlpjson_checked import (
    JsonPathError,
    describe,
    json_type,
    message_codec,
)
from otelkit.collector.pdata._otlpjson_compiled import RootCodec, compile_codecs
from otelkit.collector.pdata.signals import Payload, Signal

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""The largest OTLP/JSON text decoded (receivers have their own, smaller, limits)."""

_loads = msgspec.json.Decoder().decode
_dumps = msgspec.json.Encoder().encode

__all__ = [
    "decode_any",
    "decode_request",
    "encode_request",
    "iter_file",
    "signal_of_json",
]

# The top-level key of each signal's request.
_TOP_KEYS = {
    "resourceSpans": Signal.TRACES,
    "resource_spans": Signal.TRACES,
    "resourceMetrics": Signal.METRICS,
    "resource_metrics": Signal.METRICS,
    "resourceLogs": Signal.LOGS,
    "resource_logs": Signal.LOGS,
}
_CODECS = compile_codecs([signal.request_type.DESCRIPTOR for signal in Signal])
_BY_SIGNAL: dict[Signal, RootCodec] = {
    signal: _CODECS[signal.request_type.DESCRIPTOR.full_name] for signal in Signal
}
# How each signal's request starts, to pick the decoder before parsing.
_PREFIXES = {
    b'{"resourceSpans"': Signal.TRACES,
    b'{"resourceMetrics"': Signal.METRICS,
    b'{"resourceLogs"': Signal.LOGS,
}
_CHECKED = {s: message_codec(s.request_type.DESCRIPTOR) for s in Signal}


# Public API ---------------------------------------------------------------------------
def decode_request(signal: Signal, data: bytes | str, limit: int = MAX_REQUEST_BYTES) -> Payload:
    """Parse one OTLP/JSON export request of ``signal``; ValueError names what is wrong."""
    _check_size(data, limit)
    try:
        return _parse_wire(signal, _BY_SIGNAL[signal].json_to_wire(data))
    except Exception:  # anything unusual or wrong: parse to dicts, then explain
        return _from_object(signal, _parse_json(data))


def decode_any(data: bytes | str, limit: int = MAX_REQUEST_BYTES) -> Payload:
    """Parse one OTLP/JSON export request of whichever signal its top-level key names."""
    _check_size(data, limit)
    head = data[:20].encode() if isinstance(data, str) else bytes(data[:20])
    for prefix, signal in _PREFIXES.items():
        if head.startswith(prefix):
            return decode_request(signal, data)
    obj = _parse_json(data)
    return _from_object(signal_of_json(obj), obj)


def encode_request(payload: Payload) -> bytes:
    """OTLP/JSON of an export request, as compact UTF-8 bytes without a newline."""
    return _dumps(_CODECS[payload.DESCRIPTOR.full_name].encode(payload))


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
        f"got {describe(obj)}"
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


def _check_size(data: bytes | str, limit: int) -> None:
    if len(data) > limit:
        raise ValueError(f"{len(data)} bytes of OTLP/JSON is over the {limit}-byte limit")


def _parse_json(data: bytes | str) -> Any:
    try:
        return _loads(data)
    except ValueError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _from_object(signal: Signal, obj: Any) -> Payload:
    if type(obj) is not dict:
        raise ValueError(
            f"expected a JSON object at the top level ({signal.request_type.__name__}), "
            f"got {json_type(obj)}"
        )
    return _parse_wire(signal, _to_wire(signal, obj))


def _parse_wire(signal: Signal, raw: bytes) -> Payload:
    payload = signal.new_request()
    try:
        payload.ParseFromString(raw)
    except DecodeError:  # only nesting beyond protobuf's depth limit gets here
        raise ValueError(
            "values nested too deeply: protobuf allows at most 100 levels of messages"
        ) from None
    return payload


def _to_wire(signal: Signal, obj: dict[str, Any]) -> bytes:
    """The compiled dict decoder, or the checked one when the compiled one gives up."""
    try:
        return _BY_SIGNAL[signal].decode(obj)
    except Exception:
        pass
    try:
        return _CHECKED[signal].wire(obj)
    except JsonPathError as error:
        raise error.located() from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
