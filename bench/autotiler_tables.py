"""One table per layer from `featcodec bench` JSONs: the auto-tiler at each ratio against tiling
and FPC at the paper's rate bases (15-240 Kbpi) and lossless.

    python bench/autotiler_tables.py bench/results/reference.json [RERUN.json ...] > bench/results/autotiler.md

A later JSON's layers replace an earlier one's (a rerun of some layers after their models changed).

Columns: Kbpi reached, bits per element, PSNR, agreement, codec latency (encode + decode per
sample, ms) and, for the auto-tiler, its latency against tiling's at the same rate point.
"""

import json
import sys

POINTS = [f"kbpi={k}" for k in (15, 30, 60, 120, 240)] + ["lossless"]


def main(paths):
    layers = {}  # tensor -> {(method, point): result}
    for path in paths:
        rerun = {}
        for r in json.load(open(path))["results"]:
            rerun.setdefault(r["tensor"], {})[r["method"], r["point"]] = r
        layers.update(rerun)
    for tensor, rows in layers.items():
        print(f"\n### {tensor}\n")
        print("| rate | codec | Kbpi | bits/elt | PSNR | agreement | latency ms | vs tiling |")
        print("|---|---|---|---|---|---|---|---|")
        for point in POINTS:
            tiling = rows.get(("tiling", point))
            for method, label in (*(("autotiler", f"cr{cr},{point}") for cr in (4, 12, 16, 48, 64)),
                                  ("tiling", point), ("fpc", point)):
                r = rows.get((method, label))
                if r is None:
                    continue
                latency = r["encode_ms"] + r["decode_ms"]
                versus = ""
                if method == "autotiler" and tiling:
                    versus = f"{100 * (latency / (tiling['encode_ms'] + tiling['decode_ms']) - 1):+.0f} %"
                name = f"autotiler CR{label.split(',')[0][2:]}" if method == "autotiler" else method
                agreement = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
                psnr = "inf" if r["psnr"] is None or r["psnr"] == float("inf") else f"{r['psnr']:.2f}"
                print(f"| {point} | {name} | {r['kbpi']:.1f} | {r['bits_per_element']:.4f} | {psnr} | {agreement} | "
                      f"{latency:.0f} | {versus} |")


if __name__ == "__main__":
    main(sys.argv[1:])
