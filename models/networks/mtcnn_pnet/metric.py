"""MTCNN P-Net's own task metric for `featcodec bench --metric`: proposal F1 (pooled over the images).

Each output map becomes P-Net proposals as facenet-pytorch makes them for one scale (cells with face
probability ≥ 0.6, 12-pixel boxes at stride 2 in the pyramid level's pixels, NMS at IoU 0.5, then the
box regression); the proposals on decoded activations are matched greedily one-to-one to those on the
original activations at IoU ≥ 0.5, and F1 = 2 TP / (2 TP + FP + FN) pools every image. It is much
stricter than R² agreement: P-Net is a high-recall first stage with about 46 proposals per photo, and
each one that moves, appears or vanishes counts (`featcodec.task.pooled_f1` matches them).

    featcodec bench pnet_test.h5:/P2 --metric models/networks/mtcnn_pnet/metric.py:proposal_f1

The same metric as `shared/networks/mtcnn_pnet/split.py`, which follows facenet-pytorch 2.6.0
(`detect_face`, `generateBoundingBox`, `batched_nms` for one scale).
"""

import numpy as np

from featcodec.task import pooled_f1

SCALE = 0.6  # the first pyramid level of facenet-pytorch's MTCNN (min_face_size 20: 12 / 20)
PROBABILITY = 0.6  # facenet-pytorch's thresholds[0]
NMS_IOU = 0.5
MATCH_IOU = 0.5


def proposal_f1(reference: list[np.ndarray], result: list[np.ndarray]) -> float:
    """Pooled proposal F1 of `result` against `reference`: the P-Net outputs (N, 4, h, w) box
    regression and (N, 2, h, w) face probabilities, in either order."""
    pairs = ((_proposals(ref_prob, ref_reg), _proposals(prob, reg))
             for ref_prob, ref_reg, prob, reg in zip(*_maps(reference), *_maps(result)))
    return pooled_f1(pairs, _iou, MATCH_IOU)


def _maps(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(face probability maps (N, h, w), box regressions (N, 4, h, w)) from P-Net's two outputs."""
    by_channels = {o.shape[1]: o for o in outputs}
    if set(by_channels) != {2, 4}:
        raise ValueError(f"P-Net has a 2-channel and a 4-channel output, got {[o.shape for o in outputs]}")
    return by_channels[2][:, 1], by_channels[4]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4), as x0, y0, x1, y1."""
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def _proposals(prob: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """One image's proposals (k, 4) from its face probability map (h, w) and regression (4, h, w)."""
    ys, xs = np.nonzero(prob >= PROBABILITY)
    order = np.argsort(-prob[ys, xs], kind="stable")
    boxes = np.stack([np.floor((2 * xs + 1) / SCALE), np.floor((2 * ys + 1) / SCALE),
                      np.floor((2 * xs + 12) / SCALE), np.floor((2 * ys + 12) / SCALE)], 1).astype(np.float64)
    keep = []
    while order.size:  # greedy NMS, highest probability first
        keep.append(order[0])
        rest = order[1:]
        order = rest[_iou(boxes[order[:1]], boxes[rest])[0] <= NMS_IOU]
    boxes, shift = boxes[keep], reg[:, ys[keep], xs[keep]].T
    sides = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return boxes + shift * sides
