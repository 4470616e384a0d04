"""Figures for the lightweight codec's compiled kernel on real activations.

    python bench/lightweight_report.py data/reference_train.h5 data/reference_heldout.h5 bench/results/lightweight.md \
        [data/autotiler_train.h5]

Task figures are measured on the 12 held-out photos plus, when the auto-tiler's training dump is
given, the 156 photos of ``examples/images_more`` (their unaugmented samples): none of them
calibrates the lightweight codec, and agreement on 12 photos alone moves by ±0.05 between
neighbouring settings (a few detections near the score threshold flip).

For each reference split layer:

* **speed and size** (calibrated on the training dump, held-out samples, one thread, float32 in,
  for the default coder, the fast one (``fast=True``, coder version 7) and version 6 (the fast
  coder before version 7),
  quantization included): encode / decode MB/s through the codec's API; in the same run on the
  same samples, python-zstandard at levels 3 and 19 on the quantized symbols (one byte each);
  the ratio of our encode time to zstd -3's, and of our size to zstd -19's;
* **task**: agreement mAP@0.5 of every level count with the uncompressed detector, and the
  bits per element at agreement 0.95 (interpolated between neighbouring level counts);
* **uncalibrated**: the default codec on each sample alone (no calibration) at 2-16 levels
  against the ``uniform`` codec with zstd -19 over the same clip range: bits and agreement.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zstandard

import featcodec
from featcodec.bench import environment
from featcodec.codecs import Lightweight
from featcodec.codecs.lightweight import _calibration_stride, _coder_version, _symbols
from featcodec.entropy import FAST_VERSION, encode_symbol_maps
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
LEVELS = (2, 3, 4, 6, 8, 12, 16)
SPEED_SAMPLES = 4



FAST_MAX_COST = 0.01  # the rule calibration followed before version 7 became the default

def _fast_where_free(table: dict, samples: np.ndarray) -> dict:
    """`table` with the fast coder (version 7) if it codes calibration samples in at most
    FAST_MAX_COST more bits than the table's own version."""
    stride = _calibration_stride(samples)
    check = samples[1::stride] if len(samples) > 1 else samples  # next to those the partners saw
    symbols = np.stack([_symbols(s, table) for s in check])
    n_levels, parents = len(table["levels"]), table.get("parents")
    current = sum(map(len, encode_symbol_maps(symbols, n_levels, parents, _coder_version(table))))
    fast = sum(map(len, encode_symbol_maps(symbols, n_levels, parents, FAST_VERSION)))
    return {**table, "coder": FAST_VERSION} if fast <= (1 + FAST_MAX_COST) * current else table

def timed(function, repeat=5):
    """The result of `function` and its median time over `repeat` runs (after one warm-up)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def timed_coding(codec, part):
    """Payloads, and the encode and decode times of `part`'s samples (median of `timed`)."""
    payloads, encode_time = timed(lambda: [codec.encode(s)[0] for s in part])
    _, decode_time = timed(lambda: [codec.decode(p, s.shape, {}) for p, s in zip(payloads, part)])
    return payloads, encode_time, decode_time


def rate_at(rows, level=0.95):
    """Bits per element at `level` agreement, linear between the two level counts around it."""
    rows = sorted(rows, key=lambda r: r["bits_per_element"])
    for low, high in zip(rows, rows[1:]):
        if low["agreement"] < level <= high["agreement"]:
            t = (level - low["agreement"]) / (high["agreement"] - low["agreement"])
            return low["bits_per_element"] + t * (high["bits_per_element"] - low["bits_per_element"])
    return rows[0]["bits_per_element"] if rows and rows[0]["agreement"] >= level else None


EXTRA_PHOTOS = 156  # all of examples/images_more: on 60 photos agreement still moved by ±0.03 between settings
TRAIN_PHOTOS = 36  # the training split's photos come first in the auto-tiler dump, 3 samples each


def evaluation_set(heldout, extra, layer, photos=EXTRA_PHOTOS):
    """The held-out samples of `layer`, then the unaugmented samples of the first `photos` photos of
    examples/images_more from the auto-tiler's dump `extra` (when given)."""
    x = heldout[layer][()]
    if extra is None:
        return x
    node = extra[layer]
    rows = range(3 * TRAIN_PHOTOS, min(len(node), 3 * (TRAIN_PHOTOS + photos)), 3)
    return np.concatenate([x, np.stack([node[i] for i in rows])])


def main(train_path, heldout_path, output, extra_path=None):
    speed, task_rows, generality = [], [], []
    z3, z19 = zstandard.ZstdCompressor(level=3), zstandard.ZstdCompressor(level=19)
    extra = h5py.File(extra_path) if extra_path else None
    with h5py.File(train_path) as train, h5py.File(heldout_path) as heldout:
        for layer in ("S1", "S2", "S4"):
            calibration = train[layer][::3]
            x = evaluation_set(heldout, extra, layer)
            tensor = heldout[layer].attrs["layer"]
            task = TaskModel(str(NETWORK), tensor)
            reference = task.run(x)
            for n in LEVELS:
                codec = Lightweight(levels=n, fast=False).calibrate(calibration)  # version 5
                table = codec.table
                # what calibration chose before version 7 became the default: the fast coder if free
                picked = _fast_where_free(table, calibration)["coder"]
                part = x[:SPEED_SAMPLES]
                payloads, encode_time, decode_time = timed_coding(codec, part)
                symbols = [np.ascontiguousarray(_symbols(s, table)).tobytes() for s in part]
                _, zstd3_time = timed(lambda symbols=symbols: [z3.compress(s) for s in symbols])
                zstd19 = sum(len(z19.compress(s)) for s in symbols)
                size = sum(len(p) for p in payloads)
                blob = featcodec.encode(x, codec)
                decoded = featcodec.decode(blob)
                row = {"layer": layer, "levels": n, "partners": "parents" in table, "calibration_picks": picked,
                       "bits_per_element": featcodec.info(blob)["bits_per_element"],
                       "agreement": task.agreement(x, decoded, reference),
                       "encode_mb_s": part.nbytes / 1e6 / encode_time, "decode_mb_s": part.nbytes / 1e6 / decode_time,
                       "zstd3_mb_s": part.nbytes / 1e6 / zstd3_time, "encode_vs_zstd3": encode_time / zstd3_time,
                       "decode_vs_zstd3": decode_time / zstd3_time, "size_vs_zstd19": size / zstd19,
                       "zstd19_bpe": zstd19 * 8 / part.size}
                # the fast coder (version 7): the same quantizer, so the same decoded values and agreement
                fast = Lightweight(levels=n, fast=True).calibrate(calibration)
                assert fast.table["thresholds"] == table["thresholds"]
                fast_payloads, fast_encode, fast_decode = timed_coding(fast, part)
                old = Lightweight(table={**fast.table, "coder": 6})  # the fast coder before version 7
                old_payloads, old_encode, old_decode = timed_coding(old, part)
                row.update({"fast_bits_per_element": featcodec.info(featcodec.encode(x, fast))["bits_per_element"],
                            "fast_encode_mb_s": part.nbytes / 1e6 / fast_encode,
                            "fast_decode_mb_s": part.nbytes / 1e6 / fast_decode,
                            "fast_encode_vs_zstd3": fast_encode / zstd3_time,
                            "fast_decode_vs_zstd3": fast_decode / zstd3_time,
                            "fast_size_vs_zstd19": sum(map(len, fast_payloads)) / zstd19,
                            "v6_encode_vs_zstd3": old_encode / zstd3_time,
                            "v6_decode_vs_zstd3": old_decode / zstd3_time,
                            "v6_size_vs_fast": sum(map(len, old_payloads)) / sum(map(len, fast_payloads))})
                speed.append(row)
                print(row, flush=True)
                uncalibrated = featcodec.encode(x, "lightweight", levels=n)
                un_decoded = featcodec.decode(uncalibrated)
                clips = [s["levels"][0] for s in featcodec.info(uncalibrated)["samples"]], \
                    [s["levels"][-1] for s in featcodec.info(uncalibrated)["samples"]]
                # uniform + zstd-19 over the same clip range (the mean of the per-sample clips)
                uniform = featcodec.encode(x, "uniform", levels=n, clip=[float(np.mean(clips[0])),
                                                                        float(np.mean(clips[1]))], zstd=19)
                generality.append({"layer": layer, "levels": n,
                                   "bits_per_element": featcodec.info(uncalibrated)["bits_per_element"],
                                   "agreement": task.agreement(x, un_decoded, reference),
                                   "uniform_bits_per_element": featcodec.info(uniform)["bits_per_element"],
                                   "uniform_agreement": task.agreement(x, featcodec.decode(uniform), reference)})
                print(generality[-1], flush=True)
            task_rows.append({"layer": layer,
                              "bpe_at_0.95": rate_at([r for r in speed if r["layer"] == layer]),
                              "fast_bpe_at_0.95": rate_at([{"bits_per_element": r["fast_bits_per_element"],
                                                            "agreement": r["agreement"]}
                                                           for r in speed if r["layer"] == layer]),
                              "uncalibrated_bpe_at_0.95": rate_at([r for r in generality if r["layer"] == layer]),
                              "uniform_bpe_at_0.95": rate_at([{"bits_per_element": r["uniform_bits_per_element"],
                                                               "agreement": r["uniform_agreement"]}
                                                              for r in generality if r["layer"] == layer])})
    machine = environment(threads=1)
    fmt = lambda v, f=".3f": "not reached" if v is None else format(v, f)  # noqa: E731
    lines = ["## Speed and size (calibrated, held-out photos, one thread, float32 in, quantization included)", "",
             "Coder version 5 (`fast=False`): three context models mixed per decision.", "",
             "| layer | levels | partners | bits/elt | agreement | enc MB/s | dec MB/s | zstd -3 MB/s | enc / zstd -3 "
             "| dec / zstd -3 | size / zstd -19 |", "|" + "---|" * 11]
    for r in speed:
        lines.append(f"| {r['layer']} | {r['levels']} | {'yes' if r['partners'] else 'no'} | "
                     f"{r['bits_per_element']:.4f} | {r['agreement']:.3f} | {r['encode_mb_s']:.0f} | "
                     f"{r['decode_mb_s']:.0f} | {r['zstd3_mb_s']:.0f} | {r['encode_vs_zstd3']:.1f}x | "
                     f"{r['decode_vs_zstd3']:.1f}x | {r['size_vs_zstd19']:.3f} |")
    lines += ["", "## The fast coder (`fast=True`, coder version 7), same quantizers, same runs", "",
              "Same quantizer, so the same decoded values and agreement as the rows above. Without `fast`, "
              "calibration picks version 7 where it costs at most 1 % more bits on calibration samples. "
              "Version 6 (the fast coder before version 7): its time and size, same runs.", "",
              "| layer | levels | bits/elt | vs version 5 | enc MB/s | dec MB/s | enc / zstd -3 | dec / zstd -3 "
              "| size / zstd -19 | calibration picks | v6 enc / zstd -3 | v6 dec / zstd -3 | v6 size / v7 |",
              "|" + "---|" * 13]
    for r in speed:
        lines.append(f"| {r['layer']} | {r['levels']} | {r['fast_bits_per_element']:.4f} | "
                     f"{r['fast_bits_per_element'] / r['bits_per_element'] - 1:+.1%} | {r['fast_encode_mb_s']:.0f} | "
                     f"{r['fast_decode_mb_s']:.0f} | {r['fast_encode_vs_zstd3']:.1f}x | "
                     f"{r['fast_decode_vs_zstd3']:.1f}x | {r['fast_size_vs_zstd19']:.3f} | "
                     f"version {r['calibration_picks']} | {r['v6_encode_vs_zstd3']:.1f}x | "
                     f"{r['v6_decode_vs_zstd3']:.1f}x | {r['v6_size_vs_fast']:.3f} |")
    lines += ["", "## Bits per element at agreement 0.95", "",
              "| layer | calibrated | calibrated, fast | uncalibrated (per sample) "
              "| uniform + zstd-19, same clip range |",
              "|---|---|---|---|---|"]
    for r in task_rows:
        lines.append(f"| {r['layer']} | {fmt(r['bpe_at_0.95'])} | {fmt(r['fast_bpe_at_0.95'])} | "
                     f"{fmt(r['uncalibrated_bpe_at_0.95'])} | {fmt(r['uniform_bpe_at_0.95'])} |")
    lines += ["", "## Uncalibrated, per level count", "",
              "| layer | levels | bits/elt | agreement | uniform+zstd-19 bits/elt | uniform agreement |",
              "|---|---|---|---|---|---|"]
    for r in generality:
        lines.append(f"| {r['layer']} | {r['levels']} | {r['bits_per_element']:.4f} | {r['agreement']:.3f} | "
                     f"{r['uniform_bits_per_element']:.4f} | {r['uniform_agreement']:.3f} |")
    lines.append(f"\nTask figures on {len(x)} photos. {time.strftime('%Y-%m-%d')}, one core of {machine['cpu']} "
                 f"({machine['cores']} cores), "
                 f"numpy {machine['numpy']}, zstandard {machine['zstandard']}. Throughput depends on the machine: "
                 "compare the ratios to zstd, measured in the same run on the same bytes.")
    Path(output).write_text("\n".join(lines) + "\n")
    Path(output).with_suffix(".json").write_text(json.dumps({"environment": machine, "speed": speed,
                                                             "task": task_rows, "uncalibrated": generality}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:5])
