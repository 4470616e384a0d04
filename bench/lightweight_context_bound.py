"""How far richer neighbour contexts could take the lightweight coder's size, against zstd -19.

    python bench/lightweight_context_bound.py data/reference_train.h5 data/reference_heldout.h5 \
        bench/results/lightweight_context_bound.md

For each reference layer and level count, the calibrated quantizer's symbols of 4 held-out
samples are measured three ways, each as a ratio to zstd -19 of the same symbols (one byte each):

* **static context models**: the two-pass code length of a static model per context: the
  conditional entropy of the symbols given the context, over the whole sample set, plus the cost of
  describing each context's distribution ((n - 1) / 2 · log2(count) bits per context, the
  Krichevsky–Trofimov regret). An adaptive coder with the same context pays about this much, so
  it shows what a context of that kind can give;
* **coder version 5** and **version 7**: the kernel's real payloads (calibrated partners).
"""

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zstandard

from featcodec.codecs import Lightweight
from featcodec.codecs.lightweight import _symbols
from featcodec.entropy import encode_symbol_maps

SAMPLES = 4
LEVELS = (4, 8, 16)


def shifted(symbols, dy, dx):
    """The causal neighbour (dy rows up, dx columns left; dx < 0: right) of every symbol, 0 outside."""
    out = np.zeros_like(symbols)
    H, W = symbols.shape[-2:]
    src_x, dst_x = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., dy:, dst_x] = symbols[..., : H - dy, src_x]
    return out


def static_bits(symbols, context, n):
    """Two-pass code length of `symbols` under a static distribution per `context` value, model cost included."""
    key = context.ravel() * n + symbols.ravel()
    _, joint_index, joint_count = np.unique(key, return_inverse=True, return_counts=True)
    _, context_index, context_count = np.unique(context.ravel(), return_inverse=True, return_counts=True)
    data = np.sum(np.log2(context_count[context_index] / joint_count[joint_index]))
    model = np.sum((n - 1) / 2 * np.log2(np.maximum(context_count, 2)))
    return data + model


def contexts(s, n):
    left, top, top_left, top_right = shifted(s, 0, 1), shifted(s, 1, 0), shifted(s, 1, 1), shifted(s, 1, -1)
    two_left, two_up = shifted(s, 0, 2), shifted(s, 2, 0)
    previous_channel = np.zeros_like(s)
    previous_channel[:, 1:] = s[:, :-1]
    four = ((left * n + top) * n + top_left) * n + top_right
    capped = lambda a: np.minimum(a, 3)  # noqa: E731
    return {
        "4 neighbours": four,
        "6 neighbours (2 more capped at 3)": (four * 4 + capped(two_left)) * 4 + capped(two_up),
        "4 neighbours + previous channel (capped at 3)": four * 4 + capped(previous_channel),
        "4 neighbours + channel": four * s.shape[1] + np.arange(s.shape[1])[None, :, None, None],
    }


def main(train_path, heldout_path, output):
    z19 = zstandard.ZstdCompressor(level=19)
    rows = []
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout:
        for layer in ("S1", "S2", "S4"):
            x = heldout[layer][:SAMPLES]
            for n in LEVELS:
                table = Lightweight(levels=n, fast=False).calibrate(train[layer][::3]).table
                s = np.stack([_symbols(sample, table) for sample in x])
                zstd_bits = 8 * sum(len(z19.compress(np.ascontiguousarray(sample).tobytes())) for sample in s)
                row = {"layer": layer, "levels": n}
                for name, context in contexts(s.astype(np.int64), n).items():
                    row[name] = static_bits(s.astype(np.int64), context, n) / zstd_bits
                for version in (5, 7):
                    payloads = encode_symbol_maps(s, n, table.get("parents"), version)
                    row[f"version {version}"] = 8 * sum(map(len, payloads)) / zstd_bits
                rows.append(row)
                print(row, flush=True)
    names = [k for k in rows[0] if k not in ("layer", "levels")]
    lines = ["# Static context models against the lightweight coder, as a ratio to zstd -19", "",
             f"`python bench/lightweight_context_bound.py` ({time.strftime('%Y-%m-%d')}): {SAMPLES} held-out "
             "samples per layer, calibrated quantizers. Static models: two-pass code length (conditional "
             "entropy + Krichevsky–Trofimov model cost per context). Lower is smaller.", "",
             "| layer | levels | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['levels']} | " + " | ".join(f"{r[k]:.3f}" for k in names) + " |")
    Path(output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
