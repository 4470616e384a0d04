"""Figures for the lightweight codec on real activations (issue: lightweight codec).

    python bench/lightweight_report.py data/reference_train.h5 data/reference_heldout.h5 bench/results/lightweight.md

For each split layer and setting (levels 2, 3, 4, 8, 16, the default SNR target, bpe 0.6 / 0.8
with the uniform and the entropy-constrained quantizer; 4 levels and the default again without
partner channels), quantizers are calibrated on the training dump and applied to held-out
samples; `coder` is the entropy coder version calibration chose (3: with partner channels).
Reported: bits per element of the context coder, MSE, SNR, the same symbols' order-0 entropy,
zstd -19 and brotli -q 11 sizes (the better of cell indices and the coder's symbol numbering),
and single-core encode / decode throughput (MB/s of float32 input; median of 3 runs after a
warm-up).
"""

import json
import statistics
import sys
import time

import brotli
import h5py
import numpy as np
import zstandard

from featcodec.bench import environment
from featcodec.codecs import Lightweight
from featcodec.codecs.lightweight import symbol_order
from featcodec.entropy import decode_symbols
from featcodec.quantizer import quantize

SETTINGS = ([{"levels": n} for n in (2, 3, 4, 8, 16)] + [{}, {"bpe": 0.6}, {"bpe": 0.8}]
            + [{"bpe": b, "quantizer": "ecsq"} for b in (0.6, 0.8)]
            + [{"levels": 4, "partners": False}, {"partners": False}])
SAMPLES = 3


def timed(function, repeat=3):
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(train_path, heldout_path, output):
    rows = []
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout:
        for layer in ("S1", "S2", "S4"):
            calibration = train[layer][::3]
            x = heldout[layer][:SAMPLES]
            for setting in SETTINGS:
                codec = Lightweight(**setting).calibrate(calibration)
                table = codec.table
                n = len(table["levels"])
                cells = [quantize(s, np.asarray(table["thresholds"], np.float32)) for s in x]
                symbols = [symbol_order(table)[c] for c in cells]  # what the context coder codes
                payloads, encode_time = timed(lambda codec=codec, x=x: [codec.encode(s)[0] for s in x])
                decoded, decode_time = timed(lambda codec=codec, x=x, payloads=payloads:
                                             [codec.decode(p, s.shape, {}) for p, s in zip(payloads, x)])
                version = table.get("coder", 1)
                for s, p in zip(symbols, payloads):
                    assert np.array_equal(s, decode_symbols(p, s.shape, n, version, table.get("parents")))
                elements = x.size
                stack = np.stack(symbols)
                p = np.bincount(stack.ravel(), minlength=n) / stack.size
                order0 = float(-np.sum(p[p > 0] * np.log2(p[p > 0])))
                # zstd and brotli get the better of the two numberings (cell index, coder symbol).
                zstd = min(sum(len(zstandard.ZstdCompressor(level=19).compress(s.tobytes())) for s in numbering)
                           for numbering in (cells, symbols)) * 8 / elements
                brot = min(sum(len(brotli.compress(s.tobytes(), quality=11)) for s in numbering)
                           for numbering in (cells, symbols)) * 8 / elements
                coded = sum(len(p) for p in payloads) * 8 / elements
                y = np.stack(decoded)
                mse = float(np.mean((y - x) ** 2))
                rows.append({
                    "layer": layer, "setting": json.dumps(setting) if setting else "default (snr 15 dB)",
                    "levels": n, "coder": version, "bits_per_element": coded, "mse": mse,
                    "snr_db": float(10 * np.log10(np.var(x) / mse)), "order0_entropy": order0,
                    "zstd19_bpe": zstd, "brotli11_bpe": brot, "vs_zstd_percent": 100 * (coded / zstd - 1),
                    "encode_mb_s": x.nbytes / 1e6 / encode_time, "decode_mb_s": x.nbytes / 1e6 / decode_time,
                })
                print(rows[-1], flush=True)
    lines = ["| layer | setting | levels | coder | bits/elt | MSE | SNR dB | order-0 H | zstd-19 | brotli-11 | "
             "vs zstd | enc MB/s | dec MB/s |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['setting']} | {r['levels']} | {r['coder']} | {r['bits_per_element']:.4f} | "
                     f"{r['mse']:.4g} | {r['snr_db']:.2f} | {r['order0_entropy']:.4f} | {r['zstd19_bpe']:.4f} | "
                     f"{r['brotli11_bpe']:.4f} | {r['vs_zstd_percent']:+.1f} % | {r['encode_mb_s']:.1f} | "
                     f"{r['decode_mb_s']:.1f} |")
    machine = environment(threads=1)
    lines.append(f"\n{time.strftime('%Y-%m-%d')}, one core of {machine['cpu']} ({machine['cores']} cores), "
                 f"numpy {machine['numpy']}, constriction {machine['constriction']}. Throughput depends on the "
                 "machine: compare rows of one run, not runs.")
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(output.replace(".md", ".json"), "w") as f:
        json.dump({"environment": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
