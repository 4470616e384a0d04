"""One exit of several trained models (draws of a recipe) on more samples than `autotiler_models.py` has.

    FEATCODEC_MODELS=draws/ python bench/studies/autotiler_draws.py S1 16 centernet_mbv3,draw_a,draw_b

Samples: the last 10 % of the maps of ``data/autotiler_train.h5`` (the validation maps `featcodec
train` holds out of training, `TrainingConfig.valid_fraction`: 58 of 576) followed by the 76 of
`autotiler_models.samples`. Agreement
on the validation maps alone, on the 76 alone and on all of them, lossless and at 60 Kbpi: the
two sets are told apart because they rank draws differently (bench/results/autotiler_annealed_rebuild.md).
"""

import sys
import warnings

import h5py
import numpy as np
from autotiler_models import NETWORK, samples

import featcodec
from featcodec.task import TaskModel

VALID_FRACTION = 0.1  # featcodec.train's TrainingConfig.valid_fraction (not imported: it needs torch)


def main() -> None:
    warnings.simplefilter("ignore")  # rate warnings
    layer, ratio, models = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    with h5py.File("data/autotiler_train.h5", "r") as f:
        count = len(f[layer])
        valid = np.asarray(f[layer][count - max(1, round(count * VALID_FRACTION)) :], np.float32)
    tensor, held_out = samples(layer)
    x = np.concatenate([valid, held_out])
    task = TaskModel(str(NETWORK), tensor.attrs["layer"], threads=2)
    reference = task.run(x)
    parts = {"validation": slice(0, len(valid)), "held out": slice(len(valid), len(x)), "all": slice(0, len(x))}
    print(f"## {layer} CR{ratio}: {len(valid)} validation + {len(held_out)} held-out samples\n")
    print("| model | rate | " + " | ".join(parts) + " |")
    print("|---|---|" + "---|" * len(parts))
    for model in models:
        for rate, params in (("lossless", {"lossless": True}), ("60", {"kbpi": 60.0})):
            decoded = featcodec.decode(featcodec.encode(x, "autotiler", model=model, cr=ratio, **params))
            scores = [task.agreement(x[p], decoded[p], [r[p] for r in reference]) for p in parts.values()]
            print(f"| {model} | {rate} | " + " | ".join(f"{s:.3f}" for s in scores) + " |", flush=True)


if __name__ == "__main__":
    main()
