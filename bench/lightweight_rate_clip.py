"""The lightweight codec's rate and distortion targets with and without clips chosen for their bits.

    python bench/lightweight_rate_clip.py data/reference_train.h5 data/reference_heldout.h5 data/autotiler_train.h5 \
        bench/results/lightweight_rate_clip.md

`--snr` and `--bpe` weigh, at each level count, the quantizer of least error (`empirical_clip`) and
the one clipped for its bits (`rate_clip`). Here each target is met both ways ("fixed-N clip only":
the searches as they were, the first candidate alone) on the 12 held-out photos plus the 156 of
examples/images_more, calibrated on the training photos and per sample (uncalibrated):
bits per element, SNR and agreement mAP@0.5 with the uncompressed detector.
"""

import sys
import time
from pathlib import Path

import h5py
import numpy as np
from lightweight_report import EXTRA_PHOTOS, NETWORK, evaluation_set

import featcodec
from featcodec.codecs import Lightweight
from featcodec.task import TaskModel

TARGETS = {"S4": [("snr", 12), ("snr", 15), ("bpe", 0.15), ("bpe", 0.25)],
           "S2": [("snr", 12), ("snr", 15), ("bpe", 0.6), ("bpe", 0.9)],
           "S1": [("snr", 12), ("snr", 15), ("bpe", 1.0), ("bpe", 1.5)]}
UNCALIBRATED_SAMPLES = 24  # per-sample designs (no calibration) on the first 24 evaluation samples


class FixedClipOnly(Lightweight):
    """The searches as they were before `rate_clip`: the quantizer of least error at each level count."""

    weigh_rate_clips = False


def measure(codec, x, task, reference):
    blob = featcodec.encode(x, codec)
    decoded = featcodec.decode(blob)
    levels = {len(s["levels"]) for s in featcodec.info(blob)["samples"] if "levels" in s} or \
        {len(codec.table["levels"])}
    return {"bpe": featcodec.info(blob)["bits_per_element"],
            "snr": float(10 * np.log10(np.var(x) / np.mean((decoded - x) ** 2))),
            "agreement": task.agreement(x, decoded, reference),
            "levels": f"{min(levels)}-{max(levels)}" if len(levels) > 1 else str(levels.pop())}


def main(train_path, heldout_path, extra_path, output):
    lines = ["# Clips chosen for their bits (`rate_clip`) in the lightweight codec's rate and SNR searches", "",
             f"`python bench/lightweight_rate_clip.py` ({time.strftime('%Y-%m-%d')}): 12 held-out photos + "
             f"{EXTRA_PHOTOS} of examples/images_more; calibrated on the 36 training photos, and per sample "
             f"(uncalibrated, the first {UNCALIBRATED_SAMPLES} samples). `fixed-N clip`: the searches before, "
             "the quantizer of least error at each level count only; `with rate clips`: also the one clipped "
             "for its bits.", "",
             "| layer | target | design | fixed-N clip: levels, bits/elt, SNR dB, agreement "
             "| with rate clips: levels, bits/elt, SNR dB, agreement | bits |",
             "|---|---|---|---|---|---|"]
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout, h5py.File(extra_path) as extra:
        for layer, targets in TARGETS.items():
            calibration = train[layer][::3]
            x = evaluation_set(heldout, extra, layer)
            task = TaskModel(str(NETWORK), heldout[layer].attrs["layer"])
            reference = task.run(x)
            for name, value in targets:
                for design in ("calibrated", "per sample"):
                    part = x if design == "calibrated" else x[:UNCALIBRATED_SAMPLES]
                    part_reference = (reference if design == "calibrated"
                                      else [r[:UNCALIBRATED_SAMPLES] for r in reference])
                    row = []
                    for cls in (FixedClipOnly, Lightweight):
                        codec = cls(**{name: value}, fast=True)
                        if design == "calibrated":
                            codec = codec.calibrate(calibration)
                        row.append(measure(codec, part, task, part_reference))
                    print(layer, name, value, design, row, flush=True)
                    cells = [f"{r['levels']}, {r['bpe']:.4f}, {r['snr']:.2f}, {r['agreement']:.3f}" for r in row]
                    lines.append(f"| {layer} | {name} {value:g} | {design} | {cells[0]} | {cells[1]} | "
                                 f"{row[1]['bpe'] / row[0]['bpe'] - 1:+.1%} |")
    Path(output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
