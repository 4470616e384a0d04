"""``fpc``: frame per channel. Every channel is one frame of one HEVC video.

The baseline of Choi & Bajić and of the auto-tiler paper (section 2.2.1). A ``kbpi`` target
is for the whole tensor: the paper divides its Kbpi bases by the channel count per frame, so
the C frames together get K kilobits, which is what featcodec's QP search meets.

Sequences (``gop``): each channel's frames over the group are one HEVC stream, so channel c of a
sample is predicted from channel c of the sample before (in one stream of C frames per sample the
previous sample's channel would be C frames back, beyond x265's 16 references). A sample's payload
is a CRC, its C access-unit lengths (uint32) and the access units.
"""

from __future__ import annotations

import struct

import numpy as np

from .. import video
from ..errors import BackendError, CorruptStreamError
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

    def to_frames(self, sample):
        with self.stage("normalise"):
            return self._normalise(sample)

    def frame_dims(self, shape, info):
        return tuple(shape)

    def from_frames(self, frames, shape, info):
        with self.stage("denormalise"):
            return np.ascontiguousarray(self._denormalise(frames, info))

    def encode_group(self, samples):
        converted = [self.to_frames(sample) for sample in samples]
        stacked = video.pad_frames(np.concatenate([frames for frames, _ in converted]))
        count, channels = len(samples), len(converted[0][0])
        per_channel = [stacked[c::channels] for c in range(channels)]  # sample order within a channel
        streams, qp, encodes = self._encode_stacks(per_channel, count, inter=True)
        units = [video.access_units(stream) for stream in streams]
        if any(len(u) != count for u in units):
            raise BackendError(f"x265 wrote {[len(u) for u in units]} access units for {count} frames per channel")
        out = []
        for i, (_, info) in enumerate(converted):
            mine = [units[c][i] for c in range(channels)]
            body = struct.pack(f"<{channels}I", *map(len, mine)) + b"".join(mine)
            payload, video_info = self._framed(body, qp, [channels, *stacked.shape[1:]], encodes if i == 0 else 0)
            out.append((payload, {**info, **video_info}))
        return out

    def decode_group(self, payloads, shape, infos):
        channels, height, width = shape
        per_channel: list[list[bytes]] = [[] for _ in range(channels)]
        for payload, info in zip(payloads, infos):
            body = self._checked_stream(payload, info, channels, height, width)
            if info["frame"] != infos[0]["frame"] or len(body) < 4 * channels:
                raise CorruptStreamError("FPC sequence payload is truncated or its frame size changes")
            lengths = struct.unpack_from(f"<{channels}I", body)
            if sum(lengths) != len(body) - 4 * channels:
                raise CorruptStreamError("FPC sequence payload: access-unit lengths do not add up")
            position = 4 * channels
            for c, length in enumerate(lengths):
                per_channel[c].append(body[position : position + length])
                position += length
        decoded = np.stack([self._decode_stream(b"".join(units), len(payloads), infos[0], height, width)
                            for units in per_channel], axis=1)
        return [self.from_frames(frames, shape, info) for frames, info in zip(decoded, infos)]
