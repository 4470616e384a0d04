"""``fpc``: frame per channel. Every channel is one frame of one HEVC video.

The baseline of Choi & Bajić and of the auto-tiler paper (section 2.2.1). A ``kbpi`` target
is for the whole tensor: the paper divides its Kbpi bases by the channel count per frame, so
the C frames together get K kilobits, which is what featcodec's QP search meets.
"""

from __future__ import annotations

import numpy as np

from .video_base import VideoCodec


class FramePerChannel(VideoCodec):
    """Normalise (per tensor or per channel), code the C channels as C frames of HEVC.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    >>> codec = FramePerChannel(lossless=True)
    >>> payload, info = codec.encode(x)
    >>> float(np.abs(codec.decode(payload, x.shape, info) - x).max()) <= 0.5 / 255 + 1e-6
    True
    """

    codec_id = "fpc"

    def encode(self, sample):
        with self.stage("normalise"):
            integers, info = self._normalise(sample)
        stream, video_info = self._code_frames(integers)
        return stream, {**info, **video_info}

    def decode(self, payload, shape, info):
        channels, height, width = shape
        frames = self._decode_frames(payload, info, channels, height, width)
        with self.stage("denormalise"):
            return np.ascontiguousarray(self._denormalise(frames, info))
