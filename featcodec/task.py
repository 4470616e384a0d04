"""Task metrics: what compressing a split layer costs the network's own task.

The tail of the network (split layer → outputs) runs on the original activations and on
the decoded ones; the two results are compared, so no human labels are needed:

* detectors: **agreement mAP@0.5**: the detections on original activations with score ≥
  the manifest's threshold (0.3 by default) are the ground truth; all detections on decoded
  activations are the predictions; COCO-style 101-point interpolated AP at IoU 0.5 per class,
  averaged over the classes present in the ground truth.
* classifiers: **top-1 agreement**: the share of samples whose arg-max class is unchanged.
* dense outputs (maps: segmentation, text or face probability, any other task): **R² agreement**,
  1 − Σ(decoded − original)² / Σ(original − its mean)² per output, clipped at 0, averaged over the
  outputs; 1.0 is unchanged, 0 no better than the outputs' mean.
* any network's own metric (its decoder and post-processing, e.g. a detector's box F1): a Python
  function ``metric(reference, result) -> float`` over the two lists of outputs, loaded from a file
  the user names (`load_metric`, ``bench --metric FILE.py:FUNCTION``): never from a model folder, so
  benchmarking someone's dump runs no code that came with it.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable

import numpy as np

from .errors import InvalidInputError
from .onnxmodel import Manifest, batch_limit, check_cut, extract, load_model, session

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]


class TaskModel:
    """The tail of `model_path` from `layer` to the outputs, with the metric that fits the task.

    `layer` may be a tensor name or a split-point alias from the model's manifest.
    """

    def __init__(self, model_path: str, layer: str | list[str], threads: int | None = None,
                 metric: Metric | None = None):
        self.manifest = Manifest.for_model(model_path)
        self.metric = metric
        self.layers = self.manifest.resolve_layers(layer)
        self.layer = self.layers[0]
        model = load_model(model_path)
        self.task = self.manifest.task or guess_task(model)
        self.outputs = task_outputs(model, self.task, self.manifest)
        check_cut(model, self.layers)
        self.session = session(extract(model, self.layers, self.outputs), threads)
        self.batch_size = batch_limit(self.session, 8)

    def run(self, activations: np.ndarray | list[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """The task outputs for (N, C, H, W) activations (one array per tensor of a multi-tensor split)."""
        batch_size = min(batch_size or self.batch_size, self.batch_size)
        parts = [np.asarray(a, np.float32) for a in (activations if isinstance(activations, list) else [activations])]
        parts = [a[None] if a.ndim == 3 else a for a in parts]
        if len(parts) != len(self.layers):
            raise InvalidInputError(f"the split has {len(self.layers)} tensors, got {len(parts)}")
        batches = [self.session.run(self.outputs, {name: a[i : i + batch_size] for name, a in zip(self.layers, parts)})
                   for i in range(0, len(parts[0]), batch_size)]
        return [np.concatenate([b[k] for b in batches]) for k in range(len(self.outputs))]

    def agreement(self, original, decoded, reference: list[np.ndarray] | None = None) -> float:
        """The task metric of `decoded` against `original` activations (1.0 = no change)."""
        reference = self.run(original) if reference is None else reference
        return agreement(self.task, reference, self.run(decoded), self.manifest.score_threshold, self.metric)

    @property
    def metric_name(self) -> str:
        return metric_name(self.task, self.metric)


METRIC_NAMES = {"detection": "mAP@0.5 agreement", "classification": "top-1 agreement", "dense": "R² agreement"}


def metric_name(task: str, metric: Metric | None = None) -> str:
    return getattr(metric, "label", "custom metric") if metric is not None else METRIC_NAMES[task]


def load_metric(spec: str) -> Metric:
    """The function FUNCTION of the Python file FILE, from ``FILE.py:FUNCTION``: a network's own task
    metric, called as ``metric(reference, result)`` with the task outputs (lists of (N, …) arrays, in the
    manifest's output order) on the original and on the decoded activations; it returns a score that
    rises with quality (1.0 = unchanged), a finite number.

    >>> load_metric("missing.py:f")
    Traceback (most recent call last):
    featcodec.errors.InvalidInputError: --metric missing.py:f: no such file missing.py
    """
    path, _, name = spec.rpartition(":")
    if not path or not name.isidentifier():
        raise InvalidInputError(f"--metric must be FILE.py:FUNCTION, got {spec!r}")
    if not os.path.isfile(path):
        raise InvalidInputError(f"--metric {spec}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"featcodec_metric_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any error it raises is reported in one line
        raise InvalidInputError(f"--metric {spec}: {path} failed to load: {type(err).__name__}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InvalidInputError(f"--metric {spec}: {path} defines no function {name}")

    def metric(reference: list[np.ndarray], result: list[np.ndarray]) -> float:
        try:
            value = float(function(reference, result))
        except Exception as err:
            raise InvalidInputError(f"--metric {spec} failed: {type(err).__name__}: {err}") from None
        if not math.isfinite(value):
            raise InvalidInputError(f"--metric {spec} returned {value}, not a finite score")
        return value

    metric.label = f"{name} ({os.path.basename(path)})"
    return metric


def agreement(task: str, reference: list[np.ndarray], result: list[np.ndarray], score_threshold: float = 0.3,
              metric: Metric | None = None) -> float:
    """The task metric of outputs `result` against `reference` (lists, one array per output); `metric`:
    the network's own, instead of the task's."""
    if metric is not None:
        return metric(reference, result)
    if task == "detection":
        return detection_agreement(reference[0], result[0], score_threshold)
    if task == "classification":
        return top1_agreement(reference[0], result[0])
    return dense_agreement(reference, result)


def task_outputs(model, task: str, manifest: Manifest) -> list[str]:
    """The outputs the task metric reads: the detections or the logits, or every output of a dense task."""
    outputs = [o.name for o in model.graph.output]
    if task == "dense":
        return outputs
    return [manifest.detections_output or outputs[0]]


def guess_task(model) -> str:
    """detection for (N, K, 6) boxes, classification for (N, classes) logits, dense otherwise."""
    output = model.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if len(dims) == 3 and dims[2].dim_value == 6:
        return "detection"
    if len(dims) == 2:
        return "classification"
    return "dense"


def dense_agreement(reference: list[np.ndarray], result: list[np.ndarray]) -> float:
    """Mean over outputs of R² = 1 − SSE / SST, clipped at 0 (1.0 when an output is constant and unchanged)."""
    scores = []
    for r, o in zip(reference, result):
        r, o = np.asarray(r, np.float64), np.asarray(o, np.float64)
        sse, sst = float(np.sum((o - r) ** 2)), float(np.sum((r - r.mean()) ** 2))
        scores.append(1.0 - sse / sst if sst > 0 else float(sse == 0))
    return float(np.mean(np.clip(scores, 0.0, 1.0)))


def top1_agreement(reference: np.ndarray, result: np.ndarray) -> float:
    reference = reference.reshape(len(reference), -1)
    result = result.reshape(len(result), -1)
    return float(np.mean(reference.argmax(1) == result.argmax(1)))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (x1, y1, x2, y2): a (n, 4) × b (m, 4) → (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:4] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:4] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def pooled_f1(pairs, iou, threshold: float = 0.5) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) pooled over images, each image's boxes matched greedily one to one,
    the pairs of highest IoU first, each at IoU ≥ `threshold`; 1.0 when no image has a box. `pairs`
    yields (reference boxes, result boxes) per image, `iou(a, b)` their (n, m) IoU matrix: the core of a
    network's own detection metric for ``bench --metric`` (``examples/metrics/``).

    >>> boxes = np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    >>> pooled_f1([(boxes, boxes + [0, 0, 1, 1]), (boxes[:1], boxes[:0])], box_iou)
    0.8
    """
    tp = fp = fn = 0
    for reference, result in pairs:
        matched = 0
        if len(reference) and len(result):
            overlap = iou(reference, result)
            used_reference, used_result = set(), set()
            for flat in np.argsort(-overlap, axis=None, kind="stable"):
                r, t = divmod(int(flat), overlap.shape[1])
                if overlap[r, t] < threshold:
                    break
                if r not in used_reference and t not in used_result:
                    used_reference.add(r)
                    used_result.add(t)
                    matched += 1
        tp, fp, fn = tp + matched, fp + len(result) - matched, fn + len(reference) - matched
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def average_precision(scores: np.ndarray, matched: np.ndarray, n_truth: int) -> float:
    """COCO-style 101-point interpolated AP from per-prediction scores and true-positive flags."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    fp = np.cumsum(~matched[order])
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1e-12)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at recall >= r
    thresholds = np.linspace(0, 1, 101)
    at = np.searchsorted(recall, thresholds, side="left")
    return float(np.mean(np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0)))


def detection_agreement(reference: np.ndarray, result: np.ndarray, score_threshold: float = 0.3,
                        iou_threshold: float = 0.5) -> float:
    """Agreement mAP@`iou_threshold` of detections `result` against `reference` (both (N, K, 6)).

    Returns 1.0 when the reference has no detection above the threshold and neither does the
    result (nothing to find, nothing invented), and 0.0 when only the result has some.
    """
    classes = sorted({int(c) for dets in reference for c in dets[dets[:, 4] >= score_threshold, 5]})
    if not classes:
        return 1.0 if not (result[..., 4] >= score_threshold).any() else 0.0
    aps = []
    for cls in classes:
        scores, matched, n_truth = [], [], 0
        for ref, res in zip(reference, result):
            truth = ref[(ref[:, 4] >= score_threshold) & (ref[:, 5] == cls), :4]
            preds = res[res[:, 5] == cls]
            preds = preds[np.argsort(-preds[:, 4], kind="stable")]
            n_truth += len(truth)
            taken = np.zeros(len(truth), bool)
            ious = box_iou(preds[:, :4], truth) if len(truth) else np.zeros((len(preds), 0))
            for row in range(len(preds)):
                candidates = np.where(~taken & (ious[row] >= iou_threshold), ious[row], -1.0)
                best = int(candidates.argmax()) if len(truth) else -1
                hit = best >= 0 and candidates[best] >= 0
                if hit:
                    taken[best] = True
                matched.append(hit)
            scores.extend(preds[:, 4])
        aps.append(average_precision(np.asarray(scores), np.asarray(matched, bool), n_truth) if scores else 0.0)
    return float(np.mean(aps))
