"""The lightweight codec's default path (uncalibrated, 15 dB distortion target) against the same
codec calibrated once, and zstd -3 of the float32 bytes: encode / decode MB/s in one process, bits
per element, and how many samples meet the target, with and without reusing a design across the
samples of one call (`REUSE_MARGIN_DB`).

    python bench/lightweight_default_speed.py data/reference_heldout.h5 data/test_clips_s2.h5 \
        > bench/results/lightweight_default_speed.md

Each DUMP's S1, S2 and S4 (those it has), the first 8 samples, one `featcodec.encode` call each;
speeds are the best of 3 runs (the machine is shared), per-sample design = reuse turned off; "exact
search" is the quantizer search level count by level count on the sorted values (`BINNED_SEARCH` off),
the default path before `snr_search`.
"""

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zstandard

import featcodec
from featcodec.codecs import Lightweight, lightweight

RUNS = 3


def best_time(fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def snr_db(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    return 10 * np.log10(np.var(x, axis=axes) / np.mean((x - y) ** 2, axis=axes))


def row(name: str, x: np.ndarray, codec, margin: float | None, binned: bool = True) -> str:
    saved = lightweight.REUSE_MARGIN_DB, lightweight.BINNED_SEARCH
    if margin is not None:
        lightweight.REUSE_MARGIN_DB = margin
    lightweight.BINNED_SEARCH = binned
    try:
        seconds, blob = best_time(lambda: featcodec.encode(x, codec))
    finally:
        lightweight.REUSE_MARGIN_DB, lightweight.BINNED_SEARCH = saved
    decode_seconds, y = best_time(lambda: featcodec.decode(blob))
    info = featcodec.info(blob)
    snr = snr_db(x, y)
    tables = {str(s) for s in info["samples"]} if "samples" in info else set()
    mb = x.nbytes / 1e6
    return (f"| {name} | {mb / seconds:.0f} | {mb / decode_seconds:.0f} | {info['bits_per_element']:.4f} | "
            f"{snr.mean():.2f} | {int(np.sum(snr >= 15.0 - 0.05))}/{len(x)} | {len(tables) or '-'} |")


def zstd_row(x: np.ndarray) -> str:
    compressor, decompressor = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    seconds, packed = best_time(lambda: compressor.compress(x.tobytes()))
    decode_seconds, _ = best_time(lambda: decompressor.decompress(packed))
    mb = x.nbytes / 1e6
    return f"| zstd -3, float32 bytes | {mb / seconds:.0f} | {mb / decode_seconds:.0f} | " \
           f"{len(packed) * 8 / x.size:.4f} | " \
           "lossless | - | - |"


def main(paths: list[str]) -> None:
    print("# The lightweight codec's default path: design reuse\n")
    print(__doc__.split("\n\n", 2)[2].strip() + "\n")
    for path in paths:
        with h5py.File(path) as f:
            layers = [k for k in ("S1", "S2", "S4") if k in f]
            data = {k: np.ascontiguousarray(f[k][:8], np.float32) for k in layers}
        for layer, x in data.items():
            print(f"## {Path(path).name}:/{layer}, {len(x)} samples {x.shape[1:]}\n")
            print("| path | encode MB/s | decode MB/s | bits/elt | mean SNR dB | samples ≥ 15 dB | tables |")
            print("|---|---|---|---|---|---|---|")
            print(row("default, per-sample design, exact search (before)", x, Lightweight(), margin=-100.0,
                      binned=False))
            print(row("default, per-sample design", x, Lightweight(), margin=-100.0))
            print(row(f"default, design reuse ({lightweight.REUSE_MARGIN_DB:g} dB)", x, Lightweight(), margin=None))
            print(row("calibrated once on these samples", x, Lightweight().calibrate(x), margin=None))
            print(zstd_row(x) + "\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
