"""Peak memory of `featcodec convert` on a dump larger than the machine's memory (a run by hand).

    python bench/studies/convert_memory.py /big/scratch 26 > bench/results/convert_memory.md

Writes an HDF5 dump of GIB gibibytes (2 GiB datasets of (256, 128, 128, 128) float32: one
synthetic ReLU map, Gaussian through ReLU, repeated), converts it with ``-j 2`` to lightweight
.fcb files, and reports the wall time and the peak resident memory of the parent and of its
workers (getrusage). The dump is removed after.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import h5py
import numpy as np

import featcodec
from featcodec.convert import convert


def main() -> None:
    scratch, gib = Path(sys.argv[1]), int(sys.argv[2])
    dump, out = scratch / "big.h5", scratch / "big_out"
    sample = np.maximum(np.random.default_rng(5).normal(-0.5, 1.0, (1, 128, 128, 128)), 0).astype(np.float32)
    block = np.repeat(sample, 16, axis=0)  # 128 MiB
    datasets = gib // 2
    start = time.perf_counter()
    with h5py.File(dump, "w") as f:
        for d in range(datasets):
            node = f.create_dataset(f"S4_{d:02d}", shape=(256, 128, 128, 128), dtype=np.float32,
                                    chunks=(1, 128, 128, 128))
            for first in range(0, 256, 16):
                node[first : first + 16] = block
    written = time.perf_counter() - start
    size = dump.stat().st_size
    try:
        summary = convert(str(dump), str(out), featcodec.get_codec("lightweight", levels=4).get_config(), workers=2,
                          force=True)
    finally:
        dump.unlink()
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    totals = summary.totals()
    print("# convert on a dump larger than memory\n")
    print(__doc__.split("\n\n", 2)[2].strip() + "\n")
    print("| dump | datasets | memory of the machine | workers | convert time | MB/s | peak RSS parent | "
          "peak RSS worker | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"| {size / 2**30:.1f} GiB (written in {written:.0f} s) | {datasets} | {memory:.1f} GiB | 2 | "
          f"{totals['seconds']:.0f} s | {totals['mb_per_s']:.0f} | {peak_self:.0f} MiB | {peak_children:.0f} MiB | "
          f"{totals['failed']} |")
    print("\n" + json.dumps(totals))


if __name__ == "__main__":
    main()
