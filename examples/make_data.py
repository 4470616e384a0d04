"""Rebuild the dumps of the reference detector's split layers from examples/images.

    python examples/make_data.py data/          # train + held-out dumps (about 500 MB)
    python examples/make_data.py --demo examples/reference_demo.h5

The held-out set is fixed by rule, not by looking at images: in sorted file-name order,
every fourth image (index 3, 7, 11, …) is held out; calibration and training use the rest.
"""

import argparse
import json
from pathlib import Path

from featcodec.dump import dump

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
IMAGES = ROOT / "examples" / "images"
LAYERS = ["S1", "S2", "S4"]


def splits() -> dict[str, list[str]]:
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))
    return {"train": [n for i, n in enumerate(names) if i % 4 != 3],
            "heldout": [n for i, n in enumerate(names) if i % 4 == 3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="output folder (or file with --demo)")
    parser.add_argument("--demo", action="store_true", help="only the small bundled demo dump")
    args = parser.parse_args()
    parts = splits()
    if args.demo:
        jobs = {Path(args.target): parts["heldout"][:2]}
    else:
        Path(args.target).mkdir(parents=True, exist_ok=True)
        (Path(args.target) / "splits.json").write_text(json.dumps(parts, indent=1))
        jobs = {Path(args.target) / f"reference_{name}.h5": files for name, files in parts.items()}
    for output, files in jobs.items():
        summary = dump(str(MODEL), LAYERS, [str(IMAGES / f) for f in files], str(output), force=True)
        print(f"{output}: {summary.images} images, {summary.images / summary.seconds:.2f} images/s")


if __name__ == "__main__":
    main()
