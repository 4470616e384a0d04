"""Write the validation split of a training dump as a dump of its own, for `featcodec bench`.

    python bench/validation_split.py data/autotiler_train.h5 data/autotiler_valid.h5 [--layer S2] [--fraction 0.1]

Training (`featcodec train`) keeps the last `fraction` of a dump's samples for validation (the
dump is image-major, so every variant of a validation photo is there and none in training).
Models are chosen on this split, and reported on the held-out photos, which nothing is tuned on.
The layers, their attributes, ``/images``, ``/frames``, ``/sources`` and the reference outputs are
copied for those samples, so the bench measures agreement and remote inference on them.
"""

import argparse

import h5py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump")
    parser.add_argument("output")
    parser.add_argument("--fraction", type=float, default=0.1, help="as train's valid_fraction")
    parser.add_argument("--layer", action="append", help="only these layers (repeatable; default: all)")
    args = parser.parse_args()
    with h5py.File(args.dump, "r") as source, h5py.File(args.output, "w") as target:
        count = len(source["images"])
        first = count - max(1, int(round(count * args.fraction)))
        target.attrs.update(dict(source.attrs))
        target.attrs["images"] = "see /images"

        def copy(name, node):
            is_layer = "layer" in node.attrs
            if is_layer and args.layer and name not in args.layer:
                return
            if isinstance(node, h5py.Dataset) and node.shape and node.shape[0] == count:
                chunks = {"chunks": (1, *node.shape[1:]), "compression": "lzf"} if node.ndim == 4 else {}
                data = target.create_dataset(name, data=node[first:], **chunks)
                data.attrs.update({k: v for k, v in node.attrs.items() if k != "images"})
        source.visititems(copy)
        print(f"{args.output}: samples {first}..{count - 1} of {args.dump} ({count - first})")


if __name__ == "__main__":
    main()
