"""Bounded decompression of request bodies: every encoding round-trips, none can explode."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import cramjam
import pytest
import zstandard

from otelkit.collector.receivers.otlp.decompress import (
    BodyTooLargeError,
    CorruptBodyError,
    UnsupportedEncodingError,
    decompress,
)

DATA = b"".join(f"span-{i:05d} http.route=/orders/{{id}} ".encode() for i in range(4000))


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "gzip-two-members": ("gzip", lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:])),
    "deflate-zlib": ("deflate", zlib.compress),
    "deflate-raw": ("deflate", _raw_deflate),
    "zstd": ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    "zstd-two-frames": (
        "zstd",
        lambda d: (
            zstandard.ZstdCompressor().compress(d[:1000])
            + zstandard.ZstdCompressor().compress(d[1000:])
        ),
    ),
    "snappy-block": ("snappy", lambda d: bytes(cramjam.snappy.compress_raw(d))),
    "snappy-framed-as-snappy": ("snappy", lambda d: bytes(cramjam.snappy.compress(d))),
    "x-snappy-framed": ("x-snappy-framed", lambda d: bytes(cramjam.snappy.compress(d))),
    "lz4": ("lz4", lambda d: bytes(cramjam.lz4.compress(d))),
}


@pytest.mark.parametrize("case", sorted(ENCODERS))
def test_each_encoding_round_trips_and_respects_the_limit(case: str) -> None:
    encoding, encode = ENCODERS[case]
    body = encode(DATA)

    assert decompress(encoding.upper(), body, len(DATA)) == DATA
    with pytest.raises(BodyTooLargeError, match=f"{len(DATA) - 1}-byte limit"):
        decompress(encoding, body, len(DATA) - 1)


@pytest.mark.parametrize("case", sorted(ENCODERS))
def test_corrupt_bodies_are_reported_as_such(case: str) -> None:
    encoding, encode = ENCODERS[case]
    body = bytearray(encode(DATA))
    body[len(body) // 2 : len(body) // 2 + 16] = b"\x00\xff" * 8
    with pytest.raises((CorruptBodyError, BodyTooLargeError)):
        decompress(encoding, bytes(body[: len(body) - 7]), len(DATA))


def test_identity_and_unknown_encodings() -> None:
    assert decompress("", b"abc", 3) == b"abc"
    assert decompress("identity", b"abc", 3) == b"abc"
    with pytest.raises(UnsupportedEncodingError, match=r"'br'.*gzip, deflate, zstd"):
        decompress("br", b"abc", 3)


def test_a_zstd_frame_declaring_a_huge_size_is_refused_before_decoding() -> None:
    body = zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024))
    with pytest.raises(BodyTooLargeError, match="declares 67108864 bytes"):
        decompress("zstd", body, 1024 * 1024)


def test_a_snappy_block_declaring_a_huge_size_is_refused_before_decoding() -> None:
    body = bytes(cramjam.snappy.compress_raw(bytes(8 * 1024 * 1024)))
    with pytest.raises(BodyTooLargeError, match="declares 8388608 bytes"):
        decompress("snappy", body, 1024 * 1024)
