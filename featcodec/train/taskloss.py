"""Losses through a network's tail: distillation against the network's own outputs on the original
activations, so a codec for any split of any network trains on what the network does with it.

The kind follows the network's manifest (``training_loss``; see docs/networks.md), else its task:

* ``centernet``: CenterNet's heatmaps (error weighted towards the peaks) and box sizes at the peaks;
  the reference detector's manifest names it with its head outputs. ``decision_weight`` adds the
  ``threshold`` loss's decision term on its detections (local maxima of either map) at the
  manifest's score threshold (off by default: on the reference detector it did not lift agreement's
  top, bench/results/learned_selection.md).
* ``kl``: classifiers: KL divergence of the softened class distributions (temperature T, Hinton
  et al.), ×T² so its gradients keep their scale; the default for ``classification``.
* ``nmse``: every other output set (detector heads, dense maps): squared error of each output
  over its variance, summed over outputs; the default otherwise. The variance is the reference
  outputs' on whole training maps once `calibrate` has seen some (the trainers call it), else the
  batch's: on a sparse map (a text detector's crop without text) the batch's is near zero and the
  loss explodes.
* ``threshold``: ``nmse`` plus the decision a thresholded score map makes (a face or text
  probability kept where it reaches ``threshold``, as a network's post-processing keeps it): a
  logistic loss on (score − threshold) / ``margin`` against the reference's side of the threshold,
  and the other same-sized outputs' (box regressions') squared error where the reference keeps a
  cell, both over the number of kept cells; cells more than ``DECISION_MARGINS`` margins on their
  right side are left out. NMSE spends its effort on the bulk of the map, far from the threshold,
  where a change costs the post-processing nothing.

`task_loss_for` builds one and checks its tail against onnxruntime first.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from . import require_torch

torch = require_torch()
F = torch.nn.functional

KINDS = ("centernet", "kl", "nmse", "threshold")
DECISION_MARGINS = 4  # threshold loss: cells within this many margins of the threshold (or wrong) count
PEAK_FLOOR = 0.1  # centernet: a local maximum below this is no detection that could outrank a kept one
TAIL_TOLERANCE = 1e-3  # relative max |Δ| to onnxruntime a tail must meet before it trains anything


class TailLoss:
    """`kind`'s loss through `tail`: ``target(x)`` once per batch (no gradient), then
    ``loss(decoded, target)``."""

    def __init__(self, tail, kind: str = "nmse", temperature: float = 2.0, threshold: dict | None = None,
                 shapes: list[tuple[int, int]] | None = None):
        if kind not in KINDS:
            raise InvalidInputError(f"unknown training loss {kind!r} (known: {', '.join(KINDS)})")
        self.tail, self.kind, self.temperature = tail, kind, temperature
        self.shapes = shapes  # each input's (H, W): maps padded for training are cropped back for the tail
        self.variances = None  # each output's variance on whole training maps (`calibrate`)
        if kind == "centernet":  # the detections' score threshold, by which agreement keeps boxes
            spec = threshold or {}
            self.threshold = float(spec.get("threshold", 0.3))
            self.margin = float(spec.get("margin", 0.05))
            self.decision_weight = float(spec.get("decision_weight", 0.0))
        if kind == "threshold":
            threshold, names = threshold or {}, list(tail.output_names)
            if "threshold" not in threshold:
                raise InvalidInputError("the threshold loss needs a threshold (the score above which the "
                                        "post-processing keeps a cell)")
            score = threshold.get("score", names[0])
            if score not in names:
                raise InvalidInputError(f"threshold loss: {score!r} is not one of the compared outputs "
                                        f"({', '.join(names)})")
            self.score = names.index(score)
            self.channel = int(threshold.get("channel", 0))
            self.threshold = float(threshold["threshold"])
            self.margin = float(threshold.get("margin", 0.05))

    def _run(self, x):
        """The tail on `x`: one tensor, or a multi-tensor split's tensors in the tail's input order."""
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if self.shapes:
            xs = [t[..., :h, :w] for t, (h, w) in zip(xs, self.shapes)]
        return self.tail(*xs)

    def target(self, x):
        with torch.no_grad():
            return self._run(x)

    def calibrate(self, maps, batch: int = 2) -> None:
        """Normalise each output's error by its variance over the tail's outputs on `maps` (whole
        training maps: one tensor, or a split's tensors as a list), not by a batch's."""
        parts = list(maps) if isinstance(maps, (list, tuple)) else [maps]
        outputs = [self.target([p[i : i + batch] for p in parts]) for i in range(0, len(parts[0]), batch)]
        self.variances = [float(torch.var(torch.cat([o[k] for o in outputs]))) for k in range(len(outputs[0]))]

    def _variance(self, k: int, reference):
        return self.variances[k] if self.variances is not None else torch.var(reference)

    def __call__(self, decoded, target):
        outputs = self._run(decoded)
        if self.kind == "centernet":
            return _centernet(outputs, target, self.threshold, self.margin, self.decision_weight)
        if self.kind == "kl":
            t = self.temperature
            logits, reference = outputs[0].flatten(1), target[0].flatten(1)
            return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(reference / t, 1), reduction="batchmean",
                            log_target=True) * t * t
        nmse = sum(torch.mean((o - r) ** 2) / (self._variance(k, r) + 1e-6)
                   for k, (o, r) in enumerate(zip(outputs, target)))
        if self.kind == "threshold":
            return nmse + self._decisions(outputs, target)
        return nmse

    def _decisions(self, outputs, target):
        """The thresholded score map's decisions and, where the reference keeps a cell, the other
        outputs of its size (per cell quantities such as box offsets), per kept cell."""
        score = outputs[self.score][:, self.channel]
        kept = (target[self.score][:, self.channel] >= self.threshold).float()
        count = kept.sum() + 1
        loss = torch.sum(_decision_loss(score, kept, self.threshold, self.margin)) / count
        for i, (o, r) in enumerate(zip(outputs, target)):
            if i != self.score and o.shape[-2:] == score.shape[-2:]:
                error = ((o - r) ** 2).mean(1) / (self._variance(i, r) + 1e-6)
                loss = loss + torch.sum(error * kept) / count
        return loss


def _centernet(outputs, target, threshold: float = 0.3, margin: float = 0.05, decision_weight: float = 0.0):
    """Relative error of the heatmaps (weighted towards the peaks) and of the box maps at the peaks;
    with `decision_weight`, plus that × the threshold loss's decision term on the detections: every
    cell that is a local maximum of its class (CenterNet's 3×3 max-pool) on either map, ≥ PEAK_FLOOR."""
    heat, wh = outputs
    heat_ref, wh_ref = target
    weight = 1 + 20 * heat_ref
    heat_loss = torch.sum((heat - heat_ref) ** 2 * weight) / (torch.sum(heat_ref ** 2 * weight) + 1e-6)
    peaks = (heat_ref.amax(dim=-1, keepdim=True) > 0.1).float()
    wh_loss = torch.sum(torch.abs(wh - wh_ref) * peaks) / (torch.sum(torch.abs(wh_ref) * peaks) + 1e-3)
    if not decision_weight:
        return heat_loss + 0.5 * wh_loss
    # agreement ranks each class's detections by score over all images: a kept box decoded at 0.28
    # behind an invented one at 0.31 costs as much as a lost box, a kept one at 0.95 decoded at 0.8
    # nothing; the squared error above weighs the high peaks most
    detections = (_local_maxima(heat_ref) | _local_maxima(heat.detach())).float()
    kept = (heat_ref >= threshold).float()
    decisions = torch.sum(_decision_loss(heat, kept, threshold, margin) * detections)
    return heat_loss + 0.5 * wh_loss + decision_weight * decisions / (torch.sum(kept * detections) + 1)


def _decision_loss(score, kept, threshold: float, margin: float):
    """Per cell: the logistic loss of (score − threshold) / margin against the reference's decision
    `kept` (0/1), zero where the score is more than DECISION_MARGINS margins on its right side."""
    z = (score - threshold) / margin
    # on a sparse map (text in a photo) the many cells far below the threshold would otherwise outweigh
    # the few near it
    near = (z * (2 * kept - 1) < DECISION_MARGINS).float()
    return F.binary_cross_entropy_with_logits(z, kept, reduction="none") * near


def _local_maxima(heat):
    """Cells of an (N, H, W, classes) heatmap that CenterNet's 3×3 max-pool keeps, at least PEAK_FLOOR."""
    nchw = heat.permute(0, 3, 1, 2)
    kept = (nchw == F.max_pool2d(nchw, 3, 1, 1)) & (nchw >= PEAK_FLOOR)
    return kept.permute(0, 2, 3, 1)


def task_loss_for(network: str, tensor: str | list[str], sample=None,
                  shapes: list[tuple[int, int]] | None = None, calibration=None) -> tuple[TailLoss, str]:
    """(loss, one-line description) through `network`'s tail from `tensor` (or a multi-tensor
    split's tensors, which the loss then takes as a list in the tail's `input_names` order), of
    the kind its manifest or task says; with `sample` activations (one array per tensor), the
    tail is first checked against onnxruntime. `shapes`: each tensor's real (H, W), to which the
    loss crops maps padded for training (the tail of a fixed-size network takes no other).
    `calibration`: whole training maps (a tensor, or a list per tensor in `tensor`'s order) on which
    the outputs' variances are taken (`TailLoss.calibrate`)."""
    from ..onnxmodel import Manifest, load_model
    from ..task import guess_task
    from .tail import check_against_onnxruntime, load_tail

    manifest = Manifest.for_model(network)
    spec = manifest.training_loss or {}
    task = manifest.task or guess_task(load_model(network))
    kind = spec.get("kind") or ("kl" if task == "classification" else "nmse")
    outputs = spec.get("outputs") or None
    tail = load_tail(network, tensor, outputs)
    names = ", ".join(tail.output_names)
    text = f"{kind} on {names}"
    if kind == "centernet" and spec.get("decision_weight"):
        spec = {"threshold": manifest.score_threshold, **spec}
        text += f" + {spec['decision_weight']:g} × decisions at {spec['threshold']}"
    if kind == "threshold":
        if "threshold" not in spec:
            raise InvalidInputError(f"{network}: the threshold loss needs training_loss.threshold (the score "
                                    "above which the post-processing keeps a cell)")
        score = f"{spec.get('score', tail.output_names[0])}[{int(spec.get('channel', 0))}]"
        text = f"threshold on {score} ≥ {spec['threshold']} + nmse on {names}"
    if sample is not None:
        samples = [sample] if isinstance(sample, np.ndarray) else list(sample)
        if shapes:
            samples = [s[..., :h, :w] for s, (h, w) in zip(samples, shapes)]
        worst = check_against_onnxruntime(network, tensor, outputs,
                                          [np.ascontiguousarray(s, np.float32) for s in samples], tail)
        if worst > TAIL_TOLERANCE:
            raise InvalidInputError(f"{network}: the torch tail from {tensor} differs from onnxruntime by {worst:.2g} "
                                    "(relative): not trusted for training")
        text += f" (tail max |Δ| to onnxruntime {worst:.1g})"
    # the loss takes a split's maps in the tail's input order
    order = [0] if isinstance(tensor, str) else [list(tensor).index(name) for name in tail.input_names]
    loss = TailLoss(tail, kind, float(spec.get("temperature", 2.0)), spec,
                    [shapes[i] for i in order] if shapes else None)
    if calibration is not None:
        loss.calibrate(calibration if isinstance(tensor, str) else [calibration[i] for i in order])
    return loss, text
