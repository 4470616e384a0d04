"""S4 at low rates: the auto-tiler's CR16 and CR64 exits against tiling at 15, 30 and 60 Kbpi.

    python bench/studies/autotiler_low_rates.py data/reference_heldout.h5 frames_s4.h5 \
        > bench/results/autotiler_s4_low_rates.md

Each DUMP is an HDF5 file with an S4 dataset (`featcodec dump … --layer S4`) of samples no model
was trained on: the held-out photos, and frames of the clips in ``../shared/data/video`` (the
video frames give nine times as many samples; agreement on 12 photos moves by ±0.05 between
neighbouring settings). One `featcodec.bench.run_point` per point, 2 threads: agreement mAP@0.5
with the uncompressed detector, the rate reached, and encode + decode latency per sample.
"""

import sys
from pathlib import Path

import numpy as np

from featcodec.bench import run_point
from featcodec.io import read_tensors
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
POINTS = [(method, cr, rate) for rate in ("15", "30", "60") for method, cr in
          (("tiling", None), ("autotiler", 16), ("autotiler", 64))] + [("autotiler", 64, "lossless")]


def main() -> None:
    print("# S4 at low rates: the CR64 exit against tiling\n")
    print(__doc__.split("\n\n", 2)[2].strip() + "\n")
    for dump in sys.argv[1:]:
        tensor = read_tensors(f"{dump}:/S4")[0]
        x = np.ascontiguousarray(tensor.array, np.float32)
        task = TaskModel(str(NETWORK), tensor.attrs["layer"], threads=2)
        reference = task.run(x)
        print(f"## {Path(dump).name}: {len(x)} samples\n")
        print("| Kbpi target | codec | Kbpi | bits/elt | PSNR | agreement | latency ms |")
        print("|---|---|---|---|---|---|---|")
        for method, cr, rate in POINTS:
            params = ({"cr": cr} if cr else {}) | ({"lossless": True} if rate == "lossless" else {"kbpi": float(rate)})
            r = run_point(x, tensor, method, f"{method}{cr or ''}@{rate}", params, calibration=None, task=task,
                          reference=reference, repeat=1, threads=2)
            label = f"autotiler CR{cr}" if cr else method
            print(f"| {rate} | {label} | {r.kbpi:.1f} | {r.bits_per_element:.4f} | {r.psnr:.2f} | {r.agreement:.3f} | "
                  f"{r.encode_ms + r.decode_ms:.0f} |", flush=True)
        print()


if __name__ == "__main__":
    main()
