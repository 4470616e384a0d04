"""Feature sequences: intra against group (--gop 32) coding on video frames, per clip and layer.

    python bench/sequences.py data/reference_train.h5 data/video_*.h5 > bench/results/sequences.md

Each video dump holds the reference detector's S1, S2 and S4 activations of a clip's first 64 frames
(`make data/video_<clip>.h5`); this reads S2 and S4, of which the first 32 frames are coded
(one group of 32). Agreement mAP@0.5 is against the uncompressed detector on the same frames. The
lightweight quantizers are calibrated on the training photos (the first dump), not on the clips.
"Bits at equal quality" interpolates the intra curve (bits linear in quality) at each group
point's quality: the ratio is group bits over intra bits for the same task quality. The quality is
agreement where the clip has detections (score ≥ 0.3 on the uncompressed features); on clips with
none (agreement is 1 whatever the codec does) it is PSNR, and the table says so.
zstd-19 + dictionary codes the same quantized symbols (one byte each) with the previous frame's
symbols as a raw-content dictionary (the first frame alone).
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

import featcodec
from featcodec import metrics
from featcodec.codecs.lightweight import _symbols
from featcodec.io import read_tensors
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
FRAMES, GOP = 32, 32
POINTS = {
    "lightweight": [(f"levels={n}", {"levels": n}) for n in (2, 3, 4, 8)],
    "tiling": [(f"qp={q}", {"qp": q, "preset": "fast"}) for q in (22, 30, 38)],
    "fpc": [(f"qp={q}", {"qp": q, "preset": "fast"}) for q in (22, 34)],
    "autotiler": [(f"cr16,qp={q}", {"cr": 16, "qp": q, "preset": "fast"}) for q in (22, 34)],
}


@dataclass
class Point:
    bits_per_element: float
    agreement: float
    psnr: float
    encode_s: float
    decode_s: float


def run_point(x, method, params, calibration, task, reference) -> Point:
    """Encode and decode the frames once (calibrating first where the codec calibrates)."""
    codec = featcodec.get_codec(method, **params)
    if codec.can_calibrate():
        codec = codec.calibrate(calibration)
    codec.threads = 2
    start = time.perf_counter()
    blob = featcodec.encode(x, codec)
    middle = time.perf_counter()
    decoded = featcodec.decode(blob, codec=codec)
    end = time.perf_counter()
    return Point(featcodec.info(blob)["bits_per_element"], task.agreement(x, decoded, reference),
                 metrics.psnr(x, decoded), middle - start, end - middle)


def zstd_sizes(symbols: np.ndarray) -> tuple[int, int]:
    """zstd-19 bytes of each frame's symbols alone, and with the previous frame as dictionary."""
    compressor = zstandard.ZstdCompressor(level=19)
    intra = sum(len(compressor.compress(s.tobytes())) for s in symbols)
    inter = len(compressor.compress(symbols[0].tobytes()))
    for previous, current in zip(symbols[:-1], symbols[1:]):
        dictionary = zstandard.ZstdCompressionDict(previous.tobytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        inter += len(zstandard.ZstdCompressor(level=19, dict_data=dictionary).compress(current.tobytes()))
    return intra, inter


def at_equal_quality(intra, point, quality: str) -> float | None:
    """Group bits over intra bits at the group point's quality (None outside the intra curve)."""
    value = getattr(point, quality)
    curve = [getattr(r, quality) for r in intra]
    if value < min(curve) or not np.isfinite(value):
        return None
    rate = metrics.rate_at([r.bits_per_element for r in intra], curve, value)
    return point.bits_per_element / rate if rate else None


def main() -> None:
    calibration_dump, *clips = sys.argv[1:]
    print("# Feature sequences: intra against group coding\n")
    print(__doc__.split("\n\n", 2)[2].strip() + "\n")
    summary = []
    for dump in clips:
        for layer in ("S2", "S4"):
            tensor = read_tensors(f"{dump}:/{layer}")[0]
            x = np.ascontiguousarray(tensor.array[:FRAMES], np.float32)
            calibration = np.ascontiguousarray(read_tensors(f"{calibration_dump}:/{layer}")[0].array[:16], np.float32)
            task = TaskModel(str(NETWORK), tensor.attrs["layer"], threads=2)
            reference = task.run(x)
            detections = int((reference[0][..., 4] >= task.manifest.score_threshold).sum())
            quality = "agreement" if detections else "psnr"
            clip = Path(dump).stem.removeprefix("video_")
            print(f"## {clip}, {layer}: {len(x)} frames {tuple(x.shape[1:])}, {detections} detections\n")
            print("| codec | point | intra bits/elt | intra agreement | intra PSNR | gop32 bits/elt | gop32 agreement "
                  f"| gop32 PSNR | gop/intra, same point | gop/intra at equal {quality} | enc MB/s intra → gop | "
                  "dec MB/s intra → gop |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for method, points in POINTS.items():
                results = {}
                for gop in (1, GOP):
                    results[gop] = [run_point(x, method, {**params, "gop": gop}, calibration, task, reference)
                                    for _, params in points]
                for (label, _), intra, group in zip(points, results[1], results[GOP]):
                    matched = at_equal_quality(results[1], group, quality)
                    speed = [x.nbytes / r.encode_s / 1e6 for r in (intra, group)]
                    print(f"| {method} | {label} | {intra.bits_per_element:.4f} | {intra.agreement:.3f} | "
                          f"{intra.psnr:.2f} | {group.bits_per_element:.4f} | {group.agreement:.3f} | "
                          f"{group.psnr:.2f} | "
                          f"{group.bits_per_element / intra.bits_per_element:.3f} | "
                          f"{'—' if matched is None else f'{matched:.3f}'} | {speed[0]:.0f} → {speed[1]:.0f} | "
                          f"{x.nbytes / intra.decode_s / 1e6:.0f} → {x.nbytes / group.decode_s / 1e6:.0f} |",
                          flush=True)
                    summary.append((clip, layer, quality, method, label, matched,
                                    group.bits_per_element / intra.bits_per_element, speed[1] / speed[0]))
            print()
            # zstd-19 with the previous frame as dictionary, on the lightweight symbols
            print("| lightweight point | zstd-19 intra bits/elt | zstd-19 + previous-frame dictionary | "
                  "lightweight gop32 | lightweight / zstd+dict |")
            print("|---|---|---|---|---|")
            for label, params in POINTS["lightweight"]:
                codec = featcodec.get_codec("lightweight", **params).calibrate(calibration)
                symbols = np.stack([_symbols(s, codec.table) for s in x])
                intra, inter = zstd_sizes(symbols)
                group = featcodec.info(featcodec.encode(x, featcodec.get_codec(
                    "lightweight", table=codec.table, gop=GOP)))["payload_bytes"]
                print(f"| {label} | {8 * intra / x.size:.4f} | {8 * inter / x.size:.4f} | {8 * group / x.size:.4f} | "
                      f"{group / inter:.3f} |", flush=True)
            print()
            # random access: one sample at the end of a group against the whole group
            print("| codec (gop 32) | decode sample 31 ms | decode samples 0-31 ms | decoded for sample 31 |")
            print("|---|---|---|---|")
            for method, params in (("lightweight", {"levels": 4}), ("tiling", {"qp": 27, "preset": "fast"})):
                blob = featcodec.encode(x, method, gop=GOP, **params)
                times = {}
                for what, selection in (("one", slice(31, 32)), ("all", slice(0, 32))):
                    decoded: list[int] = []
                    start = time.perf_counter()
                    featcodec.decode(blob, samples=selection, decoded=decoded)
                    times[what] = (1000 * (time.perf_counter() - start), len(decoded))
                print(f"| {method} | {times['one'][0]:.0f} | {times['all'][0]:.0f} | {times['one'][1]} |", flush=True)
            print()
    print("## Summary: gop32 bits over intra bits at equal quality (median over the points with a match, "
          "their count in brackets)\n")
    print("| clip | layer | matched on | lightweight | tiling | fpc | autotiler | lightweight encode speed gop/intra |")
    print("|---|---|---|---|---|---|---|---|")
    for clip in dict.fromkeys(s[0] for s in summary):
        for layer in ("S2", "S4"):
            rows = [s for s in summary if s[0] == clip and s[1] == layer]
            cells = []
            for method in POINTS:
                matched = [s[5] for s in rows if s[3] == method and s[5] is not None]
                cells.append(f"{np.median(matched):.3f} ({len(matched)})" if matched else "—")
            speed = np.median([s[7] for s in rows if s[3] == "lightweight"])
            print(f"| {clip} | {layer} | {rows[0][2]} | {' | '.join(cells)} | {speed:.2f} |")


if __name__ == "__main__":
    main()
