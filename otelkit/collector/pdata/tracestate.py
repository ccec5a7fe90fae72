"""How many spans a sampled span stands for, from its W3C ``tracestate``.

OpenTelemetry's consistent probability sampling records the sampling decision in the
``ot`` entry of the trace state: ``th:<hex>`` is the rejection threshold T, 1 to 14 hex
digits of a 56-bit number with trailing zeros dropped (``th:c`` is 0xc0000000000000).
A span was kept with probability p = 1 - T / 2^56, so it stands for 1/p spans, its
*adjusted count*. ``th:0``, or no ``th`` at all, means the span was not sampled away:
its adjusted count is 1.
"""

from __future__ import annotations

RANDOMNESS_BITS = 56
_HEX_DIGITS = RANDOMNESS_BITS // 4
_ALL = 1 << RANDOMNESS_BITS
_LOWER_HEX = frozenset("0123456789abcdef")


class MalformedThresholdError(ValueError):
    """An ``ot`` entry whose ``th`` is not 1-14 lower-case hex digits."""


def adjusted_count(tracestate: str) -> float:
    """The number of spans a span with this trace state stands for (1 without ``th``).

    Raises :class:`MalformedThresholdError` when ``th`` is present but not valid."""
    threshold = _threshold(_ot_value(tracestate))
    if threshold is None or threshold == 0:
        return 1.0
    return _ALL / (_ALL - threshold)


def _ot_value(tracestate: str) -> str | None:
    """The value of the ``ot`` list member (members are ``key=value``, comma-separated,
    with optional spaces and tabs around them)."""
    for member in tracestate.split(","):
        key, sep, value = member.strip(" \t").partition("=")
        if sep and key == "ot":
            return value
    return None


def _threshold(ot: str | None) -> int | None:
    """T from the ``ot`` value's ``th`` sub-key (sub-keys are ``key:value``, separated by
    semicolons); None when there is none."""
    if ot is None:
        return None
    for entry in ot.split(";"):
        key, _, value = entry.partition(":")
        if key != "th":
            continue
        if not 0 < len(value) <= _HEX_DIGITS or not set(value) <= _LOWER_HEX:
            raise MalformedThresholdError(f"th:{value[:32]}")
        return int(value, 16) << (4 * (_HEX_DIGITS - len(value)))
    return None
