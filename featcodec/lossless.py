"""Lossless byte compression shared by the codecs (zstd), with bounded decompression."""

from __future__ import annotations

import io

import zstandard

from .errors import CorruptStreamError, InvalidInputError

MAX_ZSTD_LEVEL = 22
MAX_WINDOW = 1 << 27  # level 22's window: no frame featcodec writes needs more


def check_zstd_level(level: int) -> int:
    if not isinstance(level, int) or not 0 <= level <= MAX_ZSTD_LEVEL:
        raise InvalidInputError(f"zstd level must be an integer 0..{MAX_ZSTD_LEVEL} (0 = off), got {level!r}")
    return level


def zstd_compress(data: bytes, level: int) -> bytes:
    # No checksum or content size in the frame: the container already carries CRC32 and shape.
    params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=0, write_content_size=0)
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def zstd_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress a frame that must hold exactly `expected_size` bytes.

    Never allocates what a hostile frame declares: python-zstandard's one-shot `decompress`
    allocates the frame's declared content size whatever `max_output_size` says (a frame declaring
    1 TB is a MemoryError, 20 GB an out-of-memory kill), so this streams at most one byte more than
    expected, with the window bounded by what the highest level writes.
    """
    try:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        with decompressor.stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(expected_size + 1) if expected_size else reader.read(1)
    except zstandard.ZstdError as err:
        raise CorruptStreamError(f"zstd payload is corrupt: {err}") from err
    if len(out) != expected_size:
        raise CorruptStreamError(f"zstd payload holds {'more than ' if len(out) > expected_size else ''}"
                                 f"{min(len(out), expected_size)} bytes, expected {expected_size}")
    return out
