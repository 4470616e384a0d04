"""Learned-codec models side by side: Kbits per sample and task agreement at each latent step.

    FEATCODEC_MODELS=runs/ python bench/learned_steps.py data/autotiler_valid.h5:/S2 centernet_mbv3,other

For model selection on the validation split (`bench/validation_split.py`) and for reporting on test
dumps; one Markdown row per (model, step). Agreement: mAP@0.5 of the detector's tail on decoded
against original activations, all samples at once.
"""

import sys
from pathlib import Path

import h5py
import numpy as np

import featcodec
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
STEPS = (1 / 15, 1 / 10, 1 / 7, 1 / 5, 1 / 4, 1 / 3, 1 / 2)


def main(source: str, models: list[str]) -> None:
    path, dataset = source.split(":", 1)
    with h5py.File(path) as f:
        x = np.ascontiguousarray(f[dataset][()], np.float32)
        tensor = f[dataset].attrs["layer"]
    task = TaskModel(str(NETWORK), tensor)
    reference = task.run(x)
    print(f"## {Path(path).name}:{dataset}, {len(x)} samples\n")
    print("| model | step | Kbits per sample | agreement |")
    print("|---|---|---|---|")
    for model in models:
        for step in STEPS:
            blob = featcodec.encode(x, "learned", model=model, step=step)
            kbits = featcodec.info(blob)["payload_bytes"] * 8 / 1000 / len(x)
            agreement = task.agreement(x, featcodec.decode(blob), reference)
            print(f"| {model} | 1/{1 / step:.0f} | {kbits:.1f} | {agreement:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
