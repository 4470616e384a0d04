"""``tiling``: all channels tiled into one near-square frame, coded as one HEVC picture.

The baseline of the auto-tiler paper (section 2.2.2). The grid has as many rows as the
largest divisor of C not above √C (a prime C is padded by one blank channel first); the
grid and any padding are recorded per sample.
"""

from __future__ import annotations

import numpy as np

from .. import video
from ..errors import CorruptStreamError
from .base import side_ints
from .video_base import VideoCodec


class Tiling(VideoCodec):
    """Normalise, tile the C maps into a rows × cols mosaic, code it as one HEVC frame.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    >>> codec = Tiling(lossless=True)
    >>> payload, info = codec.encode(x)
    >>> info["grid"], float(np.abs(codec.decode(payload, x.shape, info) - x).max()) <= 0.5 / 255 + 1e-6
    ([2, 3, 6], True)
    """

    codec_id = "tiling"

    def encode(self, sample):
        channels = sample.shape[0]
        rows, cols, padded = video.tile_grid(channels)
        with self.stage("normalise"):
            integers, info = self._normalise(sample)
            frame = video.tile(integers, rows, cols)[None]
        stream, video_info = self._code_frames(frame)
        return stream, {**info, **video_info, "grid": [rows, cols, padded]}

    def validate(self, shape, info):
        super().validate(shape, info)
        rows, cols, padded = side_ints(info, "grid", 3)
        if rows * cols != padded or padded < shape[0] or padded > shape[0] + 1:
            raise CorruptStreamError(f"recorded grid {info['grid']} does not fit {shape[0]} channels")

    def decode(self, payload, shape, info):
        channels, height, width = shape
        rows, cols, padded = info["grid"]
        frame = self._decode_frames(payload, info, 1, rows * height, cols * width)[0]
        with self.stage("denormalise"):
            maps = video.untile(frame, rows, cols, channels, height, width)
            return np.ascontiguousarray(self._denormalise(maps, info))
