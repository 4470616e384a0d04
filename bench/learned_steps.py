"""Learned-codec models side by side: Kbits per sample and task agreement at each latent step.

    FEATCODEC_MODELS=runs/ python bench/learned_steps.py data/autotiler_valid.h5:/S2 centernet_mbv3,other \
        [bench/results/s2_validation.json]

For model selection on the validation split (`bench/validation_split.py`) and for reporting on test
dumps; one Markdown row per (model, step). Agreement: mAP@0.5 of the detector's tail on decoded
against original activations, all samples at once. Given a `featcodec bench --json` report of the
same samples, each model's BD-rate against its remote inference (x265) follows its rows.
"""

import json
import sys
from pathlib import Path

import h5py
import numpy as np

import featcodec
from featcodec import metrics
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
STEPS = (1 / 15, 1 / 10, 1 / 7, 1 / 5, 1 / 4, 1 / 3, 1 / 2)


def main(source: str, models: list[str], anchor: str | None = None) -> None:
    path, dataset = source.split(":", 1)
    with h5py.File(path) as f:
        x = np.ascontiguousarray(f[dataset][()], np.float32)
        tensor = f[dataset].attrs["layer"]
    task = TaskModel(str(NETWORK), tensor)
    reference = task.run(x)
    image = sorted((r["kbpi"], r["agreement"]) for r in json.loads(Path(anchor).read_text())["remote"]
                   if r["codec"] == "x265") if anchor else []
    print(f"## {Path(path).name}:{dataset}, {len(x)} samples\n")
    print("| model | step | Kbits per sample | agreement |")
    print("|---|---|---|---|")
    verdicts = []
    for model in models:
        points = []
        for step in STEPS:
            blob = featcodec.encode(x, "learned", model=model, step=step)
            kbits = featcodec.info(blob)["payload_bytes"] * 8 / 1000 / len(x)
            points.append((kbits, task.agreement(x, featcodec.decode(blob), reference)))
            print(f"| {model} | 1/{1 / step:.0f} | {kbits:.1f} | {points[-1][1]:.3f} |", flush=True)
        if image:
            points.sort()
            args = ([p[0] for p in image], [p[1] for p in image], [p[0] for p in points], [p[1] for p in points])
            low, high = metrics.bd_range(*args)
            verdicts.append(f"{model}: BD-rate against the image (x265) {metrics.bd_rate(*args):+.1f} % over "
                            f"agreement {low:.2f}-{high:.2f}; best agreement {max(p[1] for p in points):.3f}")
    print("\n" + "\n".join(verdicts) if verdicts else "")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3] if len(sys.argv) > 3 else None)
