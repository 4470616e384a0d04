"""Our metrics against the libraries the field trusts: agreement mAP against pycocotools' COCOeval,
SSIM against scikit-image's structural_similarity, on the same inputs."""

import contextlib
import io
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.metrics import ssim
from featcodec.task import TaskModel, detection_agreement

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "reference_demo.h5"
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"


def cocoeval_agreement(reference: np.ndarray, result: np.ndarray, score_threshold: float = 0.3) -> float:
    """The same agreement through pycocotools: reference detections >= threshold are the ground
    truth, every result detection a prediction; AP at IoU 0.5, all areas, 100 detections, averaged
    over the classes present in the ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, truth, predictions = [], [], []
    for image, (ref, res) in enumerate(zip(reference, result)):
        images.append({"id": image})
        for x1, y1, x2, y2, _, cls in ref[ref[:, 4] >= score_threshold]:
            truth.append({"id": len(truth) + 1, "image_id": image, "category_id": int(cls), "iscrowd": 0,
                          "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                          "area": float((x2 - x1) * (y2 - y1))})
        for x1, y1, x2, y2, score, cls in res:
            predictions.append({"image_id": image, "category_id": int(cls), "score": float(score),
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    classes = sorted({t["category_id"] for t in truth})
    if not classes:
        return 1.0 if not (result[..., 4] >= score_threshold).any() else 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        gt = COCO()
        categories = sorted({int(c) for r in result for c in r[:, 5]} | set(classes))
        gt.dataset = {"images": images, "annotations": truth, "categories": [{"id": c} for c in categories]}
        gt.createIndex()
        dt = gt.loadRes(predictions) if predictions else COCO()
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [result.shape[1]]
        evaluation.params.catIds = classes
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # recall thresholds x classes
    present = precision[:, (precision > -1).any(axis=0)]
    return float(np.mean(np.where(present > -1, present, 0).mean(axis=0)))


def random_detections(rng, images=6, k=30, classes=4, jitter=0.0, reference=None):
    if reference is None:
        xy = rng.uniform(0, 400, (images, k, 2))
        wh = rng.uniform(10, 120, (images, k, 2))
        boxes = np.concatenate([xy, xy + wh], axis=2)
        cls = rng.integers(0, classes, (images, k, 1)).astype(float)
    else:
        boxes = reference[..., :4] + rng.normal(0, jitter, reference[..., :4].shape)
        # a detector's boxes have x1 < x2, y1 < y2 (COCOeval ignores boxes of negative area)
        boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
        cls = np.where(rng.random((images, k, 1)) < 0.9, reference[..., 5:6], rng.integers(0, classes, (images, k, 1)))
    scores = rng.random((images, k, 1))
    return np.concatenate([boxes, scores, cls], axis=2)


def test_agreement_matches_cocoeval_on_random_detections():
    rng = np.random.default_rng(7)
    for trial in range(30):
        reference = random_detections(rng)
        result = random_detections(rng, jitter=rng.uniform(0, 25), reference=reference)
        ours, theirs = detection_agreement(reference, result), cocoeval_agreement(reference, result)
        assert abs(ours - theirs) <= 0.002, (trial, ours, theirs)


@pytest.mark.parametrize("levels", [2, 3, 4, 8])
def test_agreement_matches_cocoeval_on_the_reference_detector(levels):
    with h5py.File(DEMO) as f:
        x = f["S4"][()].astype(np.float32)
        layer = f["S4"].attrs["layer"]
    task = TaskModel(str(NETWORK), layer)
    decoded = featcodec.decode(featcodec.encode(x, "uniform", levels=levels, clip=[0, 1.5]))
    (reference,), (result,) = task.run(x), task.run(decoded)
    assert (reference[..., 4] >= 0.3).sum() > 0
    ours, theirs = detection_agreement(reference, result), cocoeval_agreement(reference, result)
    assert abs(ours - theirs) <= 0.002, (ours, theirs)


@pytest.mark.parametrize("codec,params", [("uniform", {"levels": 4}), ("lightweight", {"levels": 3}),
                                          ("raw", {"dtype": "float16"})])
def test_ssim_matches_scikit_image(codec, params):
    from skimage.metrics import structural_similarity

    with h5py.File(DEMO) as f:
        x = f["S2"][:1].astype(np.float32)
    y = featcodec.decode(featcodec.encode(x, codec, **params))
    data_range = float(x.max() - x.min())
    start = time.perf_counter()
    theirs = np.mean([structural_similarity(a, b, win_size=7, data_range=data_range)
                      for a, b in zip(x.reshape(-1, *x.shape[-2:]).astype(np.float64),
                                      y.reshape(-1, *y.shape[-2:]).astype(np.float64))])
    their_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = ssim(x, y)
    our_seconds = time.perf_counter() - start
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)
    print(f"SSIM {ours:.6f} vs scikit-image {theirs:.6f}; {our_seconds * 1e3:.1f} vs {their_seconds * 1e3:.1f} ms")
