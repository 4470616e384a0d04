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
target is met by a constant rate factor (CRF, a real number) instead, in two encodes as a rule,
four at most (`_search_crf`: where `featcodec.ratemodel` puts them). A target missed by
more than ±10 % (too small a frame to spend it even at CRF 0, too large to fit it at CRF 51, or a
model miss) raises a `RateWarning` naming the real rate, which the stream records.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import ratemodel
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
                     lossless: bool = False, threads: int | None = None, inter: bool = False,
                     crf: float | None = None) -> bytes:
    """HEVC-encode (F, H, W) integer frames at a constant QP (or losslessly); `threads`: x265's
    worker pool (None: its default). With `inter`, the frames are one group of a sequence: one
    intra frame then P frames each predicted from those before it (no B frames, so decode order is
    frame order), every access unit opened by an AUD NAL unit so `access_units` can split them."""
    count, height, width = frames.shape
    if (height, width) != padded_size(height, width):
        raise InvalidInputError(f"frame size {height}x{width} must be padded first (padded_size)")
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown x265 preset {preset!r}; use one of {', '.join(PRESETS)}")
    params = ["log-level=error", "info=0"]  # info=0: no SEI with the encoder's version and time
    params += ["lossless=1"] if lossless else [f"crf={crf:g}"] if crf is not None else [f"qp={int(qp)}"]
    if inter:
        params += [f"keyint={max(count, 1)}", "min-keyint=1", "scenecut=0", "bframes=0", "aud=1", "open-gop=0"]
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
                  timings: VideoTimings | None = None, inter: bool = False) -> tuple[bytes, float | None]:
    """Encode frames by one rate setting; returns the stream and the QP used, or the CRF a `kbits`
    target chose (None if lossless). `inter`: the frames are one group of a sequence (see
    `encode_frames_qp`)."""
    streams, qp = encode_stacks([frames], bitdepth, qp=qp, kbits=kbits, lossless=lossless, preset=preset,
                                threads=threads, timings=timings, inter=inter)
    return streams[0], qp


def encode_stacks(stacks: list[np.ndarray], bitdepth: int = 8, *, qp: int | None = None, kbits: float | None = None,
                  lossless: bool = False, preset: str = "medium", threads: int | None = None,
                  timings: VideoTimings | None = None, inter: bool = False) -> tuple[list[bytes], float | None]:
    """Encode several stacks of frames, each its own stream, at one QP (a `kbits` target is for
    all of them together, met by a constant rate factor); returns the streams and the QP, or the
    CRF for a `kbits` target (None if lossless)."""
    timings = timings if timings is not None else VideoTimings()
    start = time.perf_counter()

    def encode_at(qp_used, crf=None):
        timings.encodes += 1
        return [encode_frames_qp(frames, bitdepth, qp_used, preset, lossless=lossless, threads=threads, inter=inter,
                                 crf=crf) for frames in stacks]

    try:
        if lossless:
            return encode_at(None), None
        if kbits is None:
            qp = 32 if qp is None else qp
            if not 0 <= qp <= 51:
                raise InvalidInputError(f"QP must be 0..51, got {qp}")
            return encode_at(qp), qp
        what = "x".join(str(v) for v in stacks[0].shape[-2:]) + \
            (f" x {sum(len(f) for f in stacks)} frames" if sum(len(f) for f in stacks) > 1 else "")
        return _search_crf(lambda crf: encode_at(None, crf), kbits, what, stacks, inter)
    finally:
        timings.encode += time.perf_counter() - start


_AUD_START = re.compile(b"\x00\x00\x01\x46")  # a start code, then the NAL header of an AUD (type 35)


def access_units(stream: bytes) -> list[bytes]:
    """Split an Annex-B HEVC stream written with ``aud=1`` into its access units (one per frame),
    each from its AUD on; the parameter sets travel with the first."""
    starts = [m.start() - (1 if m.start() > 0 and stream[m.start() - 1] == 0 else 0)
              for m in _AUD_START.finditer(stream)]
    if not starts or starts[0] != 0:
        raise BackendError("the HEVC stream does not open with an access unit delimiter")
    return [stream[a:b] for a, b in zip(starts, starts[1:] + [len(stream)])]


# Where the rate model (featcodec.ratemodel) has no curve spanning both rates, or none like the
# frames, the second encode steps along a typical slope of log2 size per CRF unit (intra: -0.1 to -0.45 on the reference
# detector's frames; groups of P frames: -0.15 to -0.19 on three bundled clips, tiling, S4).
FALLBACK_SLOPE, FALLBACK_SLOPE_INTER = -0.3, -0.17
CRF_RANGE = ratemodel.CRF_RANGE
MAX_PASSES = 4  # the third and fourth are rare: where the rate model missed


def activity(stacks: list[np.ndarray], inter: bool = False) -> float:
    """Mean absolute difference of horizontally and vertically neighbouring pixels (every 4th frame);
    for a group coded `inter`, the first frame's, then the difference of each frame from the one
    before (what a P frame codes, where nothing moves)."""
    total, count = 0.0, 0
    for frames in stacks:
        if inter and len(frames) > 1:
            first = frames[0].astype(np.float32)
            total += sum(float(np.abs(np.diff(first, axis=axis)).sum()) for axis in (-1, -2)) / 2
            total += float(np.abs(np.diff(frames.astype(np.float32), axis=0)).sum())
            count += frames[0].size * len(frames)
            continue
        sample = frames[::4].astype(np.float32)
        for axis in (-1, -2):
            total += float(np.abs(np.diff(sample, axis=axis)).sum())
            count += sample.size
    return total / max(count, 1)


def _search_crf(encode_at, kbits: float, what: str, stacks: list[np.ndarray],
                inter: bool = False) -> tuple[list[bytes], float]:
    """Meet `kbits` with a constant rate factor: the first two encodes where the rate model
    (`featcodec.ratemodel`) puts them; where two missed (rare), up to two more on the line through
    the points that bracket the target, or else the last two (a secant). The stream closest to the
    target in log size is kept; outside ±10 % a `RateWarning` names the real rate."""
    if not kbits > 0:
        raise InvalidInputError(f"target kilobits must be positive, got {kbits}")
    target = kbits * 1000 / 8  # bytes
    pixels, frames_activity = sum(f.size for f in stacks), activity(stacks, inter)
    geometry = stacks[0].shape  # frames per stream, height, width
    tried: dict[float, list[bytes]] = {}

    def log_size(crf: float) -> float:
        if crf not in tried:
            tried[crf] = encode_at(crf)
        return math.log2(max(sum(len(stream) for stream in tried[crf]), 1))

    def clamp(crf: float) -> float:
        return round(min(max(crf, CRF_RANGE[0]), CRF_RANGE[1]), 2)

    def bpp(log_bytes: float) -> float:  # log2 bits per pixel, the rate model's unit
        return log_bytes + 3 - math.log2(pixels)

    goal = math.log2(target)
    crf = clamp(ratemodel.first_crf(bpp(goal), frames_activity, geometry, inter))
    points = [(crf, log_size(crf))]
    while len(tried) < MAX_PASSES and abs(points[-1][1] - goal) > math.log2(1.1) * 0.8:
        if len(points) == 1:
            step = ratemodel.next_crf(crf, bpp(points[0][1]), bpp(goal), frames_activity, geometry, inter)
            slope = FALLBACK_SLOPE_INTER if inter else FALLBACK_SLOPE
            crf = clamp(step if step is not None else crf + (goal - points[0][1]) / slope)
        else:
            # the nearest points on either side of the target (interpolation) if it is bracketed,
            # else the last two (a secant)
            above = [p for p in points if p[1] > goal]
            below = [p for p in points if p[1] < goal]
            if above and below:
                (c0, s0), (c1, s1) = min(above, key=lambda p: p[1]), max(below, key=lambda p: p[1])
            else:
                (c0, s0), (c1, s1) = points[-2:]
            slope = (s1 - s0) / (c1 - c0) if c1 != c0 and s1 != s0 else FALLBACK_SLOPE
            slope = min(slope, -0.02)  # size never grows with CRF; a flat stretch must not send it far
            crf = clamp(c1 + (goal - s1) / slope)
        if crf in tried:
            break
        points.append((crf, log_size(crf)))
    crf = min(tried, key=lambda c: abs(log_size(c) - goal))
    size = 2 ** log_size(crf)
    if not 0.9 * target <= size <= 1.1 * target:
        # Never hand back a different rate silently: a small frame cannot spend a large target
        # even at the finest step, and a large one cannot fit a tiny target at the coarsest.
        if crf in CRF_RANGE:
            end = "finest" if crf == CRF_RANGE[0] else "coarsest"
            message = f"not reachable within 10 %: at CRF {crf:g}, the {end} setting, this {what} stream takes"
        else:
            message = (f"not reached within 10 % in {len(tried)} encodes: the nearest stream of this {what} "
                       f"(CRF {crf:g}) takes")
        warnings.warn(RateWarning(f"HEVC target {kbits:g} kbits {message} {size * 8 / 1000:.1f} kbits; "
                                  "the real rate is recorded"), stacklevel=3)
    return tried[crf], crf


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

