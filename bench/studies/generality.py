"""Lightweight uncalibrated on networks it was never tuned on: bits and task agreement against
`uniform` + zstd-19 over the same clip range, at every level count from 2 to 16.

    python bench/studies/generality.py ../shared/networks ../shared/data/images > bench/results/generality.md

Each network folder (``../shared/networks/<name>/``) carries its ONNX model and a ``split.py``
with ``preprocess``, ``cut``, ``compare``, ``summarize`` and its ``RECOMMENDED`` split tensors
(see that folder's README); every single-tensor split is measured. For each level count the
lightweight codec designs its quantizer per sample with no calibration (measured clip, uniform
cells: the default path of a first encode); `uniform` then gets each sample's clip range from
that design, so both quantize to the same values and the task agreement (the network's own F1
metric, tail on decoded vs on original activations) must match: what differs is the entropy
coder. The last row of a table is lightweight's true default (no level count: the SNR target).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

import featcodec
from featcodec.codecs import Lightweight, Uniform

LEVELS = (2, 3, 4, 6, 8, 12, 16)


def load_split_module(folder: Path):
    spec = importlib.util.spec_from_file_location(f"split_{folder.name}", folder / "split.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def f1_key(summary: dict) -> str:
    return next(k for k in summary if k.endswith("F1_pooled"))


def measure(module, split: str, images: list[str]) -> list[dict]:
    model, head, tail, input_name = module.cut(module.DEFAULT_MODEL, [split])
    s_head, s_tail = module.session(head), module.session(tail)
    tail_input = s_tail.get_inputs()[0].name
    acts = [s_head.run([split], {input_name: module.preprocess(f)})[0].astype(np.float32) for f in images]
    references = [s_tail.run(None, {tail_input: a}) for a in acts]

    def agreement(decoded: list[np.ndarray]) -> float:
        rows = [module.compare(ref, s_tail.run(None, {tail_input: d})) for ref, d in zip(references, decoded)]
        summary = module.summarize(rows)
        return float(summary[f1_key(summary)])

    elements = sum(a.size for a in acts)
    rows = []
    for levels in (*LEVELS, None):
        codec = Lightweight(levels=levels)
        lw_bytes, uni_bytes, lw_decoded, uni_decoded, seconds = 0, 0, [], [], 0.0
        for a in acts:
            start = time.perf_counter()
            blob = featcodec.encode(a, codec)
            seconds += time.perf_counter() - start
            table = featcodec.info(blob)["samples"][0]
            lw_bytes += featcodec.info(blob)["payload_bytes"]
            lw_decoded.append(featcodec.decode(blob))
            if levels is not None:
                clip = [min(table["levels"]), max(table["levels"])]
                uni = featcodec.encode(a, Uniform(levels=len(table["levels"]), clip=clip, zstd=19))
                uni_bytes += featcodec.info(uni)["payload_bytes"]
                uni_decoded.append(featcodec.decode(uni))
        row = {"levels": levels, "n_levels": len(table["levels"]), "lw_bpe": 8 * lw_bytes / elements,
               "lw_agreement": agreement(lw_decoded), "lw_mb_s": 4 * elements / 1e6 / seconds}
        if levels is not None:
            row.update(uni_bpe=8 * uni_bytes / elements, uni_agreement=agreement(uni_decoded))
        rows.append(row)
    return rows, tuple(acts[0].shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", help="folder of network folders (../shared/networks)")
    parser.add_argument("images", help="folder of photos (../shared/data/images)")
    parser.add_argument("--max-images", type=int, default=16)
    args = parser.parse_args()
    images = sorted(f for f in glob.glob(os.path.join(args.images, "*"))
                    if f.lower().endswith((".jpg", ".jpeg", ".png")))[: args.max_images]
    print("# Lightweight, uncalibrated, on other networks\n")
    print(f"`python bench/studies/generality.py` on {len(images)} photos of `{args.images}` (sorted, the first "
          f"{len(images)}); featcodec {featcodec.__version__}. Bits per element of the payloads; agreement: the "
          "network's own pooled F1 of the tail on decoded vs original activations. `uniform` is zstd-19 of "
          "one byte per symbol over the same clip range and levels as lightweight's own design, so both "
          "decode to the same values.\n")
    verdicts = []
    for folder in sorted(Path(args.networks).iterdir()):
        if not (folder / "split.py").exists():
            continue
        try:
            module = load_split_module(folder)
        except ImportError as err:
            print(f"## {folder.name}\n\nskipped: {err}\n")
            continue
        for split in [s for s in module.RECOMMENDED if "," not in s]:
            start = time.perf_counter()
            rows, shape = measure(module, split, images)
            print(f"## {folder.name} `{split}` {shape}\n")
            print("| levels | lightweight bpe | uniform+zstd-19 bpe | bits saved | agreement lightweight | "
                  "agreement uniform | lightweight MB/s |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                if r["levels"] is None:
                    print(f"| default ({r['n_levels']}) | {r['lw_bpe']:.3f} | | | {r['lw_agreement']:.3f} | | "
                          f"{r['lw_mb_s']:.0f} |")
                else:
                    print(f"| {r['levels']} | {r['lw_bpe']:.3f} | {r['uni_bpe']:.3f} | "
                          f"{100 * (1 - r['lw_bpe'] / r['uni_bpe']):.1f} % | {r['lw_agreement']:.3f} | "
                          f"{r['uni_agreement']:.3f} | {r['lw_mb_s']:.0f} |")
            swept = [r for r in rows if r["levels"] is not None]
            drops = [(a["levels"], b["levels"], b["lw_agreement"] - a["lw_agreement"])
                     for a, b in zip(swept, swept[1:]) if b["lw_agreement"] < a["lw_agreement"] - 0.01]
            savings = [1 - r["lw_bpe"] / r["uni_bpe"] for r in swept]
            verdicts.append((folder.name, split, min(savings), max(savings), drops))
            print(f"\nbits saved {100 * min(savings):.1f}-{100 * max(savings):.1f} %; agreement drops > 0.01 "
                  f"as levels rise: {', '.join(f'{a}->{b} ({d:+.3f})' for a, b, d in drops) or 'none'}; "
                  f"{time.perf_counter() - start:.0f} s\n", flush=True)
    print("## Summary\n\n| network | split | bits saved vs uniform+zstd-19 | agreement monotone 2-16 levels (±0.01) |")
    print("|---|---|---|---|")
    for name, split, low, high, drops in verdicts:
        print(f"| {name} | `{split}` | {100 * low:.1f}-{100 * high:.1f} % | "
              f"{'yes' if not drops else 'no: ' + ', '.join(f'{a}->{b}' for a, b, _ in drops)} |")


if __name__ == "__main__":
    main()
