"""``raw``: float32 or float16 samples, optionally zstd-compressed. The reference point.

float32 storage is lossless for float32 input; float16 halves the size and is what
most split-computing papers call "uncompressed" transmission.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError
from ..lossless import check_zstd_level, zstd_compress, zstd_decompress
from .base import Codec, Param

_DTYPES = ("float32", "float16")


class Raw(Codec):
    """Store samples as little-endian float32 / float16, then zstd at `zstd` level (0 = off).

    >>> import numpy as np
    >>> codec = Raw(dtype="float16", zstd=3)
    >>> x = np.ones((2, 4, 4), np.float32)
    >>> payload, info = codec.encode(x)
    >>> bool((codec.decode(payload, x.shape, info) == x).all())
    True
    """

    codec_id = "raw"
    params = (
        Param("dtype", str, "Storage dtype.", choices=_DTYPES),
        Param("zstd", int, "zstd level for the payload, 1-22 (0 = off)."),
    )
    rate_points = {
        "paper": [("default", {}), ("float16", {"dtype": "float16"}),
                  ("float16+zstd", {"dtype": "float16", "zstd": 19})],
        "quick": [("default", {}), ("float16", {"dtype": "float16"})],
    }

    def __init__(self, dtype: str = "float32", zstd: int = 0):
        if dtype not in _DTYPES:
            raise InvalidInputError(f"raw dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.zstd = check_zstd_level(zstd)

    @property
    def is_lossless(self) -> bool:
        return self.dtype == "float32"

    def _storage(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    def encode(self, sample):
        if self.dtype == "float16":
            # float16 overflows to inf beyond 65504; clamp so the decoded tensor stays finite.
            limit = np.finfo(np.float16).max
            sample = np.clip(sample, -limit, limit)
        data = np.ascontiguousarray(sample, dtype=self._storage()).tobytes()
        return (zstd_compress(data, self.zstd) if self.zstd else data), {}

    def decode(self, payload, shape, info):
        expected = int(np.prod(shape)) * self._storage().itemsize
        data = zstd_decompress(payload, expected) if self.zstd else payload
        if len(data) != expected:
            raise CorruptStreamError(f"raw payload holds {len(data)} bytes, expected {expected}")
        return np.frombuffer(data, dtype=self._storage()).reshape(shape).astype(np.float32)
