"""Request-body decompression with a hard cap on the output size.

Every decoder stops as soon as the output would pass ``limit`` bytes, so a compression
bomb (a few MB that inflate to gigabytes) is refused after inflating at most ``limit``
bytes, never all of it. Encodings follow the upstream collector's HTTP server: gzip,
deflate (zlib or raw), zstd, snappy (block format, or the framed format when the body
starts with the framing magic; ``x-snappy-framed`` names the latter explicitly) and lz4
(frame format).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cramjam
import zstandard

SUPPORTED_ENCODINGS = ("gzip", "deflate", "zstd", "snappy", "x-snappy-framed", "lz4")
_SNAPPY_FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"
# Worst-case expansion per compressed byte: output buffers for the cramjam decoders are
# sized from it, so an honest body never needs the full ``limit`` allocated.
_SNAPPY_MAX_RATIO = 32
_LZ4_MAX_RATIO = 256
_ZSTD_MAX_WINDOW = 1 << 25
_READ_SIZE = 1 << 20


class BodyTooLargeError(Exception):
    """The decompressed body would pass the size limit."""


class CorruptBodyError(Exception):
    """The body is not valid data in its declared encoding."""


class UnsupportedEncodingError(Exception):
    """The Content-Encoding is not one this receiver decodes."""


def decompress(encoding: str, data: bytes, limit: int) -> bytes:
    """``data`` decoded from ``encoding`` (a Content-Encoding token), at most ``limit`` bytes."""
    token = encoding.strip().lower()
    if token in ("", "identity"):
        return data
    decoder = _DECODERS.get(token)
    if decoder is None:
        raise UnsupportedEncodingError(
            f"unsupported Content-Encoding {encoding!r}; supported: "
            f"{', '.join(SUPPORTED_ENCODINGS)} (or none)"
        )
    return decoder(data, limit)


def _gzip(data: bytes, limit: int) -> bytes:
    return _inflate(data, limit, zlib.MAX_WBITS | 16, "gzip")


def _deflate(data: bytes, limit: int) -> bytes:
    """HTTP ``deflate`` is zlib-wrapped, but some clients send raw deflate: accept both."""
    try:
        return _inflate(data, limit, zlib.MAX_WBITS, "deflate")
    except CorruptBodyError:
        return _inflate(data, limit, -zlib.MAX_WBITS, "deflate")


def _inflate(data: bytes, limit: int, wbits: int, name: str) -> bytes:
    """Inflate every concatenated member, never producing more than ``limit + 1`` bytes."""
    out: list[bytes] = []
    size = 0
    pending = data
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while True:
                piece = inflater.decompress(pending, limit + 1 - size)
                size += len(piece)
                if size > limit:
                    raise BodyTooLargeError(f"{name} body inflates past the {limit}-byte limit")
                out.append(piece)
                pending = inflater.unconsumed_tail
                if inflater.eof or not pending:
                    break
            if not inflater.eof:
                raise CorruptBodyError(f"{name} body is truncated")
            pending = inflater.unused_data
            if not pending or wbits < 0:
                break
    except zlib.error as exc:
        raise CorruptBodyError(f"{name} body cannot be decompressed: {exc}") from exc
    return b"".join(out)


def _zstd(data: bytes, limit: int) -> bytes:
    declared = _zstd_content_size(data)
    if declared is not None and declared > limit:
        raise BodyTooLargeError(f"zstd body declares {declared} bytes, over the {limit}-byte limit")
    out: list[bytes] = []
    size = 0
    try:
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        with decompressor.stream_reader(data, read_across_frames=True) as reader:
            while piece := reader.read(min(_READ_SIZE, limit + 1 - size)):
                size += len(piece)
                if size > limit:
                    raise BodyTooLargeError(f"zstd body inflates past the {limit}-byte limit")
                out.append(piece)
    except zstandard.ZstdError as exc:
        raise CorruptBodyError(f"zstd body cannot be decompressed: {exc}") from exc
    return b"".join(out)


def _zstd_content_size(data: bytes) -> int | None:
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        return None
    return size if size >= 0 else None


def _snappy(data: bytes, limit: int) -> bytes:
    if data.startswith(_SNAPPY_FRAMED_MAGIC):
        return _snappy_framed(data, limit)
    try:
        declared = cramjam.snappy.decompress_raw_len(data)
        if declared > limit:
            raise BodyTooLargeError(
                f"snappy body declares {declared} bytes, over the {limit}-byte limit"
            )
        return bytes(cramjam.snappy.decompress_raw(data))
    except cramjam.DecompressionError as exc:
        raise CorruptBodyError(f"snappy body cannot be decompressed: {exc}") from exc


def _snappy_framed(data: bytes, limit: int) -> bytes:
    return _into_buffer(cramjam.snappy.decompress_into, data, limit, _SNAPPY_MAX_RATIO, "snappy")


def _lz4(data: bytes, limit: int) -> bytes:
    return _into_buffer(cramjam.lz4.decompress_into, data, limit, _LZ4_MAX_RATIO, "lz4")


def _into_buffer(
    decode_into: Callable[[bytes, bytearray], int],
    data: bytes,
    limit: int,
    max_ratio: int,
    name: str,
) -> bytes:
    """Decode into a fixed buffer one byte over the limit: filling it means too large."""
    capacity = min(limit + 1, len(data) * max_ratio + 65536)
    buffer = bytearray(capacity)
    try:
        written = decode_into(data, buffer)
    except cramjam.DecompressionError as exc:
        if "whole buffer" in str(exc):
            raise BodyTooLargeError(f"{name} body inflates past the {limit}-byte limit") from exc
        raise CorruptBodyError(f"{name} body cannot be decompressed: {exc}") from exc
    if written > limit:
        raise BodyTooLargeError(f"{name} body inflates past the {limit}-byte limit")
    return bytes(buffer[:written])


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "zstd": _zstd,
    "snappy": _snappy,
    "x-snappy-framed": _snappy_framed,
    "lz4": _lz4,
}
