"""A YOLOX detector's own task metric for `featcodec bench --metric`: detection F1, pooled.

The network's raw output (N, anchors, 5 + classes) is decoded as YOLOX's demo does (grid offsets and
exp sizes at strides 8, 16 and 32, score = objectness × class probability ≥ 0.1, class-agnostic NMS
at IoU 0.45); the boxes on decoded activations are matched greedily one-to-one to those on the
original activations at IoU ≥ 0.5, and F1 = 2 TP / (2 TP + FP + FN) pools every image. Written for
ddddocr's YOLOX-tiny (one class, 416 × 416 input; `shared/networks/ddddocr_yolox_tiny_det`):

    featcodec bench yolox_test.h5:/NECK --metric examples/metrics/yolox_f1.py:detection_f1

Another YOLOX: set INPUT_SIZE, and the thresholds its own post-processing uses.
"""

import numpy as np

from featcodec.task import pooled_f1

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
SCORE = 0.1
NMS_IOU = 0.45
MATCH_IOU = 0.5


def detection_f1(reference: list[np.ndarray], result: list[np.ndarray]) -> float:
    """Pooled detection F1 of `result` against `reference`, each [(N, anchors, 5 + classes)]."""
    pairs = ((_detections(ref), _detections(res)) for ref, res in zip(reference[0], result[0]))
    return pooled_f1(pairs, _iou, MATCH_IOU)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    cells, strides = [], []
    for stride in STRIDES:
        n = INPUT_SIZE // stride
        xs, ys = np.meshgrid(np.arange(n), np.arange(n))
        cells.append(np.stack([xs, ys], 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(cells), np.concatenate(strides)


def _iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    e = 1.0 if plus_one else 0.0  # YOLOX's NMS counts pixels inclusively
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + e, 0, None) * np.clip(y1 - y0 + e, 0, None)
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def _detections(out: np.ndarray) -> np.ndarray:
    """One image's boxes (k, 4) in input pixels, after the score threshold and NMS."""
    out = out.astype(np.float64)
    cells, strides = _grid()
    centres, sides = (out[:, :2] + cells) * strides, np.exp(out[:, 2:4]) * strides
    score = out[:, 4] * out[:, 5:].max(axis=1)
    keep = score > SCORE
    boxes = np.concatenate([centres[keep] - sides[keep] / 2, centres[keep] + sides[keep] / 2], 1)
    order, chosen = np.argsort(-score[keep]), []
    while order.size:
        chosen.append(order[0])
        rest = order[1:]
        order = rest[_iou(boxes[order[:1]], boxes[rest], plus_one=True)[0] <= NMS_IOU]
    return boxes[chosen]
