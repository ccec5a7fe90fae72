"""Config value types operators write as text: durations, sizes, endpoints.

Each is a pydantic ``Annotated`` type, so an error names the field's path and shows the
expected form (``200ms``, ``512MiB``, ``host:port``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_duration(value: Any) -> float:
    """Seconds from ``200ms``, ``1m30s``, ``7d``; bare ``0`` is allowed, other bare numbers not.

    Units are required (as in the upstream collector) because a bare ``5`` is ambiguous.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 200ms, 5s, 1m or 7d")
    if isinstance(value, int | float) and value == 0:
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(
        f"{value!r} is not a duration: expected a number with a unit, such as 200ms, 5s, "
        "1m30s or 7d (units: ns, us, ms, s, m, h, d)"
    )


def parse_size(value: Any) -> int:
    """Bytes from ``512MiB``, ``20MB``, ``1024`` (a bare integer is bytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match.group(2) or "B").lower()
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(
        f"{value!r} is not a size: expected bytes or a number with a unit, such as 512KiB, "
        "20MiB or 1GB"
    )


def parse_endpoint(value: Any) -> str:
    """``host:port`` with a port in 0..65535; IPv6 hosts in brackets."""
    if isinstance(value, str):
        host, sep, port = value.strip().rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535 and _valid_host(host):
            return value.strip()
    raise ValueError(
        f"{value!r} is not an endpoint: expected host:port, such as 0.0.0.0:4317, "
        "localhost:4318 or [::1]:4317"
    )


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        return ":" in host
    return bool(re.fullmatch(r"[A-Za-z0-9._-]*", host))


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``(host, port)`` of a validated endpoint; an empty host means all interfaces."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _secret_text(value: Any) -> Any:
    """YAML reads ``token: 123456`` as a number; a secret is text, and an error about it
    must never have to quote it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str | SecretStr):
        raise ValueError("expected text")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Endpoint = Annotated[str, BeforeValidator(parse_endpoint)]
Secret = Annotated[SecretStr, BeforeValidator(_secret_text)]
"""A password or token: shown as ``**********`` wherever the config is printed."""
