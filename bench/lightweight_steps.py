"""What sets the lightweight codec's task agreement: the quantizer's step or its clip range?

    python bench/lightweight_steps.py data/reference_train.h5 data/reference_heldout.h5 data/autotiler_train.h5 \
        bench/results/lightweight_steps.md

For each reference split layer, uniform quantizers over a grid of level counts and clip ranges
(the calibrated one, whose clip minimises the measured clipping + granular error, and clips at
fixed quantiles of the calibration values), coded by the fast coder, on the 12 held-out photos
plus the 156 photos of ``examples/images_more`` (their unaugmented samples; none calibrates the
codec): bits per element and agreement mAP@0.5 with the uncompressed detector, rows sorted by
the step (the width of one cell). A last table gives, for each layer, the fewest bits seen at
agreement >= 0.95 and the setting that gave them.
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

LEVELS = (4, 6, 8, 12, 16)
QUANTILES = (99.0, 99.5, 99.9)  # upper clip at this quantile (signed layers: the lower at 100 - q too)


def main(train_path, heldout_path, extra_path, output):
    lines = ["# Step or clip: what sets the lightweight codec's task agreement", "",
             f"`python bench/lightweight_steps.py` ({time.strftime('%Y-%m-%d')}): uniform quantizers, fast coder, "
             f"on 12 held-out photos + {EXTRA_PHOTOS} of examples/images_more. `calibrated`: the clip calibration "
             "chooses (least measured MSE at that level count, on the training photos); `qNN`: clip at that "
             "quantile of the calibration values. Rows sorted by the step.", ""]
    best_rows = []
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout, h5py.File(extra_path) as extra:
        for layer in ("S4", "S2", "S1"):
            calibration = train[layer][::3]
            x = evaluation_set(heldout, extra, layer)
            task = TaskModel(str(NETWORK), heldout[layer].attrs["layer"])
            reference = task.run(x)
            values = np.sort(calibration.ravel()[::7])
            relu = values[0] >= 0
            rows = []
            for n in LEVELS:
                table = Lightweight(levels=n, fast=True, partners=False).calibrate(calibration).table
                clips = [("calibrated", table["levels"][0], table["levels"][-1])]
                for q in QUANTILES:
                    hi = float(np.quantile(values, q / 100))
                    clips.append((f"q{q:g}", 0.0 if relu else float(np.quantile(values, 1 - q / 100)), hi))
                for name, lo, hi in clips:
                    codec = Lightweight(levels=n, fast=True, partners=False, clip=[lo, hi]).calibrate(calibration)
                    blob = featcodec.encode(x, codec)
                    rows.append({"levels": n, "clip": name, "lo": lo, "hi": hi, "step": (hi - lo) / (n - 1),
                                 "bpe": featcodec.info(blob)["bits_per_element"],
                                 "agreement": task.agreement(x, featcodec.decode(blob), reference)})
                    print(layer, rows[-1], flush=True)
            lines += [f"## {layer} `{heldout[layer].attrs['layer']}` {tuple(x.shape[1:])}, {len(x)} photos", "",
                      "| step | levels | clip | range | bits/elt | agreement |", "|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: r["step"]):
                lines.append(f"| {r['step']:.3g} | {r['levels']} | {r['clip']} | {r['lo']:.3g} .. {r['hi']:.3g} | "
                             f"{r['bpe']:.4f} | {r['agreement']:.3f} |")
            lines.append("")
            passing = [r for r in rows if r["agreement"] >= 0.95]
            best = min(passing, key=lambda r: r["bpe"]) if passing else None
            best_rows.append((layer, best, max(r["agreement"] for r in rows)))
    lines += ["## Fewest bits at agreement >= 0.95", "", "| layer | bits/elt | setting | best agreement seen |",
              "|---|---|---|---|"]
    for layer, best, top in best_rows:
        setting = f"{best['levels']} levels, {best['clip']} clip, step {best['step']:.3g}" if best else "not reached"
        lines.append(f"| {layer} | {best['bpe']:.4f} | {setting} | {top:.3f} |" if best
                     else f"| {layer} | - | {setting} | {top:.3f} |")
    Path(output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
