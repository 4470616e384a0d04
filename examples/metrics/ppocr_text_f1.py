"""A DB text detector's own task metric for `featcodec bench --metric`: text-box F1, pooled.

The network's text probability map (N, 1, H, W) becomes boxes as a simplified DB post-processing
makes them (PP-OCR's DBPostProcess without cv2 / pyclipper): the map above 0.3, dilated by a 2 × 2
square, its 8-connected components, one axis-aligned box each, kept when its sides exceed 3 pixels
and the mean probability inside reaches 0.5. Boxes on decoded activations are matched greedily one
to one to those on the original activations at IoU ≥ 0.5, and F1 = 2 TP / (2 TP + FP + FN) pools
every image. Written for PP-OCRv4's mobile detector (`shared/networks/ppocrv4_mobile_det`, whose
`split.py` computes the same figure); needs scipy (scipy.ndimage labels the components):

    featcodec bench ppocr_test.h5:/STAGE1 --metric examples/metrics/ppocr_text_f1.py:text_box_f1
"""

import numpy as np

from featcodec.task import box_iou, pooled_f1

BINARY = 0.3  # DBPostProcess thresh
BOX = 0.5  # DBPostProcess box_thresh: the mean probability a box needs
MIN_SIDE = 3  # pixels a box side must exceed
MATCH_IOU = 0.5


def text_box_f1(reference: list[np.ndarray], result: list[np.ndarray]) -> float:
    """Pooled text-box F1 of `result` against `reference`, each [(N, 1, H, W) text probability]."""
    pairs = ((_boxes(ref[0]), _boxes(res[0])) for ref, res in zip(reference[0], result[0]))
    return pooled_f1(pairs, box_iou, MATCH_IOU)


def _boxes(probability: np.ndarray) -> np.ndarray:
    """One map's text boxes (k, 4) as x0, y0, x1, y1 (exclusive ends)."""
    from scipy import ndimage

    mask = ndimage.binary_dilation(probability > BINARY, structure=np.ones((2, 2), bool))
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), int))
    boxes = []
    for found in ndimage.find_objects(labels):
        if found is None:
            continue
        rows, cols = found
        if rows.stop - rows.start <= MIN_SIDE or cols.stop - cols.start <= MIN_SIDE:
            continue
        if probability[rows, cols].mean() < BOX:
            continue
        boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return np.array(boxes, np.float64).reshape(-1, 4)
