"""Per-layer activation statistics of a dump (min, max, mean, std, zero and negative fractions).

    python bench/studies/layer_stats.py data/reference_train.h5 data/reference_heldout.h5
"""

import sys

import h5py
import numpy as np


def main(paths):
    print("| dump | layer | shape | min | max | mean | std | p99.9 | zero | negative |")
    print("|" + "---|" * 10)
    for path in paths:
        with h5py.File(path) as f:
            for name in ("S1", "S2", "S4"):
                x = f[name][()]
                print(f"| {path.split('/')[-1]} | {name} | {x.shape} | {x.min():.3f} | {x.max():.3f} | "
                      f"{x.mean():.3f} | {x.std():.3f} | {np.percentile(x, 99.9):.3f} | {np.mean(x == 0):.1%} | "
                      f"{np.mean(x < 0):.1%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
