"""ONNX models: manifests, image preprocessing, splitting at a tensor, running to a layer.

Works for any ONNX model and tensor name. A model may have a ``manifest.json`` (or
``<model>.json``) beside it describing its preprocessing, task and named split points
(see ``models/reference/manifest.json``); without one, preprocessing is inferred from the
input shape (stretch to the input size, RGB scaled to 0..1).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _onnx():
    import onnx

    return onnx


def _ort():
    import onnxruntime

    return onnxruntime


@dataclass
class Manifest:
    """What featcodec knows about a model beyond its graph."""

    preprocessing: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    detections_output: str | None = None
    score_threshold: float = 0.3
    split_points: dict[str, str | list[str]] = field(default_factory=dict)
    name: str | None = None
    training_loss: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model_path: str | os.PathLike) -> Manifest:
        path = Path(model_path)
        for candidate in (path.with_suffix(".json"), path.parent / "manifest.json"):
            if candidate.exists():
                data = json.loads(candidate.read_text())
                if data.get("file", path.name) == path.name:
                    known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
                    return cls(**known)
        return cls()

    def resolve_layer(self, name: str) -> str:
        """A split-point alias (``S4``) to its tensor name; other names pass through."""
        tensors = self.resolve_layers(name)
        if len(tensors) != 1:
            raise InvalidInputError(f"split point {name!r} is {len(tensors)} tensors; this needs one")
        return tensors[0]

    def resolve_layers(self, names: str | list[str]) -> list[str]:
        """A split point as its tensor names: an alias (whose value may be a list, an FPN's levels),
        a comma-separated list of names or aliases, or a list."""
        parts = names.split(",") if isinstance(names, str) else list(names)
        tensors = []
        for part in parts:
            value = self.split_points.get(part.strip(), part.strip())
            tensors.extend([value] if isinstance(value, str) else value)
        return tensors


def load_model(model_path: str | os.PathLike):
    if not os.path.exists(model_path):
        raise InvalidInputError(f"no such model: {model_path}")
    try:
        return _onnx().load(str(model_path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise InvalidInputError(f"{model_path}: not a readable ONNX model ({err})") from err


def tensor_names(model) -> set[str]:
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        names.update(node.output)
    return names


def _producers(model) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def _upstream_inputs(model, outputs: list[str], stop: set[str]) -> set[str]:
    """Graph inputs (not initializers) that `outputs` depend on without passing through `stop`."""
    producers = _producers(model)
    graph_inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    reached, stack, seen = set(), list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        if name in graph_inputs:
            reached.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) may read outer-scope values
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    for inner in graph.node:
                        stack.extend(i for i in inner.input if i)
    return reached


def check_cut(model, tensors: str | list[str]) -> None:
    """Refuse `tensors` (one, or the set of an FPN's levels) unless every path from the inputs to
    the outputs passes through them."""
    tensors = [tensors] if isinstance(tensors, str) else list(tensors)
    known = tensor_names(model)
    ends = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for tensor in tensors:
        if tensor not in known:
            raise InvalidInputError(f"model has no tensor {tensor!r}")
        if tensor in ends:
            raise InvalidInputError(f"{tensor!r} is a model input or output, not an inner cut")
    if len(set(tensors)) != len(tensors):
        raise InvalidInputError("a split names a tensor twice")
    outputs = [o.name for o in model.graph.output]
    leaking = _upstream_inputs(model, outputs, stop=set(tensors))
    what = repr(tensors[0]) if len(tensors) == 1 else f"the set {', '.join(tensors)}"
    if leaking:
        raise InvalidInputError(
            f"{what} does not cut the graph in two: the outputs still depend on {sorted(leaking)} "
            "by another path (a skip connection, or an FPN level left out?)"
        )
    for tensor in tensors:
        if not _upstream_inputs(model, [tensor], stop=set()):
            raise InvalidInputError(f"{tensor!r} does not depend on the model input")
    unused = [t for t in tensors if not _reaches(model, t, outputs, set(tensors) - {t})]
    if unused:
        raise InvalidInputError(f"{unused[0]!r} is not needed by the outputs once the rest of the split is known")


def _reaches(model, tensor: str, outputs: list[str], stop: set[str]) -> bool:
    """Whether some output depends on `tensor` by a path that avoids `stop`."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    targets, stack, seen = set(outputs), [tensor], set()
    while stack:
        name = stack.pop()
        if name in targets:
            return True
        if name in seen:
            continue
        seen.add(name)
        for node in consumers.get(name, []):
            stack.extend(o for o in node.output if o not in stop)
    return False


def extract(model, inputs: list[str], outputs: list[str]):
    """The sub-model from `inputs` to `outputs`, in memory."""
    from onnx.utils import Extractor

    try:
        # The extractor needs the type of every boundary tensor, which only shape inference records.
        inferred = _onnx().shape_inference.infer_shapes(model)
        return Extractor(inferred).extract_model(inputs, outputs)
    except Exception as err:
        raise InvalidInputError(f"cannot extract {inputs} -> {outputs}: {err}") from err


def split_model(model, tensors: str | list[str]):
    """(head, tail) ModelProtos of `model` cut at `tensors` (one, or a set)."""
    tensors = [tensors] if isinstance(tensors, str) else list(tensors)
    check_cut(model, tensors)
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    head = extract(model, graph_inputs, tensors)
    tail = extract(model, tensors, [o.name for o in model.graph.output])
    return head, tail


def session(model, threads: int | None = None):
    """An onnxruntime CPU session for a ModelProto or a path."""
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    try:
        return ort.InferenceSession(str(source) if isinstance(source, os.PathLike) else source, options,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:
        raise BackendError(f"onnxruntime cannot load the model: {err}") from err


def batch_limit(sess, wanted: int) -> int:
    """`wanted`, or fewer where the session's first input has a fixed batch (networks exported with batch 1)."""
    fixed = sess.get_inputs()[0].shape[0]
    return min(wanted, fixed) if isinstance(fixed, int) and fixed > 0 else wanted


def channels_last(shape) -> bool:
    """Whether a 4-D image input's shape is (N, H, W, 3) rather than (N, 3, H, W)."""
    return shape[3] == 3 and shape[1] != 3


def with_outputs(model, names: list[str]):
    """A copy of `model` that also outputs the tensors `names` (float32 assumed for inner tensors)."""
    onnx = _onnx()
    known = tensor_names(model)
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidInputError(f"model has no tensor {missing[0]!r}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    types = {v.name: v for v in list(copy.graph.value_info) + list(copy.graph.input)}
    for name in names:
        if name not in existing:
            value_info = types.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            copy.graph.output.append(value_info)
    return copy


def verify_split(model, head, tail, seed: int = 0, size: tuple[int, int] | None = None) -> float:
    """Largest difference between tail(head(x)) and model(x) on a random input (dynamic height and
    width set to `size`), relative to each output's range."""
    full = session(model)
    feeds = random_input(full, seed, size=size)
    expected = dict(zip([o.name for o in full.get_outputs()], full.run(None, feeds)))
    head_session = session(head)
    middle = dict(zip([o.name for o in head_session.get_outputs()], head_session.run(None, feeds)))
    tail_session = session(tail)
    got = dict(zip([o.name for o in tail_session.get_outputs()],
                   tail_session.run(None, {i.name: middle[i.name] for i in tail_session.get_inputs()})))
    worst = 0.0
    for name, value in expected.items():
        scale = max(float(np.abs(value).max()), 1e-12)
        worst = max(worst, float(np.abs(got[name].astype(np.float64) - value).max()) / scale)
    return worst


def random_input(sess, seed: int = 0, high: float = 255.0,
                 size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Random feeds for every input of a session (dynamic dimensions set to 1, or the spatial ones
    of a 4-D input to `size`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if size and len(shape) == 4:
            spatial = (1, 2) if channels_last(inp.shape) else (2, 3)
            for axis, n in zip(spatial, size):
                if not (isinstance(inp.shape[axis], int) and inp.shape[axis] > 0):
                    shape[axis] = n
        feeds[inp.name] = (rng.random(shape) * high).astype(np.float32)
    return feeds


# --- images -----------------------------------------------------------------------------------

def expand_images(specs: list[str], also: tuple[str, ...] = ()) -> list[str]:
    """Files, directories (their images, and files ending in `also`, sorted) and globs, in the order given."""
    paths: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            paths += sorted(str(p) for p in Path(spec).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + also)
        elif any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise InvalidInputError(f"no image matches {spec!r}")
            paths += matches
        elif os.path.exists(spec):
            paths.append(spec)
        else:
            raise InvalidInputError(f"no such image: {spec}")
    if not paths:
        raise InvalidInputError("no images given")
    return paths


def load_image(path: str) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InvalidInputError(f"cannot read image {path}: {err}") from err


def default_preprocessing(sess) -> dict[str, Any]:
    inp = sess.get_inputs()[0]
    shape = inp.shape
    nchw = len(shape) == 4 and shape[1] == 3
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    if not all(isinstance(d, int) for d in (h, w)):
        raise InvalidInputError(f"input {inp.name} has a dynamic size {shape}: describe it in a manifest.json")
    return {"input": inp.name, "layout": "nchw" if nchw else "nhwc", "size": [h, w], "resize": "stretch",
            "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def preprocess(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """uint8 RGB (H, W, 3) → the model's float32 input for one image (no batch axis)."""
    return finish_input(resize_for_input(rgb, spec), spec)


RESIZES = ("stretch", "letterbox", "shorter-then-center-crop")
CROP_FRACTION = 0.875  # ImageNet's habit: resize the shorter side to 256, crop 224


def resize_for_input(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The image at the size the network sees it, before any padding: what a device that sends the
    image (remote inference) would code.

    stretch: to the input size; letterbox: the longer side fitted (padded later, see `finish_input`);
    shorter-then-center-crop: the shorter side resized to ``resize_shorter`` (default size / 0.875),
    then the centre cropped to the input size, as classifiers are fed."""
    from PIL import Image

    height, width = spec["size"]
    h, w = rgb.shape[:2]
    mode = spec.get("resize", "stretch")
    if mode == "letterbox":
        s = min(height / h, width / w)
        return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
    if mode == "shorter-then-center-crop":
        shorter = int(spec.get("resize_shorter") or round(max(height, width) / CROP_FRACTION))
        s = max(shorter / min(h, w), height / h, width / w)
        nh, nw = max(height, round(h * s)), max(width, round(w * s))
        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        top, left = (nh - height) // 2, (nw - width) // 2
        return np.ascontiguousarray(resized[top : top + height, left : left + width])
    if mode != "stretch":
        raise InvalidInputError(f"unknown resize {mode!r} in the preprocessing (known: {', '.join(RESIZES)})")
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def finish_input(resized: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """A `resize_for_input` image (or its decoded copy) → the model's float32 input: padded onto the
    letterbox canvas (``pad_value``, at the ``pad_position`` center or top-left), colour order,
    scale, mean and std, layout."""
    height, width = spec["size"]
    if spec.get("resize", "stretch") == "letterbox":
        nh, nw = resized.shape[:2]
        canvas = np.full((height, width, 3), spec.get("pad_value", 0), np.uint8)
        top_left = spec.get("pad_position", "center") == "top-left"
        dy, dx = (0, 0) if top_left else ((height - nh) // 2, (width - nw) // 2)
        canvas[dy : dy + nh, dx : dx + nw] = resized
    else:
        canvas = resized
    if spec.get("color", "rgb") == "bgr":
        canvas = canvas[..., ::-1]
    x = canvas.astype(np.float32) * float(spec.get("scale", 1.0))
    x = (x - np.asarray(spec.get("mean", 0.0), np.float32)) / np.asarray(spec.get("std", 1.0), np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if spec.get("layout") == "nchw" else x)


# --- writing a manifest -----------------------------------------------------------------------

TASKS = ("detection", "classification", "dense")


def describe(model_path: str, *, task: str | None = None, size: tuple[int, int] | None = None,
             resize: str | None = None, mean=None, std=None, scale: float | None = None, color: str = "rgb",
             layout: str | None = None, pad_value: int = 0, pad_position: str = "center",
             resize_shorter: int | None = None, split_points: dict[str, list[str]] | None = None,
             detections_output: str | None = None, score_threshold: float = 0.3,
             loss: str | None = None, loss_outputs: list[str] | None = None,
             loss_threshold: dict | None = None) -> dict[str, Any]:
    """A manifest for `model_path`: what the options say, the rest guessed from the graph (the input,
    its layout and static size, the outputs and from them the task); each split point is checked to
    cut the graph. `featcodec manifest` writes it.

    >>> m = describe("models/networks/mtcnn_pnet/mtcnn_pnet.onnx", size=(231, 308), mean=127.5, std=128,
    ...              scale=1.0, split_points={"P2": ["prelu2"]})
    >>> m["task"], m["preprocessing"]["layout"], m["split_points"]
    ('dense', 'nchw', {'P2': 'prelu2'})
    """
    from .task import guess_task

    model = load_model(model_path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidInputError(f"{model_path} takes {len(inputs)} inputs; featcodec feeds one image")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InvalidInputError(f"input {inputs[0].name} is {len(dims)}-D, not an image batch "
                                "(N, C, H, W) or (N, H, W, C)")
    layout = layout or ("nhwc" if channels_last(dims) else "nchw")
    static = (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])
    if size is None:
        if None in static:
            raise InvalidInputError(f"input {inputs[0].name} has a dynamic size: give --size")
        size = static
    elif None not in static and tuple(size) != tuple(static):
        raise InvalidInputError(f"input {inputs[0].name} is {static[0]}×{static[1]}, not {size[0]}×{size[1]}")
    outputs = [o.name for o in model.graph.output]
    task = task or guess_task(model)
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    resize = resize or ("shorter-then-center-crop" if task == "classification" else "letterbox")
    if resize not in RESIZES:
        raise InvalidInputError(f"unknown resize {resize!r} (known: {', '.join(RESIZES)})")

    def three(value, default):
        return [float(x) for x in np.broadcast_to(np.asarray(default if value is None else value, float), 3)]

    preprocessing = {"input": inputs[0].name, "layout": layout, "size": [int(size[0]), int(size[1])],
                     "resize": resize, "color": color, "scale": 1 / 255 if scale is None else float(scale),
                     "mean": three(mean, 0.0), "std": three(std, 1.0)}
    if resize == "letterbox":
        preprocessing.update(pad_value=int(pad_value), pad_position=pad_position)
    if resize == "shorter-then-center-crop":
        preprocessing["resize_shorter"] = int(resize_shorter or round(max(size) / CROP_FRACTION))
    points = {}
    for alias, tensors in (split_points or {}).items():
        check_cut(model, tensors)
        points[alias] = tensors[0] if len(tensors) == 1 else list(tensors)
    manifest = {"name": Path(model_path).stem, "file": Path(model_path).name, "sha256": sha256_file(model_path),
                "task": task, "outputs": outputs, "preprocessing": preprocessing, "split_points": points}
    if task == "detection":
        if detections_output and detections_output not in outputs:
            raise InvalidInputError(f"{detections_output!r} is not an output of the model ({', '.join(outputs)})")
        manifest.update(detections_output=detections_output or outputs[0], score_threshold=float(score_threshold))
    if loss_threshold:  # {"score": output, "channel": c, "threshold": t}: the threshold loss
        loss = loss or "threshold"
        if loss != "threshold":
            raise InvalidInputError(f"a loss threshold is for the threshold loss, not {loss}")
    if loss or loss_outputs:
        unknown = [o for o in [*(loss_outputs or []), *([loss_threshold["score"]] if loss_threshold else [])]
                   if o not in tensor_names(model)]
        if unknown:
            raise InvalidInputError(f"model has no tensor {unknown[0]!r}")
        manifest["training_loss"] = {k: v for k, v in (("kind", loss), ("outputs", loss_outputs)) if v}
        manifest["training_loss"].update(loss_threshold or {})
    return manifest
