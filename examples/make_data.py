"""Rebuild the dumps of the reference detector's split layers from the bundled photos.

    python examples/make_data.py data/          # calibration + held-out dumps (about 500 MB)
    python examples/make_data.py data/ --autotiler   # plus the auto-tiler training dump (several GB)
    python examples/make_data.py --demo examples/reference_demo.h5

The held-out set is fixed by rule, not by looking at images: in sorted file-name order,
every fourth image of ``examples/images`` (index 3, 7, 11, …) is held out; calibration and
training use the rest. The auto-tiler's training dump adds every photo of
``examples/images_more`` (a disjoint set, checked by perceptual hash in its PROVENANCE.md) and
two variants of each photo made before the detector (mirrored, zoomed in), so the detector
itself sees the augmented image.
"""

import argparse
import json
from pathlib import Path

from featcodec.dump import dump

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
IMAGES = ROOT / "examples" / "images"
IMAGES_MORE = ROOT / "examples" / "images_more"
LAYERS = ["S1", "S2", "S4"]
AUTOTILER_AUGMENTATIONS = ("flip", "zoom")


def splits() -> dict[str, list[str]]:
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))
    return {"train": [n for i, n in enumerate(names) if i % 4 != 3],
            "heldout": [n for i, n in enumerate(names) if i % 4 == 3]}


def autotiler_images() -> list[str]:
    """Training photos of the auto-tiler: the training split plus all of images_more."""
    return [str(IMAGES / n) for n in splits()["train"]] + sorted(str(p) for p in IMAGES_MORE.glob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="output folder (or file with --demo)")
    parser.add_argument("--demo", action="store_true", help="only the small bundled demo dump")
    parser.add_argument("--autotiler", action="store_true", help="also the auto-tiler training dump")
    parser.add_argument("--only-autotiler", action="store_true", help="only the auto-tiler training dump")
    args = parser.parse_args()
    parts = splits()
    if args.demo:
        jobs = {Path(args.target): (parts["heldout"][:2], ())}
    else:
        Path(args.target).mkdir(parents=True, exist_ok=True)
        (Path(args.target) / "splits.json").write_text(json.dumps(parts, indent=1))
        jobs = {} if args.only_autotiler else {
            Path(args.target) / f"reference_{name}.h5": ([str(IMAGES / f) for f in files], ())
            for name, files in parts.items()}
        if args.autotiler or args.only_autotiler:
            jobs[Path(args.target) / "autotiler_train.h5"] = (autotiler_images(), AUTOTILER_AUGMENTATIONS)
    for output, (files, augmentations) in jobs.items():
        files = [f if "/" in f else str(IMAGES / f) for f in files]
        summary = dump(str(MODEL), LAYERS, files, str(output), force=True, compression="lzf",
                       augmentations=augmentations)
        print(f"{output}: {summary.images} samples, {summary.images / summary.seconds:.2f} samples/s")


if __name__ == "__main__":
    main()
