"""``uniform``: clip, uniform scalar quantization to N levels, zstd. The naive baseline.

This is what a careful user does by hand before reaching for a real feature codec;
every other codec should beat it. The lowest reconstruction level is the clip
minimum itself, so with ``clip=[0, hi]`` a ReLU zero decodes to exactly 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError
from ..lossless import check_zstd_level, zstd_compress, zstd_decompress
from .base import Codec, Param, parse_clip, side_numbers


class Uniform(Codec):
    """Uniform quantizer with `levels` reconstruction points spanning the clip range.

    >>> import numpy as np
    >>> codec = Uniform(levels=3, clip=[0.0, 2.0])
    >>> payload, info = codec.encode(np.array([[[0.0, 0.4, 0.6, 5.0]]], np.float32))
    >>> codec.decode(payload, (1, 1, 4), info).tolist()
    [[[0.0, 0.0, 1.0, 2.0]]]
    """

    codec_id = "uniform"
    params = (
        Param("levels", int, "Number of quantization levels."),
        Param("clip", str, "Clip range LO,HI (default: each sample's min and max)."),
        Param("zstd", int, "zstd level for the payload, 1-22 (0 = off)."),
    )
    rate_points = {
        "paper": [("default", {})] + [(f"levels={n}", {"levels": n}) for n in (4, 8, 16)],
        "quick": [("default", {}), ("levels=8", {"levels": 8})],
    }

    def __init__(self, levels: int = 8, clip: list[float] | None = None, zstd: int = 19):
        if not isinstance(levels, int) or not 2 <= levels <= 256:
            raise InvalidInputError(f"uniform levels must be an integer 2..256, got {levels!r}")
        self.levels = levels
        self.clip = parse_clip(clip)
        self.zstd = check_zstd_level(zstd)

    def encode(self, sample):
        if self.clip is None:
            lo, hi = float(sample.min()), float(sample.max())
            info = {"lo": lo, "hi": hi}
        else:
            (lo, hi), info = self.clip, {}
        step = (hi - lo) / (self.levels - 1)
        if step > 0:
            scaled = (np.clip(sample, lo, hi) - lo) * (1.0 / step)
            symbols = np.rint(scaled).astype(np.uint8)
        else:
            symbols = np.zeros(sample.shape, np.uint8)
        data = symbols.tobytes()
        return (zstd_compress(data, self.zstd) if self.zstd else data), info

    def validate(self, shape, info):
        if self.clip is None:
            side_numbers(info, "lo"), side_numbers(info, "hi")

    def decode(self, payload, shape, info):
        lo, hi = self.clip if self.clip is not None else (info["lo"], info["hi"])
        count = int(np.prod(shape))
        data = zstd_decompress(payload, count) if self.zstd else payload
        if len(data) != count:
            raise CorruptStreamError(f"uniform payload holds {len(data)} bytes, expected {count}")
        symbols = np.frombuffer(data, np.uint8).reshape(shape)
        if symbols.max(initial=0) >= self.levels:
            raise CorruptStreamError("uniform payload holds a symbol beyond the last level")
        table = (lo + (hi - lo) / (self.levels - 1) * np.arange(self.levels)).astype(np.float32)
        return table[symbols]
