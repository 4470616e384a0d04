"""HEVC (x265) coding of stacks of 2-D frames, shared by the fpc, tiling and autotiler codecs.

Two backends produce and read the same Annex-B HEVC elementary streams of 8-bit (``gray``)
or 10-bit (``gray10le``) frames:

* ``ffmpeg``: the ffmpeg binary that ``imageio-ffmpeg`` bundles (built with libx265), raw frames
  through pipes, no temporary file;
* ``pyav``: in process, with PyAV (``pip install 'featcodec[av]'``), which saves starting a
  process per tensor. Chosen automatically when PyAV is installed; ``FEATCODEC_VIDEO_BACKEND``
  (``ffmpeg`` or ``pyav``) forces one.

Rate control: a constant ``qp``; ``lossless``; or a target size in kilobits for the whole
stack (``kbits``). x265's one-pass ABR misses by a wide margin on one or a few frames, so a
target is met by searching the constant QP instead: the stream closest to the target without
exceeding it by more than 10 % is kept (a log-linear model of size against QP proposes, a
couple of encodes confirm). A target the frames cannot reach within ±10 % (too small a frame
to spend it even at QP 0, too large to fit it at QP 51) raises a `RateWarning` naming the
real rate, which the stream records.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import BackendError, CorruptStreamError, FeatcodecWarning, InvalidInputError, MissingBackendError


class RateWarning(FeatcodecWarning):
    """A rate target that the frames cannot reach; the stream carries the real rate."""


PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Frames are padded to at least this on each side: with pictures of one 64-pixel CTU or less,
# this x265 + ffmpeg pair disagree on inter-predicted frames (lossless streams decode with
# errors; measured in tests/test_video.py), and x265 needs a few CUs anyway.
MIN_SIDE = 72


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise MissingBackendError("HEVC coding needs imageio-ffmpeg: pip install imageio-ffmpeg") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def backend() -> str:
    """The video backend in use: FEATCODEC_VIDEO_BACKEND if set, else pyav when importable."""
    chosen = os.environ.get("FEATCODEC_VIDEO_BACKEND", "").lower()
    if chosen in ("ffmpeg", "pyav"):
        return chosen
    if chosen:
        raise InvalidInputError(f"FEATCODEC_VIDEO_BACKEND must be ffmpeg or pyav, not {chosen!r}")
    try:
        import av  # noqa: F401
    except ImportError:
        return "ffmpeg"
    return "pyav"


def _pix_fmt(bitdepth: int) -> str:
    if bitdepth == 8:
        return "gray"
    if bitdepth == 10:
        return "gray10le"
    raise InvalidInputError(f"bit depth must be 8 or 10, got {bitdepth}")


def padded_size(height: int, width: int) -> tuple[int, int]:
    """Frame size x265 accepts: a multiple of 8, at least MIN_SIDE."""
    def up(n):
        return max(MIN_SIDE, -(-n // 8) * 8)

    return up(height), up(width)


@dataclass
class VideoTimings:
    """Seconds spent per stage; the benchmark reads these."""

    encode: float = 0.0
    decode: float = 0.0
    encodes: int = 0  # encoder runs, more than one when a rate target is searched


def _run(args: list[str], data: bytes, what: str) -> bytes:
    try:
        result = subprocess.run(args, input=data, capture_output=True, check=False)
    except OSError as err:
        raise BackendError(f"cannot run ffmpeg for {what}: {err}") from err
    if result.returncode != 0:
        message = " ".join(result.stderr.decode(errors="replace").strip().splitlines()[-3:])
        error = CorruptStreamError if what == "decoding" else BackendError
        raise error(f"ffmpeg {what} failed: {message or 'exit code ' + str(result.returncode)}")
    return result.stdout


def encode_frames_qp(frames: np.ndarray, bitdepth: int, qp: int | None, preset: str = "medium",
                     lossless: bool = False, threads: int | None = None) -> bytes:
    """HEVC-encode (F, H, W) integer frames at a constant QP (or losslessly); `threads`: x265's
    worker pool (None: its default)."""
    count, height, width = frames.shape
    if (height, width) != padded_size(height, width):
        raise InvalidInputError(f"frame size {height}x{width} must be padded first (padded_size)")
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown x265 preset {preset!r}; use one of {', '.join(PRESETS)}")
    params = ["log-level=error", "info=0"]  # info=0: no SEI with the encoder's version and time
    params += ["lossless=1"] if lossless else [f"qp={int(qp)}"]
    if threads:
        params += [f"pools={threads}", "frame-threads=1"]
    if backend() == "pyav":
        return _encode_pyav(frames, bitdepth, preset, ":".join(params))
    args = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", _pix_fmt(bitdepth), "-s", f"{width}x{height}", "-r", "30", "-i", "pipe:0",
            "-an", "-c:v", "libx265", "-preset", preset, "-pix_fmt", _pix_fmt(bitdepth),
            "-x265-params", ":".join(params), "-threads", "1", "-f", "hevc", "pipe:1"]
    dtype = "<u2" if bitdepth > 8 else np.uint8
    return _run(args, np.ascontiguousarray(frames, dtype).tobytes(), "encoding")


def decode_frames(stream: bytes, count: int, height: int, width: int, bitdepth: int) -> np.ndarray:
    """Decode an HEVC stream to (count, height, width) uint8 / uint16 frames."""
    if not stream:
        raise CorruptStreamError("empty HEVC stream")
    if backend() == "pyav":
        return _decode_pyav(stream, count, height, width, bitdepth)
    args = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1",
            "-f", "hevc", "-i", "pipe:0", "-fps_mode", "passthrough", "-f", "rawvideo",
            "-pix_fmt", _pix_fmt(bitdepth), "pipe:1"]
    raw = _run(args, stream, "decoding")
    dtype = np.dtype("<u2" if bitdepth > 8 else np.uint8)
    expected = count * height * width * dtype.itemsize
    if len(raw) != expected:
        raise CorruptStreamError(f"HEVC stream decoded to {len(raw)} bytes, expected {expected} "
                                 f"({count} frames of {width}x{height})")
    return np.frombuffer(raw, dtype).reshape(count, height, width)


def _encode_pyav(frames: np.ndarray, bitdepth: int, preset: str, x265_params: str) -> bytes:
    import io

    import av

    count, height, width = frames.shape
    buffer = io.BytesIO()
    try:
        with av.open(buffer, mode="w", format="hevc") as container:
            stream = container.add_stream("libx265", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, _pix_fmt(bitdepth)
            stream.options = {"preset": preset, "x265-params": x265_params}
            dtype = np.uint16 if bitdepth > 8 else np.uint8
            for frame in frames:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype), format=_pix_fmt(bitdepth))
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
    except av.FFmpegError as err:
        raise BackendError(f"PyAV encoding failed: {err}") from err
    return buffer.getvalue()


def _decode_pyav(stream: bytes, count: int, height: int, width: int, bitdepth: int) -> np.ndarray:
    import io

    import av

    frames = []
    try:
        with av.open(io.BytesIO(stream), format="hevc") as container:
            for frame in container.decode(video=0):
                if len(frames) == count:
                    raise CorruptStreamError(f"HEVC stream holds more than the {count} frames recorded")
                frames.append(frame.to_ndarray(format=_pix_fmt(bitdepth)))
    except av.FFmpegError as err:
        raise CorruptStreamError(f"PyAV decoding failed: {err}") from err
    if len(frames) != count or any(f.shape != (height, width) for f in frames):
        raise CorruptStreamError(f"HEVC stream decoded to {len(frames)} frames of "
                                 f"{frames[0].shape if frames else '?'}, expected {count} of {(height, width)}")
    return np.stack(frames).astype(np.uint16 if bitdepth > 8 else np.uint8)


def encode_frames(frames: np.ndarray, bitdepth: int = 8, *, qp: int | None = None, kbits: float | None = None,
                  lossless: bool = False, preset: str = "medium", threads: int | None = None,
                  timings: VideoTimings | None = None) -> tuple[bytes, int | None]:
    """Encode frames by one rate setting; returns the stream and the QP used (None if lossless)."""
    timings = timings if timings is not None else VideoTimings()
    start = time.perf_counter()
    try:
        if lossless:
            timings.encodes += 1
            return encode_frames_qp(frames, bitdepth, None, preset, lossless=True, threads=threads), None
        if kbits is None:
            qp = 32 if qp is None else qp
            if not 0 <= qp <= 51:
                raise InvalidInputError(f"QP must be 0..51, got {qp}")
            timings.encodes += 1
            return encode_frames_qp(frames, bitdepth, qp, preset, threads=threads), qp
        return _search_qp(frames, bitdepth, kbits, preset, timings, threads)
    finally:
        timings.encode += time.perf_counter() - start


def _search_qp(frames, bitdepth, kbits, preset, timings, threads=None) -> tuple[bytes, int]:
    if not kbits > 0:
        raise InvalidInputError(f"target kilobits must be positive, got {kbits}")
    target = kbits * 1000 / 8  # bytes
    tried: dict[int, bytes] = {}

    def size_at(qp: int) -> int:
        if qp not in tried:
            timings.encodes += 1
            tried[qp] = encode_frames_qp(frames, bitdepth, qp, preset, threads=threads)
        return len(tried[qp])

    qp = 32
    for _ in range(3):  # size roughly halves every +6 QP: jump towards the target
        size = size_at(qp)
        step = round(6 * math.log2(max(size, 1) / target))
        if step == 0:
            break
        qp = int(np.clip(qp + step, 0, 51))
    # Walk one QP at a time to bracket the target.
    while size_at(qp) > target * 1.1 and qp < 51:
        qp += 1
    while qp > 0 and size_at(qp - 1) <= target * 1.1 and abs(size_at(qp - 1) - target) < abs(size_at(qp) - target):
        qp -= 1
    size = size_at(qp)
    if not 0.9 * target <= size <= 1.1 * target:
        # Never hand back a different rate silently: a small frame cannot spend a large target
        # even at QP 0, and a large one cannot fit a tiny target even at QP 51.
        shape = "x".join(str(v) for v in frames.shape[-2:]) + (f" x {len(frames)} frames" if len(frames) > 1 else "")
        if qp == 0 or qp == 51:
            reason = f"at QP {qp}, the {'finest' if qp == 0 else 'coarsest'} step, this {shape} stream takes"
        else:  # size jumps past the ±10 % window between two neighbouring QPs
            reason = f"the nearest stream of this {shape} picture (QP {qp}) takes"
        warnings.warn(RateWarning(f"HEVC target {kbits:g} kbits not reachable within 10 %: {reason} "
                                  f"{size * 8 / 1000:.1f} kbits; the real rate is recorded"), stacklevel=2)
    return tried[qp], qp


def decode_timed(stream: bytes, count: int, height: int, width: int, bitdepth: int,
                 timings: VideoTimings | None = None) -> np.ndarray:
    start = time.perf_counter()
    try:
        return decode_frames(stream, count, height, width, bitdepth)
    finally:
        if timings is not None:
            timings.decode += time.perf_counter() - start


# --- normalisation and tiling, shared by the video codecs -----------------------------------

def normalise(values: np.ndarray, lo, hi, bitdepth: int) -> np.ndarray:
    """Map [lo, hi] (scalars or per-channel arrays broadcasting against `values`) to integers."""
    top = (1 << bitdepth) - 1
    scale = top / np.maximum(np.asarray(hi, np.float32) - np.asarray(lo, np.float32), np.float32(1e-20))
    out = np.rint((values - np.asarray(lo, np.float32)) * scale)
    return np.clip(out, 0, top).astype(np.uint16 if bitdepth > 8 else np.uint8)


def denormalise(frames: np.ndarray, lo, hi, bitdepth: int) -> np.ndarray:
    top = (1 << bitdepth) - 1
    step = (np.asarray(hi, np.float32) - np.asarray(lo, np.float32)) / np.float32(top)
    return frames.astype(np.float32) * step + np.asarray(lo, np.float32)


def tile_grid(channels: int) -> tuple[int, int, int]:
    """(rows, cols, padded channel count): rows is the largest divisor of C ≤ √C.

    A prime C (above 3) would give a 1×C strip, so it is padded to C + 1 first.
    """
    padded = channels + 1 if channels > 3 and all(channels % d for d in range(2, math.isqrt(channels) + 1)) \
        else channels
    rows = max(d for d in range(1, math.isqrt(padded) + 1) if padded % d == 0)
    return rows, padded // rows, padded


def tile(sample: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(C, H, W) → one (rows·H, cols·W) frame, channels in row-major order; missing ones are 0."""
    channels, height, width = sample.shape
    full = np.zeros((rows * cols, height, width), sample.dtype)
    full[:channels] = sample
    return full.reshape(rows, cols, height, width).transpose(0, 2, 1, 3).reshape(rows * height, cols * width)


def untile(frame: np.ndarray, rows: int, cols: int, channels: int, height: int, width: int) -> np.ndarray:
    grid = frame[: rows * height, : cols * width].reshape(rows, height, cols, width).transpose(0, 2, 1, 3)
    return grid.reshape(rows * cols, height, width)[:channels]


def pad_frames(frames: np.ndarray) -> np.ndarray:
    """Pad (F, H, W) frames at the bottom/right, repeating the edge, to a size x265 accepts."""
    _, height, width = frames.shape
    ph, pw = padded_size(height, width)
    if (ph, pw) == (height, width):
        return frames
    return np.pad(frames, ((0, 0), (0, ph - height), (0, pw - width)), mode="edge")

