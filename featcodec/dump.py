"""``featcodec dump``: run a model on images and store split-layer activations in HDF5.

File layout (one file per dump)::

    /<alias or tensor name>   (N, C, H, W) float32 activations, one dataset per layer;
                              attrs: layer, model, model_sha256, images, preprocessing
    /<alias>/<k>              a split point of several tensors (an FPN's levels): one dataset
                              per tensor, k = 0, 1, … in the split's order; attrs as above plus
                              split (the alias) and part (k); the group's attrs featcodec_role=split
    /reference/<output>       the model's own outputs per image (attrs featcodec_role=reference)
    /images                   the image file names (attrs featcodec_role=meta); a video frame is
                              named ``clip.mp4#frame=K``
    /frames                   per sample: the frame index in its video, -1 for a photo (meta);
                              attrs fps: JSON {video file name: frames per second}
    /sources                  per sample: the absolute path of its photo or video (meta), so that
                              remote inference (`featcodec.remote`) can code the image itself

Videos (anything the bundled ffmpeg reads: .mp4, .avi, .mkv, …) give their frames in order,
every `every`-th, at most `max_frames` per video: a feature sequence for ``--gop`` coding.

Reading ``dump.h5`` as a whole in featcodec yields only the activation datasets.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import __version__
from .errors import InvalidInputError
from .io import atomic_write
from .onnxmodel import (
    Manifest,
    batch_limit,
    default_preprocessing,
    expand_images,
    load_image,
    load_model,
    preprocess,
    session,
    sha256_file,
    with_outputs,
)


@dataclass
class DumpSummary:
    images: int
    layers: dict[str, tuple[int, ...]]
    seconds: float


COMPRESSIONS = {"gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
                "lzf": {"compression": "lzf", "shuffle": True}, "none": {}}


AUGMENTATIONS = ("flip", "zoom", "shrink")
MAX_LISTING = 32_000  # bytes of the JSON list of sample names kept as an attribute
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def video_frames(path: str, every: int = 1, max_frames: int | None = None):
    """(frame index, uint8 RGB frame) of a video, every `every`-th from the first, at most
    `max_frames`; and the video's frame rate first, as one float."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        raise InvalidInputError(f"cannot read video {path}: {str(err).strip().splitlines()[-1] if str(err) else err}"
                                ) from None
    yield float(meta.get("fps") or 0.0)
    width, height = meta["size"]
    kept = 0
    try:
        for index, raw in enumerate(reader):
            if max_frames is not None and kept >= max_frames:
                break
            if index % every == 0:
                kept += 1
                yield index, np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()


RANDOM_CROP = "crop"  # "crop3": the fourth random crop of a photo (`augment`)
# `train MODEL.onnx PHOTOS`: random crops per photo up to this many bytes of float32 maps in all (the trainer
# holds them in memory), at most MAX_RANDOM_CROPS: 200 photos overfit a bottleneck, and crops at other
# scales are new inputs to the network where a flip is half a new one (on a classifier's small maps 48
# beat 12 on validation: bench/results/fer_training_selection.md).
TRAINING_DUMP_BYTES = 4e9
MAX_RANDOM_CROPS = 48


def augment(rgb: np.ndarray, kind: str) -> np.ndarray:
    """A variant of an image for training data: mirrored, zoomed in (centre crop of 3/4), shrunk to 2/3,
    or ``cropK``: the K-th random crop (a window of 35-90 % of each side, mirrored half the time), drawn
    from K and the image's size alone, so that the same name gives the same pixels again (remote
    inference remakes a dump's images from their names).

    >>> image = np.zeros((100, 200, 3), np.uint8)
    >>> augment(image, "crop0").shape, augment(image, "crop1").shape, augment(image, "crop0").shape
    ((50, 95, 3), (43, 93, 3), (50, 95, 3))
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    if kind == "flip":
        return np.ascontiguousarray(rgb[:, ::-1])
    if kind == "zoom":
        return np.ascontiguousarray(rgb[h // 8 : h - h // 8, w // 8 : w - w // 8])
    if kind == "shrink":
        return np.asarray(Image.fromarray(rgb).resize((max(1, 2 * w // 3), max(1, 2 * h // 3)), Image.BILINEAR))
    if kind.startswith(RANDOM_CROP) and kind[len(RANDOM_CROP):].isdigit():
        rng = np.random.default_rng([int(kind[len(RANDOM_CROP):]), h, w])
        ch, cw = (max(1, round(side * rng.uniform(0.35, 0.9))) for side in (h, w))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = rgb[top : top + ch, left : left + cw]
        return np.ascontiguousarray(window[:, ::-1] if rng.random() < 0.5 else window)
    raise ValueError(f"unknown augmentation {kind!r}: use {', '.join(AUGMENTATIONS)} or {RANDOM_CROP}K")


def training_sampling(model_path: str, layers: list[str], images: list[str], budget: float, fixed_variants: int,
                      most_crops: int) -> tuple[int, int]:
    """(random crops per photo, every how many video frames) that keep a dump of `layers` of `images`
    under `budget` bytes of float32 maps: the videos' frames take at most half of it when there are
    photos (all of it otherwise), and each photo with its `fixed_variants` and its crops, at most
    `most_crops`, what is left. The bytes of one sample are measured on the first image."""
    import imageio_ffmpeg

    paths = expand_images(images, VIDEO_SUFFIXES)
    if not paths:
        raise InvalidInputError("no images or videos given")
    photos = [p for p in paths if not is_video(p)]
    frames: dict[str, int] = {}
    for path in paths:
        if is_video(path):
            try:
                frames[path] = imageio_ffmpeg.count_frames_and_secs(path)[0]
            except (OSError, RuntimeError) as err:
                raise InvalidInputError(f"cannot read video {path}: {err}") from None
    tensors, _, sess, spec = _layer_session(model_path, layers)
    if photos:
        first = load_image(photos[0])
    else:
        reader = video_frames(paths[0])
        next(reader)  # the frame rate
        first = next(reader)[1]
        reader.close()
    maps = sess.run(list(tensors.values()), {spec["input"]: preprocess(first, spec)[None]})
    sample = sum(int(np.prod(m.shape[1:])) * 4 for m in maps)
    affordable = int(budget // sample)
    for_frames = affordable // 2 if photos else affordable
    every = max(1, -(-sum(frames.values()) // max(1, for_frames)))
    kept_frames = sum(-(-n // every) for n in frames.values())
    if not photos:
        return 0, every
    crops = (affordable - kept_frames) // len(photos) - 1 - fixed_variants
    return max(0, min(most_crops, crops)), every


def _layer_session(model_path: str, layers: list[str], threads: int | None = None):
    """(dataset → tensor of `layers`, the model, an onnxruntime session that also outputs those
    tensors, the preprocessing spec: the manifest's, else guessed from the graph)."""
    manifest = Manifest.for_model(model_path)
    tensors = layer_datasets(manifest, layers)
    model = load_model(model_path)
    sess = session(with_outputs(model, list(tensors.values())), threads)
    return tensors, model, sess, manifest.preprocessing or default_preprocessing(sess)


def layer_datasets(manifest: Manifest, layers: list[str]) -> dict[str, str]:
    """Dataset name → tensor for `layers`: a layer is stored under its own name, and a split point of
    several tensors (an FPN's levels) as ``NAME/0``, ``NAME/1``, … in the split's order."""
    datasets = {}
    for name in dict.fromkeys(layers):
        resolved = manifest.resolve_layers(name)
        if len(resolved) == 1:
            datasets[name] = resolved[0]
        else:
            datasets.update({f"{name}/{k}": tensor for k, tensor in enumerate(resolved)})
    return datasets


def dump(model_path: str, layers: list[str], images: list[str], output: str, *, batch_size: int = 4,
         force: bool = False, threads: int | None = None, compression: str = "gzip",
         augmentations: tuple[str, ...] = (), random_crops: int = 0, every: int = 1,
         max_frames: int | None = None, progress: Callable[[int, int], None] | None = None) -> DumpSummary:
    """Run `model_path` on `images` (photos and videos) and write the activations of `layers` to
    HDF5 `output`; a photo also contributes its `augmentations` and `random_crops` random crops, a
    video every `every`-th frame, at most `max_frames`."""
    import h5py

    tensors, model, sess, spec = _layer_session(model_path, layers, threads)
    splits = {key.rpartition("/")[0] for key in tensors if key not in layers}
    model_outputs = [o.name for o in model.graph.output]
    batch_size = batch_limit(sess, batch_size)
    for kind in augmentations:
        if kind not in AUGMENTATIONS:
            raise InvalidInputError(f"unknown augmentation {kind!r}: use {', '.join(AUGMENTATIONS)}")
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise InvalidInputError("--every and --max-frames must be at least 1")
    if random_crops < 0:
        raise InvalidInputError("--random-crops must be 0 or more")
    variants = (*augmentations, *(f"{RANDOM_CROP}{k}" for k in range(random_crops)))
    paths = expand_images(images, VIDEO_SUFFIXES)
    fps: dict[str, float] = {}
    total = len([p for p in paths if not is_video(p)]) * (1 + len(variants))  # frames are counted as read

    def inputs():
        """(name, frame index or -1, RGB image, source path) in order: photos with their variants (image-major, so
        that a split by position keeps every variant of a validation photo out of training), video frames."""
        for path in paths:
            name = os.path.basename(path)
            if is_video(path):
                frames = video_frames(path, every, max_frames)
                fps[name] = next(frames)
                for index, rgb in frames:
                    yield f"{name}#frame={index}", index, rgb, os.path.abspath(path)
                continue
            rgb = load_image(path)
            for kind in ("", *variants):
                variant = augment(rgb, kind) if kind else rgb
                yield name + (f"#{kind}" if kind else ""), -1, variant, os.path.abspath(path)

    common = {
        "model": os.path.basename(model_path), "model_sha256": sha256_file(model_path),
        "preprocessing": json.dumps(spec, sort_keys=True), "featcodec": __version__,
    }
    names: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    start = time.perf_counter()

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in common.items():
                f.attrs[key] = value
            datasets = {}
            frame_indices: list[int] = []
            sources: list[str] = []
            items = inputs()
            while batch_items := list(itertools.islice(items, batch_size)):
                begin = len(names)
                names.extend(item[0] for item in batch_items)
                frame_indices.extend(item[1] for item in batch_items)
                sources.extend(item[3] for item in batch_items)
                batch = np.stack([preprocess(item[2], spec) for item in batch_items])
                fetched = sess.run(list(tensors.values()) + model_outputs, {spec["input"]: batch})
                results = dict(zip(list(tensors) + [f"reference/{o}" for o in model_outputs], fetched))
                for key, value in results.items():
                    if key not in datasets:
                        datasets[key] = _create(f, key, value, compression)
                        if key in tensors:
                            datasets[key].attrs.update({**common, "layer": tensors[key]})
                            split, _, part = key.rpartition("/")
                            if split in splits:
                                datasets[key].attrs.update(split=split, part=int(part))
                                f[split].attrs["featcodec_role"] = "split"
                        else:
                            datasets[key].attrs["featcodec_role"] = "reference"
                    datasets[key].resize(len(names), axis=0)
                    datasets[key][begin:] = value
                if progress:
                    progress(len(names), max(total, len(names)))
            if not names:
                raise InvalidInputError("the videos given have no frames")
            meta = {"images": np.array(names, dtype=h5py.string_dtype()),
                    "frames": np.array(frame_indices, np.int64),
                    "sources": np.array(sources, dtype=h5py.string_dtype())}
            for key, value in meta.items():
                f.create_dataset(key, data=value).attrs["featcodec_role"] = "meta"
            f["frames"].attrs["fps"] = json.dumps(fps)
            # the names as an attribute too, where they fit (HDF5 attributes stop at 64 KiB: a long
            # video's frame names live in /images alone)
            listing = json.dumps(names)
            if len(listing) > MAX_LISTING:
                listing = json.dumps({"see": "/images", "count": len(names)})
            f.attrs["images"] = listing
            for key in tensors:
                datasets[key].attrs["images"] = listing
            shapes.update({k: datasets[k].shape for k in tensors})

    atomic_write(output, write, force)
    return DumpSummary(len(names), shapes, time.perf_counter() - start)


def _create(f, key: str, value: np.ndarray, compression: str):
    # One chunk per sample: a reader (convert, bench) streams sample by sample. The first axis
    # grows as samples come (a video's frame count is known once it has been read).
    return f.create_dataset(key, shape=(0, *value.shape[1:]), maxshape=(None, *value.shape[1:]),
                            dtype=value.dtype, chunks=(1, *value.shape[1:]), **COMPRESSIONS[compression])
