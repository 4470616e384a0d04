"""Print what each .fcb of the demo costs in bits and in detector accuracy.

    python examples/demo_report.py DUMP.h5 FILE.fcb [FILE.fcb …]
"""

import sys
from pathlib import Path

import h5py
import numpy as np

import featcodec
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"


def main(dump_path: str, files: list[str]) -> None:
    tasks: dict[str, TaskModel] = {}
    references = {}
    print(f"{'file':<28} {'layer':<10} {'bits/elt':>9} {'CR':>8} {'PSNR dB':>8} {'mAP agreement':>14}")
    with h5py.File(dump_path) as dump:
        for path in files:
            blob = Path(path).read_bytes()
            header = featcodec.info(blob)
            dataset = header["dataset"]
            original = dump[dataset][()]
            decoded = featcodec.decode(blob).astype(np.float32)
            if dataset not in tasks:
                tasks[dataset] = TaskModel(str(MODEL), header["layer"])
                references[dataset] = tasks[dataset].run(original)
            agreement = tasks[dataset].agreement(original, decoded, references[dataset])
            mse = float(np.mean((decoded - original) ** 2))
            psnr = 10 * np.log10(float(original.max()) ** 2 / mse) if mse > 0 else float("inf")
            print(f"{Path(path).name:<28} {dataset:<10} {header['file_bits_per_element']:>9.3f} "
                  f"{32 / header['file_bits_per_element']:>8.1f} {psnr:>8.2f} {agreement:>14.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
