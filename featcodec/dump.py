"""``featcodec dump``: run a model on images and store split-layer activations in HDF5.

File layout (one file per dump)::

    /<alias or tensor name>   (N, C, H, W) float32 activations, one dataset per layer;
                              attrs: layer, model, model_sha256, images, preprocessing
    /reference/<output>       the model's own outputs per image (attrs featcodec_role=reference)
    /images                   the image file names (attrs featcodec_role=meta)

Reading ``dump.h5`` as a whole in featcodec yields only the activation datasets.
"""

from __future__ import annotations

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


def augment(rgb: np.ndarray, kind: str) -> np.ndarray:
    """A variant of an image for training data: mirrored, zoomed in (centre crop of 3/4) or shrunk to 2/3."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if kind == "flip":
        return np.ascontiguousarray(rgb[:, ::-1])
    if kind == "zoom":
        return np.ascontiguousarray(rgb[h // 8 : h - h // 8, w // 8 : w - w // 8])
    if kind == "shrink":
        return np.asarray(Image.fromarray(rgb).resize((max(1, 2 * w // 3), max(1, 2 * h // 3)), Image.BILINEAR))
    raise ValueError(f"unknown augmentation {kind!r}: use {', '.join(AUGMENTATIONS)}")


def dump(model_path: str, layers: list[str], images: list[str], output: str, *, batch_size: int = 4,
         force: bool = False, threads: int | None = None, compression: str = "gzip",
         augmentations: tuple[str, ...] = (),
         progress: Callable[[int, int], None] | None = None) -> DumpSummary:
    """Run `model_path` on `images` and write the activations of `layers` to HDF5 `output`."""
    import h5py

    manifest = Manifest.for_model(model_path)
    tensors = {name: manifest.resolve_layer(name) for name in dict.fromkeys(layers)}
    model = load_model(model_path)
    model_outputs = [o.name for o in model.graph.output]
    sess = session(with_outputs(model, list(tensors.values())), threads)
    spec = manifest.preprocessing or default_preprocessing(sess)
    for kind in augmentations:
        if kind not in AUGMENTATIONS:
            raise InvalidInputError(f"unknown augmentation {kind!r}: use {', '.join(AUGMENTATIONS)}")
    # Image-major order: the variants of one photo stay together, so a split by position keeps
    # every variant of a validation photo out of training.
    sources = [(p, kind) for p in expand_images(images) for kind in ("", *augmentations)]
    paths = [p for p, _ in sources]
    names = [os.path.basename(p) + (f"#{kind}" if kind else "") for p, kind in sources]
    common = {
        "model": os.path.basename(model_path), "model_sha256": sha256_file(model_path),
        "images": json.dumps(names), "preprocessing": json.dumps(spec, sort_keys=True),
        "featcodec": __version__,
    }
    shapes: dict[str, tuple[int, ...]] = {}
    start = time.perf_counter()

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in common.items():
                f.attrs[key] = value
            f.create_dataset("images", data=np.array(names, dtype=h5py.string_dtype())).attrs["featcodec_role"] = "meta"
            datasets = {}
            for begin in range(0, len(paths), batch_size):
                batch_sources = sources[begin : begin + batch_size]
                batch = np.stack([preprocess(augment(load_image(p), kind) if kind else load_image(p), spec)
                                  for p, kind in batch_sources])
                fetched = sess.run(list(tensors.values()) + model_outputs, {spec["input"]: batch})
                results = dict(zip(list(tensors) + [f"reference/{o}" for o in model_outputs], fetched))
                for key, value in results.items():
                    if key not in datasets:
                        datasets[key] = _create(f, key, value, len(paths), compression)
                        if key in tensors:
                            datasets[key].attrs.update({**common, "layer": tensors[key]})
                        else:
                            datasets[key].attrs["featcodec_role"] = "reference"
                    datasets[key][begin : begin + len(batch_sources)] = value
                if progress:
                    progress(begin + len(batch_sources), len(paths))
            shapes.update({k: datasets[k].shape for k in tensors})

    atomic_write(output, write, force)
    return DumpSummary(len(paths), shapes, time.perf_counter() - start)


def _create(f, key: str, value: np.ndarray, n: int, compression: str):
    # One chunk per sample: a reader (convert, bench) streams sample by sample.
    return f.create_dataset(key, shape=(n, *value.shape[1:]), dtype=value.dtype,
                            chunks=(1, *value.shape[1:]), **COMPRESSIONS[compression])
