"""HEVC rate control: how often a Kbpi target is met within ±10 %, and in how many encodes.

    python bench/rate_control.py data/reference_heldout.h5 data/video_*.h5 data/pans_heldout.h5 \
        > bench/results/rate_control.md

Intra: the held-out photos (the rate model's table, featcodec/rate_curves.json, holds training
photos only), S1, S2 and S4, coded by tiling, FPC and the auto-tiler (CR4, CR16) at the auto-tiler
paper's bases, 15 to 240 Kbpi. Inter: frames 32-63 of each bundled clip (the table holds groups
from frames 0-31 of the same clips) and the clips bench/pan_clips.py makes from the held-out
photos (content the table never saw; every 3rd clip, one of each motion), tiling in groups of
32, 16 and 8, the auto-tiler (CR16) in groups of 16 and FPC (S2) in groups of 8, where the clip
is long enough; the target is per sample, so a group aims at gop times it.
x265 preset medium. A target that no CRF reaches (the frames' floor at CRF 51 is above it, or
CRF 0 below it) is left out and counted. Last, the table against itself: every curve's two-encode
search simulated (by interpolation, no encodes) from the curves of other photos and clips.
"""

import json
import math
import os
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
from rate_curves import clip_rows  # bench/, beside this script

import featcodec
from featcodec import ratemodel, video

BASES = (15, 30, 60, 120, 240)
INTRA = [("tiling", {}), ("fpc", {}), ("autotiler CR4", {"cr": 4}), ("autotiler CR16", {"cr": 16})]
INTER = [("tiling", {}, 32), ("tiling", {}, 16), ("tiling", {}, 8), ("autotiler CR16", {"cr": 16}, 16),
         ("fpc", {}, 8)]


def search(x: np.ndarray, method: str, params: dict, kbpi: float, gop: int = 1) -> tuple[float, int, float]:
    """(kbits per sample reached, x265 encodes, CRF) for one target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", video.RateWarning)
        blob = featcodec.encode(x, method.split()[0], kbpi=kbpi, gop=gop, **params)
    samples = featcodec.info(blob)["samples"]
    return sum(s["kbits"] for s in samples) / len(samples), samples[0]["encodes"], samples[0]["crf"]


def reachable(crf: float, reached: float, kbpi: float) -> bool:
    """False where the search ended at a CRF range end on the side of the target it cannot pass."""
    return not ((crf == 51 and reached > 1.1 * kbpi) or (crf == 0 and reached < 0.9 * kbpi))


def report(title: str, results: dict[str, list[tuple[float, int, bool]]]) -> None:
    print(f"\n## {title}\n")
    print("| frames | targets | within ±10 % | ≤ 2 encodes and within | mean encodes | encodes 1/2/3/4 | unreachable |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in [*results.items(), ("all", None)]:
        rows = rows if rows is not None else [r for rs in results.values() for r in rs]
        met = [r for r in rows if r[2]]
        errors = [abs(math.log2(r[0])) for r in met]
        within = sum(e <= math.log2(1.1) for e in errors)
        quick = sum(e <= math.log2(1.1) and r[1] <= 2 for e, r in zip(errors, met))
        counts = [sum(r[1] == k for r in met) for k in (1, 2, 3, 4)]
        print(f"| {name} | {len(met)} | {within} ({within / max(len(met), 1):.0%}) | {quick} "
              f"({quick / max(len(met), 1):.0%}) | {np.mean([r[1] for r in met]):.2f} | "
              f"{'/'.join(map(str, counts))} | {len(rows) - len(met)} |")


def intra(path: Path) -> dict:
    results = defaultdict(list)
    with h5py.File(path, "r") as dump:
        for layer in ("S1", "S2", "S4"):
            for i in range(len(dump[layer])):
                x = dump[layer][i : i + 1]
                for method, params in INTRA:
                    for kbpi in BASES:
                        reached, encodes, crf = search(x, method, params, kbpi)
                        results[f"{layer} {method}"].append((reached / kbpi, encodes, reachable(crf, reached, kbpi)))
                print(f"{path.name} {layer} #{i}", file=sys.stderr, flush=True)
    return results


def inter(paths: list[Path]) -> dict:
    results = defaultdict(list)
    for path in paths:
        with h5py.File(path, "r") as dump:
            for clip, rows in list(clip_rows(dump).items())[::3]:  # pans: one clip of each motion
                start = 32 if len(rows) >= 64 else 0  # the bundled clips' first 32 frames are in the table
                for layer in ("S2", "S4"):
                    for method, params, gop in INTER:
                        if (method == "fpc" and layer == "S4") or start + gop > len(rows):
                            continue
                        x = dump[layer][rows[start] : rows[start] + gop]
                        for kbpi in BASES:
                            reached, encodes, crf = search(x, method, params, kbpi, gop)
                            results[f"{layer} {method} gop{gop}"].append(
                                (reached / kbpi, encodes, reachable(crf, reached, kbpi)))
                print(f"{path.name} {clip}", file=sys.stderr, flush=True)
    return results


def table_check() -> None:
    """Each table curve's search simulated from the curves of other sources (linear in the grid)."""
    table = json.loads(ratemodel.TABLE.read_text())
    grid = np.asarray(table["grid"], float)
    tolerance = math.log2(1.1)
    print("\n## The table against itself (leave one photo or clip out, simulated)\n")
    print("| kind | curves | targets | first encode within ±10 % | within ±10 % in ≤ 2 encodes |")
    print("|---|---|---|---|---|")
    for inter_kind in (False, True):
        rows = [r for r in table["curves"] if r["inter"] == inter_kind]
        first = second = count = 0
        for row in rows:
            model = ratemodel.RateModel(grid, [r for r in rows if r["source"] != row["source"]])
            own = np.minimum.accumulate(np.asarray(row["log2_bpp"]))
            for goal in np.arange(-9.0, 1.01, 0.5):  # log2 bpp targets inside the curve
                if not own[-1] + 0.2 < goal < own[0] - 0.2:
                    continue
                count += 1
                crf = model.first_crf(goal, row["activity"], row["geometry"])
                seen = float(np.interp(crf, grid, own))
                if abs(seen - goal) <= tolerance:
                    first += 1
                    second += 1
                    continue
                step = model.next_crf(crf, seen, goal, row["activity"], row["geometry"])
                if step is not None:
                    second += abs(float(np.interp(min(max(step, 0), 51), grid, own)) - goal) <= tolerance
        print(f"| {'inter' if inter_kind else 'intra'} | {len(rows)} | {count} | {first / count:.0%} | "
              f"{second / count:.0%} |")


def main(paths: list[str]) -> None:
    photos, clips = [], []
    for path in map(Path, paths):
        with h5py.File(path, "r") as dump:
            (clips if clip_rows(dump) else photos).append(path)
    print("# HEVC rate control: Kbpi targets met within ±10 %, and encodes per target\n")
    print(f"Model table: {ratemodel.TABLE.name}; {featcodec.__name__} {featcodec.__version__}; x265 preset medium.")
    for path in photos:
        report(f"Intra, {path.name} (one sample per stream)", intra(path))
    if clips:
        report("Inter, " + ", ".join(p.name for p in clips) + " (one stream per group)", inter(clips))
    table_check()


if __name__ == "__main__":
    # one x265 process per encode, as in bench/rate_curves.py: PyAV's in-process libx265 segfaulted
    # in a long run of this bench's FPC groups
    os.environ.setdefault("FEATCODEC_VIDEO_BACKEND", "ffmpeg")
    main(sys.argv[1:])
