"""OTLP ``AnyValue`` as text: the one rendering that labels, matchers and samplers share.

It follows the upstream collector's ``pcommon.Value.AsString``: strings as they are,
booleans ``true``/``false``, integers in decimal, bytes in base64, lists and maps as
compact JSON; doubles as Prometheus writes them (integers without a fraction, ``NaN``,
``+Inf``), so a budget matcher, a sampling policy and a span-metrics label agree on the
text of the same attribute.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any


def any_value_text(value: Any) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_float(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind is None:
        return ""
    return json.dumps(_any_value_json(value), separators=(",", ":"))


def format_float(value: float) -> str:
    """Integers without a fraction, ``+Inf``, ``-Inf``, ``NaN``; otherwise the shortest repr."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _any_value_json(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value_json(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value_json(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "double_value" and not math.isfinite(value.double_value):
        return format_float(value.double_value)
    return getattr(value, kind) if kind else None
