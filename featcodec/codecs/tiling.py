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

    def to_frames(self, sample):
        rows, cols, padded = video.tile_grid(sample.shape[0])
        with self.stage("normalise"):
            integers, info = self._normalise(sample)
            frame = video.tile(integers, rows, cols)[None]
        return frame, {**info, "grid": [rows, cols, padded]}

    def validate(self, shape, info):
        super().validate(shape, info)
        rows, cols, padded = side_ints(info, "grid", 3)
        if rows * cols != padded or padded < shape[0] or padded > shape[0] + 1:
            raise CorruptStreamError(f"recorded grid {info['grid']} does not fit {shape[0]} channels")

    def frame_dims(self, shape, info):
        rows, cols, _ = info["grid"]
        return 1, rows * shape[1], cols * shape[2]

    def from_frames(self, frames, shape, info):
        channels, height, width = shape
        rows, cols, _ = info["grid"]
        with self.stage("denormalise"):
            maps = video.untile(frames[0], rows, cols, channels, height, width)
            return np.ascontiguousarray(self._denormalise(maps, info))
