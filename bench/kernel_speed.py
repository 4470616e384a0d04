"""Speed and size of the lightweight kernel's coder versions next to zstd, on the same symbols.

    python bench/kernel_speed.py [data/reference_train.h5 data/reference_heldout.h5]   # make kernel-bench

The quick half of `bench/lightweight_report.py` (no task figures): for each reference layer and
level count, a quantizer calibrated on the training dump, 4 held-out samples, one thread, float32
in, quantization included. Encode / decode MB/s through `featcodec.entropy`, their ratio to
python-zstandard level 3 on the quantized symbols (one byte each) in the same run, and bits per
element with their ratio to zstd -19's. About two minutes.
"""

import sys
from functools import partial

import h5py
import numpy as np
import zstandard
from lightweight_report import timed  # bench/ is the script's folder, first on sys.path

from featcodec.codecs import Lightweight
from featcodec.codecs.lightweight import _levels_by_symbol, _symbols, symbol_order
from featcodec.entropy import decode_values, encode_values

VERSIONS = (5, 6, 7)
LEVELS = (2, 4, 8, 16)
SAMPLES = 4


def compress_all(compressor, symbols):
    return [compressor.compress(s) for s in symbols]


def encode_all(part, table, version):
    return [encode_values(s, table["thresholds"], symbol_order(table), len(table["levels"]), table.get("parents"),
                          version) for s in part]


def decode_all(payloads, part, table, version):
    levels = _levels_by_symbol(table)
    return [decode_values(p, s.shape, levels, table.get("parents"), version) for p, s in zip(payloads, part)]


def main(train_path="data/reference_train.h5", heldout_path="data/reference_heldout.h5"):
    z3, z19 = zstandard.ZstdCompressor(level=3), zstandard.ZstdCompressor(level=19)
    print("| layer | levels | zstd -3 MB/s | " + " | ".join(
        f"v{v} bits/elt | v{v} / zstd -19 | v{v} enc MB/s | v{v} dec MB/s | v{v} enc / zstd -3 | v{v} dec / zstd -3"
        for v in VERSIONS) + " |")
    print("|" + "---|" * (3 + 6 * len(VERSIONS)))
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout:
        for layer in ("S1", "S2", "S4"):
            part = heldout[layer][:SAMPLES]
            for n in LEVELS:
                table = Lightweight(levels=n, fast=False).calibrate(train[layer][::3]).table
                symbols = [np.ascontiguousarray(_symbols(s, table)).tobytes() for s in part]
                _, zstd3 = timed(partial(compress_all, z3, symbols), repeat=7)
                zstd19 = sum(len(z19.compress(s)) for s in symbols)
                cells = [f"{part.nbytes / 1e6 / zstd3:.0f}"]
                for version in VERSIONS:
                    payloads, encode = timed(partial(encode_all, part, table, version), repeat=7)
                    _, decode = timed(partial(decode_all, payloads, part, table, version), repeat=7)
                    size = sum(map(len, payloads))
                    mb = part.nbytes / 1e6
                    cells += [f"{size * 8 / part.size:.4f}", f"{size / zstd19:.3f}", f"{mb / encode:.0f}",
                              f"{mb / decode:.0f}", f"{encode / zstd3:.1f}x", f"{decode / zstd3:.1f}x"]
                print(f"| {layer} | {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
