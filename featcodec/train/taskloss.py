"""Losses through a network's tail: distillation against the network's own outputs on the original
activations, so a codec for any split of any network trains on what the network does with it.

The kind follows the network's manifest (``training_loss``; see docs/manifest.md), else its task:

* ``centernet``: CenterNet's heatmaps (error weighted towards the peaks) and box sizes at the peaks;
  the reference detector's manifest names it with its head outputs.
* ``kl``: classifiers: KL divergence of the softened class distributions (temperature T, Hinton
  et al.), ×T² so its gradients keep their scale; the default for ``classification``.
* ``nmse``: every other output set (detector heads, dense maps): squared error of each output
  over its variance on the batch, summed over outputs; the default otherwise.

`task_loss_for` builds one and checks its tail against onnxruntime first.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from . import require_torch

torch = require_torch()
F = torch.nn.functional

KINDS = ("centernet", "kl", "nmse")
TAIL_TOLERANCE = 1e-3  # relative max |Δ| to onnxruntime a tail must meet before it trains anything


class TailLoss:
    """`kind`'s loss through `tail`: ``target(x)`` once per batch (no gradient), then
    ``loss(decoded, target)``."""

    def __init__(self, tail, kind: str = "nmse", temperature: float = 2.0):
        if kind not in KINDS:
            raise InvalidInputError(f"unknown training loss {kind!r} (known: {', '.join(KINDS)})")
        self.tail, self.kind, self.temperature = tail, kind, temperature

    def target(self, x):
        with torch.no_grad():
            return self.tail(x)

    def __call__(self, decoded, target):
        outputs = self.tail(decoded)
        if self.kind == "centernet":
            return _centernet(outputs, target)
        if self.kind == "kl":
            t = self.temperature
            logits, reference = outputs[0].flatten(1), target[0].flatten(1)
            return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(reference / t, 1), reduction="batchmean",
                            log_target=True) * t * t
        return sum(torch.mean((o - r) ** 2) / (torch.var(r) + 1e-6) for o, r in zip(outputs, target))


def _centernet(outputs, target):
    """Relative error of the heatmaps (weighted towards the peaks) and of the box maps at the peaks."""
    heat, wh = outputs
    heat_ref, wh_ref = target
    weight = 1 + 20 * heat_ref
    heat_loss = torch.sum((heat - heat_ref) ** 2 * weight) / (torch.sum(heat_ref ** 2 * weight) + 1e-6)
    peaks = (heat_ref.amax(dim=-1, keepdim=True) > 0.1).float()
    wh_loss = torch.sum(torch.abs(wh - wh_ref) * peaks) / (torch.sum(torch.abs(wh_ref) * peaks) + 1e-3)
    return heat_loss + 0.5 * wh_loss


def task_loss_for(network: str, tensor: str, sample: np.ndarray | None = None) -> tuple[TailLoss, str]:
    """(loss, one-line description) through `network`'s tail from `tensor`, of the kind its manifest
    or task says; with `sample` activations, the tail is first checked against onnxruntime."""
    from ..onnxmodel import Manifest, load_model
    from ..task import guess_task
    from .tail import check_against_onnxruntime, load_tail

    manifest = Manifest.for_model(network)
    spec = manifest.training_loss or {}
    task = manifest.task or guess_task(load_model(network))
    kind = spec.get("kind") or ("kl" if task == "classification" else "nmse")
    outputs = spec.get("outputs") or None
    tail = load_tail(network, tensor, outputs)
    text = f"{kind} on {', '.join(tail.output_names)}"
    if sample is not None:
        worst = check_against_onnxruntime(network, tensor, outputs, np.ascontiguousarray(sample, np.float32), tail)
        if worst > TAIL_TOLERANCE:
            raise InvalidInputError(f"{network}: the torch tail from {tensor} differs from onnxruntime by {worst:.2g} "
                                    "(relative): not trusted for training")
        text += f" (tail max |Δ| to onnxruntime {worst:.1g})"
    return TailLoss(tail, kind, float(spec.get("temperature", 2.0))), text
