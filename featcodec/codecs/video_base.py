"""What the HEVC codecs (fpc, tiling, autotiler) share: rate options and normalisation."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .. import video
from ..errors import CorruptStreamError, InvalidInputError
from .base import Codec, Param, side_ints, side_numbers

DEFAULT_QP = 22
KBPI_BASES = (15, 30, 60, 120, 240)  # the auto-tiler paper's bitrate bases (kilobits per tensor)
HEVC_PARAMS = (
    Param("qp", int, "Constant QP, 0-51."),
    Param("kbpi", float, "Target kilobits per tensor (QP search)."),
    Param("lossless", bool, "Lossless HEVC."),
    Param("bitdepth", int, "Frame bit depth.", choices=(8, 10)),
    Param("norm", str, "Min/max normalisation per tensor or per channel.", choices=("tensor", "channel")),
    Param("preset", str, "x265 preset (ultrafast … veryslow)."),
)


class VideoCodec(Codec):
    """Base of codecs that normalise a sample to integer frames and code them with HEVC.

    Rate: ``qp`` (constant QP, default 22), ``kbpi`` (target kilobits per tensor, met by a QP
    search) or ``lossless``; ``bitdepth`` 8 or 10; ``norm`` per ``tensor`` (min/max of the sample)
    or per ``channel``; ``preset``: the x265 speed preset.
    """

    params = HEVC_PARAMS
    rate_points = {
        "paper": [("default", {})] + [(f"kbpi={k}", {"kbpi": k}) for k in KBPI_BASES]
        + [("lossless", {"lossless": True})],
        "quick": [("default", {}), ("kbpi=60", {"kbpi": 60})],
    }

    def __init__(self, qp: int | None = None, kbpi: float | None = None, lossless: bool = False,
                 bitdepth: int = 8, norm: str = "tensor", preset: str = "medium"):
        if sum(x is not None and x is not False for x in (qp, kbpi, lossless or None)) > 1:
            raise InvalidInputError("give one of --qp, --kbpi and --lossless")
        if qp is not None and (not isinstance(qp, int) or not 0 <= qp <= 51):
            raise InvalidInputError(f"QP must be an integer 0..51, got {qp!r}")
        if kbpi is not None and (not isinstance(kbpi, (int, float)) or kbpi <= 0):
            raise InvalidInputError(f"kbpi must be a positive number, got {kbpi!r}")
        if bitdepth not in (8, 10):
            raise InvalidInputError(f"bitdepth must be 8 or 10, got {bitdepth!r}")
        if norm not in ("tensor", "channel"):
            raise InvalidInputError(f"norm must be tensor or channel, got {norm!r}")
        if preset not in video.PRESETS:
            raise InvalidInputError(f"unknown x265 preset {preset!r}; use one of {', '.join(video.PRESETS)}")
        self.qp = qp
        self.kbpi = None if kbpi is None else float(kbpi)
        self.lossless = bool(lossless)
        self.bitdepth = bitdepth
        self.norm = norm
        self.preset = preset

    def _rate(self) -> dict:
        if self.lossless:
            return {"lossless": True}
        if self.kbpi is not None:
            return {"kbits": self.kbpi}
        return {"qp": DEFAULT_QP if self.qp is None else self.qp}

    def _normalise(self, sample: np.ndarray) -> tuple[np.ndarray, dict]:
        """Integer frames-to-be (C, H, W) and the range that maps them back."""
        if self.norm == "channel":
            lo, hi = sample.min(axis=(1, 2)), sample.max(axis=(1, 2))
            integers = video.normalise(sample, lo[:, None, None], hi[:, None, None], self.bitdepth)
            return integers, {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi]}
        lo, hi = float(sample.min()), float(sample.max())
        return video.normalise(sample, lo, hi, self.bitdepth), {"lo": lo, "hi": hi}

    def validate(self, shape, info):
        side_ints(info, "frame", 3)
        count = shape[0] if self.norm == "channel" else None
        side_numbers(info, "lo", count), side_numbers(info, "hi", count)

    def _denormalise(self, integers: np.ndarray, info: dict) -> np.ndarray:
        lo, hi = np.asarray(info["lo"], np.float32), np.asarray(info["hi"], np.float32)
        if lo.ndim == 1:
            if len(lo) != len(integers) or len(hi) != len(integers):
                raise CorruptStreamError("per-channel range does not match the channel count")
            lo, hi = lo[:, None, None], hi[:, None, None]
        return video.denormalise(integers, lo, hi, self.bitdepth)

    def _code_frames(self, frames: np.ndarray) -> tuple[bytes, dict]:
        """Pad, encode, and report what was used."""
        padded = video.pad_frames(frames)
        timings = video.VideoTimings()
        stream, qp = video.encode_frames(padded, self.bitdepth, preset=self.preset, threads=self.threads,
                                         timings=timings, **self._rate())
        self.timings["video_encode"] += timings.encode
        # HEVC decoders conceal damage instead of failing: a CRC lets the codec refuse it.
        payload = struct.pack("<I", zlib.crc32(stream) & 0xFFFFFFFF) + stream
        return payload, {"qp": qp, "frame": list(padded.shape), "kbits": len(payload) * 8 / 1000,
                         "encodes": timings.encodes}

    def _decode_frames(self, payload: bytes, info: dict, count: int, height: int, width: int) -> np.ndarray:
        frame_count, frame_height, frame_width = info["frame"]
        if frame_count != count or video.padded_size(height, width) != (frame_height, frame_width):
            raise CorruptStreamError(f"recorded frame size {info['frame']} does not fit {count}x{height}x{width}")
        if len(payload) < 5 or struct.unpack_from("<I", payload)[0] != zlib.crc32(payload[4:]) & 0xFFFFFFFF:
            raise CorruptStreamError("HEVC payload is truncated or corrupt (CRC mismatch)")
        timings = video.VideoTimings()
        frames = video.decode_timed(payload[4:], frame_count, frame_height, frame_width, self.bitdepth, timings)
        self.timings["video_decode"] += timings.decode
        return frames[:, :height, :width]
