"""Remote inference: the anchor that split computing is judged against.

Instead of running the head and sending a split layer, the device may send the input image, coded
by a standard image codec, and the server runs the whole network (the SC2 benchmark's "remote
computation on compressed data"; MPEG FCTM's anchor). A feature codec pays only where it needs
fewer bits than this for the same task result.

For each sample of a dump (`featcodec dump` records where each came from: ``/sources``, the photo
or video, and ``/images``, its name with the variant or frame), the image is made again as the
network saw it — resized by the network's preprocessing, *before* the letterbox padding, which a
device would not send — and coded with:

* **x265** intra (HEVC, one frame, preset medium, yuv420p) over a CRF sweep, through the bundled
  ffmpeg, and
* **JPEG** (Pillow / libjpeg, 4:2:0) over a quality sweep;

then decoded, padded and normalised as the network's input, and the whole network runs. The task
metric compares its output with the network's on the uncoded image — the same reference that the
feature codecs' agreement uses (the tail on the original activations computes it too). Rates are
kilobits per image, the feature codecs' Kbpi.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BackendError, InvalidInputError
from .onnxmodel import Manifest, finish_input, load_image, load_model, resize_for_input, session

X265_CRFS = (16, 20, 24, 28, 32, 36, 40, 44, 48, 51)
JPEG_QUALITIES = (5, 10, 20, 35, 50, 70, 90)
IMAGE_CODECS = ("x265", "jpeg")


@dataclass
class ImagePoint:
    """One rate point of remote inference over the samples of a dump."""

    codec: str
    point: str
    kbpi: float
    agreement: float
    samples: int
    encode_ms: float
    decode_ms: float
    psnr: float  # of the coded image against the resized one, RGB, peak 255


# --- image codecs --------------------------------------------------------------------------

def _even(rgb: np.ndarray) -> np.ndarray:
    """Edge-padded to even sides (4:2:0 chroma needs them); the decoder crops back."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def x265_encode(rgb: np.ndarray, crf: float, preset: str = "medium") -> bytes:
    """One RGB image as an HEVC intra frame (Annex B), yuv420p, constant rate factor `crf`."""
    from .video import ffmpeg_exe

    frame = np.ascontiguousarray(_even(rgb))
    h, w = frame.shape[:2]
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-i", "-", "-frames:v", "1", "-c:v", "libx265", "-preset", preset,
               "-crf", f"{crf:g}", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error:keyint=1",
               "-f", "hevc", "-"]
    return _run(command, frame.tobytes())


def x265_decode(stream: bytes, height: int, width: int) -> np.ndarray:
    from .video import ffmpeg_exe

    eh, ew = height + height % 2, width + width % 2
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "hevc", "-i", "-", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-"]
    raw = _run(command, stream)
    if len(raw) != eh * ew * 3:
        raise BackendError(f"ffmpeg decoded {len(raw)} bytes, expected one {ew}x{eh} RGB frame")
    return np.frombuffer(raw, np.uint8).reshape(eh, ew, 3)[:height, :width]


def _run(command: list[str], data: bytes) -> bytes:
    try:
        done = subprocess.run(command, input=data, capture_output=True, check=False)
    except OSError as err:
        raise BackendError(f"cannot run ffmpeg: {err}") from err
    if done.returncode != 0:
        raise BackendError(f"ffmpeg failed: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.stdout


def jpeg_encode(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    return buffer.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def image_points(codecs: tuple[str, ...] = IMAGE_CODECS) -> list[tuple[str, str, float]]:
    """(codec, label, parameter) of every point of the sweep."""
    points = []
    for codec in codecs:
        if codec == "x265":
            points += [("x265", f"crf={crf}", crf) for crf in X265_CRFS]
        elif codec == "jpeg":
            points += [("jpeg", f"q={q}", q) for q in JPEG_QUALITIES]
        else:
            raise InvalidInputError(f"unknown image codec {codec!r}: use {', '.join(IMAGE_CODECS)}")
    return points


def code_image(codec: str, parameter: float, rgb: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """(decoded image, coded bytes, encode s, decode s) of one image at one point."""
    start = time.perf_counter()
    data = x265_encode(rgb, parameter) if codec == "x265" else jpeg_encode(rgb, int(parameter))
    middle = time.perf_counter()
    decoded = x265_decode(data, *rgb.shape[:2]) if codec == "x265" else jpeg_decode(data)
    return decoded, len(data), middle - start, time.perf_counter() - middle


# --- the dump's images ----------------------------------------------------------------------

def dump_images(dump_path: str, image_dirs: list[str] = ()) -> list[np.ndarray]:
    """Every sample's RGB image, made again from its source: the path ``dump`` recorded in
    ``/sources`` (or the name in ``/images`` looked for in `image_dirs` and beside the dump), its
    variant (``#flip`` …) applied, or its frame (``#frame=K``) read from the video."""
    import h5py

    from .dump import augment, video_frames

    with h5py.File(dump_path, "r") as f:
        if "images" not in f:
            raise InvalidInputError(f"{dump_path} records no images (not a featcodec dump?)")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["images"][()]]
        sources = ([s.decode() if isinstance(s, bytes) else str(s) for s in f["sources"][()]]
                   if "sources" in f else [None] * len(names))
    folders = [Path(d) for d in image_dirs] + [Path(dump_path).parent]
    frames_wanted: dict[str, set[int]] = {}
    located = []
    for name, source in zip(names, sources):
        base, _, variant = name.partition("#")
        path = _locate(base, source, folders)
        if path is None:
            raise InvalidInputError(f"cannot find image {base!r} of {dump_path} (recorded at {source}); "
                                    "pass --images DIR")
        located.append((path, variant))
        if variant.startswith("frame="):
            frames_wanted.setdefault(path, set()).add(int(variant[6:]))
    frames: dict[tuple[str, int], np.ndarray] = {}
    for path, wanted in frames_wanted.items():
        reader = video_frames(path)
        next(reader)
        for index, rgb in reader:
            if index in wanted:
                frames[path, index] = rgb.copy()
            if index >= max(wanted):
                reader.close()
                break
    images = []
    for path, variant in located:
        if variant.startswith("frame="):
            images.append(frames[path, int(variant[6:])])
        else:
            rgb = load_image(path)
            try:
                images.append(augment(rgb, variant) if variant else rgb)
            except ValueError as err:  # a dump whose names were written by something else
                raise InvalidInputError(f"{dump_path}: image {path} of variant {variant!r}: {err}") from None
    return images


def _locate(name: str, source: str | None, folders: list[Path]) -> str | None:
    if source and os.path.isfile(source):
        return source
    for folder in folders:
        if (folder / name).is_file():
            return str(folder / name)
    return None


# --- the anchor -----------------------------------------------------------------------------

class WholeNetwork:
    """The whole network from its input to the task output, with the task metric of `TaskModel`."""

    def __init__(self, model_path: str, threads: int | None = None, spec: dict | None = None, metric=None):
        from .task import guess_task, task_outputs

        self.manifest = Manifest.for_model(model_path)
        self.metric = metric
        model = load_model(model_path)
        self.task = self.manifest.task or guess_task(model)
        self.outputs = task_outputs(model, self.task, self.manifest)
        self.spec = spec or self.manifest.preprocessing
        if not self.spec:
            raise InvalidInputError(f"{model_path}: remote inference needs the network's preprocessing "
                                    "(the dump's, or a manifest.json)")
        self.session = session(model_path, threads)

    def run(self, resized: list[np.ndarray]) -> list[np.ndarray]:
        """The task outputs for images at the network's size (`resize_for_input`)."""
        outputs = [self.session.run(self.outputs, {self.spec["input"]: finish_input(img, self.spec)[None]})
                   for img in resized]
        return [np.concatenate([o[k] for o in outputs]) for k in range(len(self.outputs))]

    def agreement(self, reference: list[np.ndarray], result: list[np.ndarray]) -> float:
        from .task import agreement

        return agreement(self.task, reference, result, self.manifest.score_threshold, self.metric)


def remote_inference(dump_path: str, model_path: str, *, image_dirs: list[str] = (),
                     codecs: tuple[str, ...] = IMAGE_CODECS, threads: int | None = None,
                     progress=None, metric=None) -> list[ImagePoint]:
    """The rate / agreement points of sending the dump's images instead of its activations (`metric`:
    the network's own task metric, `featcodec.task.load_metric`)."""
    import h5py

    with h5py.File(dump_path, "r") as f:
        recorded = f.attrs.get("preprocessing")
    spec = json.loads(recorded) if recorded else None
    network = WholeNetwork(model_path, threads, spec, metric)
    images = [resize_for_input(rgb, network.spec) for rgb in dump_images(dump_path, image_dirs)]
    reference = network.run(images)
    points = []
    sweep = image_points(codecs)
    for done, (codec, label, parameter) in enumerate(sweep, 1):
        decoded, sizes, enc, dec, psnrs = [], [], [], [], []
        for rgb in images:
            out, size, e, d = code_image(codec, parameter, rgb)
            decoded.append(out)
            sizes.append(size)
            enc.append(e)
            dec.append(d)
            error = np.mean((out.astype(np.float64) - rgb) ** 2)
            psnrs.append(10 * np.log10(255 ** 2 / error) if error > 0 else float("inf"))
        agreement = network.agreement(reference, network.run(decoded))
        points.append(ImagePoint(codec, label, kbpi=8 * float(np.mean(sizes)) / 1000, agreement=agreement,
                                 samples=len(images), encode_ms=1000 * float(np.mean(enc)),
                                 decode_ms=1000 * float(np.mean(dec)), psnr=float(np.mean(psnrs))))
        if progress:
            progress(done, len(sweep))
    return points


def as_rows(points: list[ImagePoint], dump_path: str) -> list[dict]:
    return [{"dump": os.path.basename(dump_path), **asdict(p)} for p in points]
