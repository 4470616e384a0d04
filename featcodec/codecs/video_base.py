"""What the HEVC codecs (fpc, tiling, autotiler) share: rate options and normalisation."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .. import video
from ..errors import BackendError, CorruptStreamError, InvalidInputError
from .base import GOP_PARAM, Codec, Param, check_gop, side_ints, side_numbers

DEFAULT_QP = 22
KBPI_BASES = (15, 30, 60, 120, 240)  # the auto-tiler paper's bitrate bases (kilobits per tensor)
HEVC_PARAMS = (
    Param("qp", int, "Constant QP, 0-51."),
    Param("kbpi", float, "Target kilobits per tensor (QP search)."),
    Param("lossless", bool, "Lossless HEVC."),
    Param("bitdepth", int, "Frame bit depth.", choices=(8, 10)),
    Param("norm", str, "Min/max normalisation per tensor or per channel.", choices=("tensor", "channel")),
    Param("preset", str, "x265 preset (ultrafast … veryslow)."),
    GOP_PARAM,
)


class VideoCodec(Codec):
    """Base of codecs that normalise a sample to integer frames and code them with HEVC.

    Rate: ``qp`` (constant QP, default 22), ``kbpi`` (target kilobits per tensor, met by a
    constant rate factor, `featcodec.video`) or ``lossless``; ``bitdepth`` 8 or 10; ``norm`` per
    ``tensor`` (min/max of the sample) or per ``channel``; ``preset``: the x265 speed preset;
    ``gop``: samples per group of a sequence, coded as one HEVC stream (an intra frame, then P
    frames), each sample's access units its payload.

    A subclass says how a sample becomes integer frames and back: `to_frames`, `frame_dims`,
    `from_frames`.
    """

    params = HEVC_PARAMS
    rate_points = {
        "paper": [("default", {})] + [(f"kbpi={k}", {"kbpi": k}) for k in KBPI_BASES]
        + [("lossless", {"lossless": True})],
        "quick": [("default", {}), ("kbpi=60", {"kbpi": 60})],
    }

    def __init__(self, qp: int | None = None, kbpi: float | None = None, lossless: bool = False,
                 bitdepth: int = 8, norm: str = "tensor", preset: str = "medium", gop: int = 1):
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
        self.gop = check_gop(gop)

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

    # --- what a subclass defines ---------------------------------------------------------------

    def to_frames(self, sample: np.ndarray) -> tuple[np.ndarray, dict]:
        """(F, h, w) integer frames for one sample (before padding), and side information."""
        raise NotImplementedError

    def frame_dims(self, shape: tuple[int, ...], info: dict) -> tuple[int, int, int]:
        """(F, h, w) of the frames a sample of `shape` with side information `info` was coded in."""
        raise NotImplementedError

    def from_frames(self, frames: np.ndarray, shape: tuple[int, ...], info: dict) -> np.ndarray:
        """The sample back from its (F, h, w) decoded frames."""
        raise NotImplementedError

    # --- coding ----------------------------------------------------------------------------------

    def encode(self, sample):
        frames, info = self.to_frames(sample)
        payload, video_info = self._code_frames(frames)
        return payload, {**info, **video_info}

    def decode(self, payload, shape, info):
        count, height, width = self.frame_dims(tuple(shape), info)
        stream = self._checked_stream(payload, info, count, height, width)
        return self.from_frames(self._decode_stream(stream, count, info, height, width), tuple(shape), info)

    def encode_group(self, samples):
        """One HEVC stream for the group (the QP search, if any, aims at `kbpi` per sample on
        average); each sample's payload is a CRC and its frames' access units."""
        converted = [self.to_frames(sample) for sample in samples]
        per_sample = len(converted[0][0])
        if any(frames.shape != converted[0][0].shape for frames, _ in converted):
            raise InvalidInputError("the samples of a sequence must have one shape")
        padded = video.pad_frames(np.concatenate([frames for frames, _ in converted]))
        (stream,), qp, encodes = self._encode_stacks([padded], len(samples), inter=True)
        units = video.access_units(stream)
        if len(units) != len(padded):
            raise BackendError(f"x265 wrote {len(units)} access units for {len(padded)} frames")
        out = []
        for i, (_, info) in enumerate(converted):
            coded = b"".join(units[i * per_sample : (i + 1) * per_sample])
            payload, video_info = self._framed(coded, qp, [per_sample, *padded.shape[1:]], encodes if i == 0 else 0)
            out.append((payload, {**info, **video_info}))
        return out

    def decode_group(self, payloads, shape, infos):
        shape = tuple(shape)
        dims = [self.frame_dims(shape, info) for info in infos]
        if any(info["frame"] != infos[0]["frame"] for info in infos) or len(set(dims)) != 1:
            raise CorruptStreamError("the samples of one group must record one frame size")
        count, height, width = dims[0]
        streams = [self._checked_stream(payload, info, count, height, width) for payload, info in zip(payloads, infos)]
        frames = self._decode_stream(b"".join(streams), count * len(payloads), infos[0], height, width)
        return [self.from_frames(frames[i * count : (i + 1) * count], shape, info) for i, info in enumerate(infos)]

    def _code_frames(self, frames: np.ndarray) -> tuple[bytes, dict]:
        """Pad, encode, and report what was used."""
        padded = video.pad_frames(frames)
        (stream,), qp, encodes = self._encode_stacks([padded], 1)
        return self._framed(stream, qp, list(padded.shape), encodes)

    def _encode_stacks(self, stacks: list[np.ndarray], samples: int, inter: bool = False
                       ) -> tuple[list[bytes], float | None, int]:
        """Encode padded frame stacks at this codec's rate (a kbpi target is per sample: `samples`
        of them share the streams); returns the streams, the QP or CRF, and the encoder runs."""
        timings = video.VideoTimings()
        rate = self._rate()
        if "kbits" in rate:
            rate["kbits"] *= samples
        streams, qp = video.encode_stacks(stacks, self.bitdepth, preset=self.preset, threads=self.threads,
                                          timings=timings, inter=inter, **rate)
        self.timings["video_encode"] += timings.encode
        return streams, qp, timings.encodes

    def _framed(self, coded: bytes, qp: float | None, frame: list[int], encodes: int) -> tuple[bytes, dict]:
        """A payload, CRC32 then `coded`, and the side information that describes how it was coded.
        (HEVC decoders conceal damage instead of failing: the CRC lets the codec refuse it.)"""
        payload = struct.pack("<I", zlib.crc32(coded) & 0xFFFFFFFF) + coded
        return payload, {**self._setting(qp), "frame": frame, "kbits": len(payload) * 8 / 1000, "encodes": encodes}

    def _setting(self, value) -> dict:
        """The rate setting a stream was coded at: its QP, or the CRF a kbpi target chose."""
        return {"crf": value} if self.kbpi is not None else {"qp": value}

    @staticmethod
    def _checked_stream(payload: bytes, info: dict, count: int, height: int, width: int) -> bytes:
        """The HEVC bytes of a payload, after checking its CRC and recorded frame size."""
        frame_count, frame_height, frame_width = info["frame"]
        if frame_count != count or video.padded_size(height, width) != (frame_height, frame_width):
            raise CorruptStreamError(f"recorded frame size {info['frame']} does not fit {count}x{height}x{width}")
        if len(payload) < 5 or struct.unpack_from("<I", payload)[0] != zlib.crc32(payload[4:]) & 0xFFFFFFFF:
            raise CorruptStreamError("HEVC payload is truncated or corrupt (CRC mismatch)")
        return payload[4:]

    def _decode_stream(self, stream: bytes, count: int, info: dict, height: int, width: int) -> np.ndarray:
        """`count` frames of an HEVC stream (of the padded size `info` records), cropped to height x width."""
        _, frame_height, frame_width = info["frame"]
        timings = video.VideoTimings()
        frames = video.decode_timed(stream, count, frame_height, frame_width, self.bitdepth, timings)
        self.timings["video_decode"] += timings.decode
        return frames[:, :height, :width]
