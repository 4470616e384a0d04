"""Lossless byte compression shared by the codecs (zstd), with bounded decompression."""

from __future__ import annotations

import zstandard

from .errors import CorruptStreamError, InvalidInputError

MAX_ZSTD_LEVEL = 22


def check_zstd_level(level: int) -> int:
    if not isinstance(level, int) or not 0 <= level <= MAX_ZSTD_LEVEL:
        raise InvalidInputError(f"zstd level must be an integer 0..{MAX_ZSTD_LEVEL} (0 = off), got {level!r}")
    return level


def zstd_compress(data: bytes, level: int) -> bytes:
    # No checksum or content size in the frame: the container already carries CRC32 and shape.
    params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=0, write_content_size=0)
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def zstd_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress a frame that must hold exactly `expected_size` bytes (never more is allocated)."""
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected_size)
    except zstandard.ZstdError as err:
        raise CorruptStreamError(f"zstd payload is corrupt: {err}") from err
    if len(out) != expected_size:
        raise CorruptStreamError(f"zstd payload holds {len(out)} bytes, expected {expected_size}")
    return out
