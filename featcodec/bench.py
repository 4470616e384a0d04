"""``featcodec bench``: rate / distortion / task-accuracy / latency sweeps of every codec.

For each input tensor and each codec, every rate point of the chosen set is coded and decoded;
each point reports bits per element, Kbpi, compression ratio, MSE, PSNR, SNR, SSIM, task
agreement (when the network is known) and encode / decode latency with the per-stage
breakdown. Timing: one warm-up run is excluded, then the median of ``repeat`` runs.

The anchor is remote inference (`featcodec.remote`): the dump's own images, resized as the
network sees them, coded with x265 intra and JPEG, and the whole network run on them. Summaries:
per codec, BD-rate in Kbpi against remote inference with x265 over the agreement both reach
(negative: fewer bits than sending the image), the Kbpi needed for agreement 0.80 / 0.90 / 0.95
beside the image's, the paper's effective CR range, and BD-rate against tiling. ``checks`` turn
figures (a point's, or a summary's) into pass/fail gates for CI.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, metrics
from .api import decode, encode, info
from .errors import InvalidInputError, MissingModelError
from .io import Tensor, read_tensors, to_nchw
from .registry import codec_class, codec_ids, get_codec

RATE_SETS = ("paper", "quick")  # each codec's points per set: `Codec.rate_points`


@dataclass
class PointResult:
    tensor: str
    layer: str | None
    shape: list[int]
    method: str
    point: str
    params: dict[str, Any]
    bits_per_element: float
    kbpi: float
    compression_ratio: float
    mse: float
    psnr: float
    snr: float
    ssim: float
    agreement: float | None
    encode_ms: float
    decode_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)
    # x265 encodes per stream (a sample, or a group with gop): the rate search's passes; None: no HEVC
    encode_passes: float | None = None


def points_for(method: str, rates: str, model: str | None = None) -> list[tuple[str, dict]]:
    """The rate points codec `method` declares for the set `rates` (with `model`, for codecs that take one)."""
    if rates not in RATE_SETS:
        raise InvalidInputError(f"unknown rate set {rates!r}: use {', '.join(RATE_SETS)}")
    cls = codec_class(method)
    points = cls.points(rates)
    if model and any(p.name == "model" for p in cls.params):
        points = [(label, {**params, "model": model}) for label, params in points]
    return points


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime

    from .video import ffmpeg_exe

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ffmpeg = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    except Exception:  # the bench still runs without video codecs
        ffmpeg = None
    return {"featcodec": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "zstandard": _version("zstandard"),
            "ffmpeg": ffmpeg, "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "platform": platform.platform()}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def find_task_model(tensor: Tensor, search: list[Path]) -> str | None:
    """The model a dump recorded (file name + sha256), looked for in `search` folders."""
    from .onnxmodel import sha256_file

    name, digest = tensor.attrs.get("model"), tensor.attrs.get("model_sha256")
    if not name:
        return None
    for folder in search:
        for candidate in [folder / name, *folder.glob(f"**/{name}")]:
            if candidate.is_file() and (not digest or sha256_file(candidate) == digest):
                return str(candidate)
    return None


def head_ms(model_path: str, layer: str | list[str], threads: int | None, repeat: int = 3) -> float:
    """Milliseconds per sample of the network's head (input → `layer`) on this CPU: what the device
    runs before any codec, the yardstick of the codec's own device cost. Median of `repeat` runs on
    the network's input shape (one warm-up excluded)."""
    from .onnxmodel import Manifest, extract, load_model, random_input, session

    manifest = Manifest.for_model(model_path)
    tensors = manifest.resolve_layers(layer)
    model = load_model(model_path)
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    head = session(extract(model, inputs, tensors), threads)
    feeds = random_input(head, size=manifest.preprocessing.get("size"))
    head.run(tensors, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        head.run(tensors, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_point(original: np.ndarray | list[np.ndarray], tensor: Tensor | list[Tensor], method: str, label: str,
              params: dict, *, calibration: np.ndarray | list | None, task, reference, repeat: int,
              threads: int | None = None, name: str | None = None) -> PointResult:
    """One codec at one rate point on a tensor, or on the tensors of a multi-tensor split (lists: each
    coded on its own at the same settings; bits, errors and times add up; the task sees them all)."""
    originals = original if isinstance(original, list) else [original]
    tensors = tensor if isinstance(tensor, list) else [tensor]
    calibrations = calibration if isinstance(calibration, list) else [calibration] * len(originals)
    decoded, headers, configs, encode_ms, decode_ms, stages = [], [], [], 0.0, 0.0, {}
    calibrated = False
    for part, part_tensor, part_calibration in zip(originals, tensors, calibrations):
        codec = get_codec(method, **params)
        calibrated = codec.can_calibrate()  # designed once per layer, before timing
        if calibrated:
            codec = codec.calibrate(part_calibration if part_calibration is not None else part)
        codec.threads = threads
        encode(part[:1], codec)  # warm-up, excluded: caches, lazy imports, first ffmpeg start
        encode_times, decode_times = [], []
        for run in range(repeat):
            if run == repeat - 1:
                codec.reset_timings()
            start = time.perf_counter()
            blob = encode(part, codec, layer=part_tensor.attrs.get("layer"))
            middle = time.perf_counter()
            out = decode(blob, codec=codec)
            encode_times.append(middle - start)
            decode_times.append(time.perf_counter() - middle)
        n = part.shape[0]
        decoded.append(out)
        headers.append(info(blob))
        configs.append(codec.get_config())
        encode_ms += 1000 * statistics.median(encode_times) / n
        decode_ms += 1000 * statistics.median(decode_times) / n
        for k, v in codec.timings.items():
            stages[k] = stages.get(k, 0.0) + 1000 * v / n
    n = originals[0].shape[0]
    elements = sum(o.size for o in originals)
    bits = sum(h["payload_bytes"] * 8 for h in headers)
    bpe = bits / elements
    flat_original = np.concatenate([o.ravel() for o in originals])
    flat_decoded = np.concatenate([d.ravel() for d in decoded])
    single = len(originals) == 1
    agreement = task.agreement(originals, decoded, reference) if task is not None else None
    layer = tensors[0].attrs.get("layer") if single else ",".join(str(t.attrs.get("layer")) for t in tensors)
    return PointResult(
        tensor=name or tensors[0].name, layer=layer,
        shape=list(originals[0].shape) if single else [list(o.shape) for o in originals], method=method,
        point=label, params=params if calibrated else (configs[0] if single else configs),
        bits_per_element=bpe, kbpi=bits / 1000 / n, compression_ratio=32 / bpe if bpe else float("inf"),
        mse=metrics.mse(flat_original, flat_decoded), psnr=metrics.psnr(flat_original, flat_decoded),
        snr=metrics.snr(flat_original, flat_decoded),
        ssim=float(np.mean([metrics.ssim(o, d) for o, d in zip(originals, decoded)])), agreement=agreement,
        encode_ms=encode_ms, decode_ms=decode_ms, stages_ms=dict(sorted(stages.items())),
        encode_passes=_passes([s for h in headers for s in h["samples"]]),
    )


def _units(tensors: list[tuple[str, Tensor]]) -> list[tuple[str, str, list[Tensor]]]:
    """(spec, name, tensors) to bench: a tensor alone, or the tensors of one multi-tensor split point
    (`dump` marks them with the split's name), together."""
    units: list[tuple[str, str, list[Tensor]]] = []
    for spec, tensor in tensors:
        split = tensor.attrs.get("split")
        if split and units and units[-1][0] == spec and units[-1][1] == tensor.name.rsplit("/", 1)[0]:
            units[-1][2].append(tensor)
        elif split:
            units.append((spec, tensor.name.rsplit("/", 1)[0], [tensor]))
        else:
            units.append((spec, tensor.name, [tensor]))
    return units


def _passes(infos: list[dict]) -> float | None:
    """Mean encoder runs per coded stream: samples that record ``encodes`` (a group records it on its first)."""
    runs = [info["encodes"] for info in infos if isinstance(info.get("encodes"), int) and info["encodes"] > 0]
    return sum(runs) / len(runs) if runs else None


AGREEMENT_LEVELS = (0.8, 0.9, 0.95)


def summarise(results: list[PointResult], agreement_level: float = 0.95,
              remote: list[dict] | None = None, heads: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per tensor and codec: BD-rates against remote inference (x265, `remote` rows of the tensor's
    dump) and against tiling, the Kbpi at each of AGREEMENT_LEVELS and how that compares with the
    image's (``image_ratio_at_0.8``: codec Kbpi / image Kbpi; below 1, splitting pays), and the
    codec's median encode time over the head network's (`heads`: ms per tensor), the device's cost."""
    rows = []
    for tensor in dict.fromkeys(r.tensor for r in results):
        of_tensor = [r for r in results if r.tensor == tensor]
        tiling = [r for r in of_tensor if r.method == "tiling" and r.point != "lossless"]
        image = [p for p in (remote or []) if p["codec"] == "x265" and tensor in p["tensors"]]
        for method in dict.fromkeys(r.method for r in of_tensor):
            points = [r for r in of_tensor if r.method == method]
            has_task = all(r.agreement is not None for r in points)
            row = {"tensor": tensor, "method": method}
            if heads and heads.get(tensor):
                row["head_ms"] = heads[tensor]
                row["encode_over_head"] = statistics.median(r.encode_ms for r in points) / heads[tensor]
            if has_task:
                row["effective_cr"] = metrics.effective_cr_range([r.compression_ratio for r in points],
                                                                 [r.agreement for r in points])
                row[f"bpe_at_agreement_{agreement_level}"] = metrics.rate_at(
                    [r.bits_per_element for r in points], [r.agreement for r in points], agreement_level)
                kbpi, agreement = [r.kbpi for r in points], [r.agreement for r in points]
                for level in AGREEMENT_LEVELS:
                    row[f"kbpi_at_{level}"] = metrics.rate_at(kbpi, agreement, level)
                if image:
                    image_kbpi, image_agreement = [p["kbpi"] for p in image], [p["agreement"] for p in image]
                    row["bd_rate_vs_remote"] = metrics.bd_rate(image_kbpi, image_agreement, kbpi, agreement)
                    row["bd_range_vs_remote"] = metrics.bd_range(image_kbpi, image_agreement, kbpi, agreement)
                    for level in AGREEMENT_LEVELS:
                        ours, theirs = row[f"kbpi_at_{level}"], metrics.rate_at(image_kbpi, image_agreement, level)
                        row[f"image_kbpi_at_{level}"] = theirs
                        row[f"image_ratio_at_{level}"] = ours / theirs if ours is not None and theirs else None
            if tiling and method != "tiling":
                row["bd_rate_vs_tiling_psnr"] = metrics.bd_rate(
                    [r.bits_per_element for r in tiling], [r.psnr for r in tiling],
                    [r.bits_per_element for r in points], [r.psnr for r in points])
                if has_task:
                    row["bd_rate_vs_tiling_agreement"] = metrics.bd_rate(
                        [r.bits_per_element for r in tiling], [r.agreement for r in tiling],
                        [r.bits_per_element for r in points], [r.agreement for r in points])
            rows.append(row)
    return rows


def beats_image(summary: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per tensor: whether any codec needs fewer bits than sending the image."""
    lines = []
    for tensor in dict.fromkeys(r["tensor"] for r in summary):
        rows = [r for r in summary if r["tensor"] == tensor and r.get("bd_rate_vs_remote") is not None]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["bd_rate_vs_remote"])
        verdict = "fewer" if best["bd_rate_vs_remote"] < 0 else "more"
        at = ", ".join(f"{level:g}: {_ratio(best.get(f'image_ratio_at_{level}'))}" for level in AGREEMENT_LEVELS)
        low, high = best["bd_range_vs_remote"]
        lines.append(f"{tensor}: best codec {best['method']} needs {verdict} bits than sending the image (x265) "
                     f"over agreement {low:.2f}-{high:.2f}: BD-rate {best['bd_rate_vs_remote']:+.1f} %; "
                     f"Kbpi against the image's at agreement {at}")
    return lines


def _ratio(value) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


_CHECK = re.compile(r"^\s*([\w-]+)(?:@([^.\s]+(?:\.\d+)?))?\.(\w+(?:\.\d+)?)\s*(<=|>=|==|<|>)\s*([-+\d.eE]+)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def evaluate_checks(checks: list[str], results: list[PointResult],
                    summary: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``METHOD[@POINT].METRIC OP VALUE``, e.g. ``lightweight.bits_per_element<=0.8`` or
    ``tiling@kbpi=60.agreement>=0.5``; POINT defaults to ``default``; every tensor must pass.
    ``bpe`` is accepted for bits_per_element. A METRIC of the summary (no POINT) gates on the
    summary's row of every tensor, e.g. ``learned.bd_rate_vs_remote<=0`` (fewer bits than sending
    the image) or ``learned.image_ratio_at_0.9<=1``."""
    outcome = []
    fields = set(PointResult.__dataclass_fields__)
    summary = summary or []
    summary_fields = {k for row in summary for k in row}
    for check in checks:
        match = _CHECK.match(check)
        if not match:
            raise InvalidInputError(f"cannot parse check {check!r}: expected METHOD[@POINT].METRIC OP VALUE")
        method, point, metric, op, value = match.groups()
        metric = {"bpe": "bits_per_element", "cr": "compression_ratio"}.get(metric, metric)
        if point is None and metric not in fields and metric in summary_fields:
            values = [row.get(metric) for row in summary if row["method"] == method]
            if not values:
                raise InvalidInputError(f"check {check!r}: no summary of {method}")
        else:
            if metric not in fields:
                raise InvalidInputError(f"check {check!r}: unknown metric {metric!r}")
            point = point or "default"
            selected = [r for r in results if r.method == method and r.point == point]
            if not selected:
                raise InvalidInputError(f"check {check!r}: no result for {method}@{point}")
            values = [getattr(r, metric) for r in selected]
        passed = all(v is not None and _OPS[op](v, float(value)) for v in values)
        outcome.append({"check": check, "passed": passed, "values": values})
    return outcome


def run_bench(inputs: list[str], methods: list[str], *, rates: str = "paper", task_model: str | None = None,
              calibrate_on: str | None = None, repeat: int = 1, threads: int = 1, remote: bool = True,
              image_dirs: list[str] = (), codec_model: str | None = None, metric: str | None = None,
              progress=None) -> dict[str, Any]:
    """Run the sweep; returns the JSON-ready report (environment, settings, results, remote inference,
    summary). `remote`: also code each dump's images (found through `image_dirs` where the dump's
    recorded paths are gone) and run the whole network: the anchor of the summary. `codec_model`: the
    trained model of the codecs that take one (auto-tiler, learned). `metric`: ``FILE.py:FUNCTION``,
    the network's own task metric instead of the task's (`featcodec.task.load_metric`)."""
    from .io import split_hdf5_spec
    from .task import TaskModel, load_metric

    task_metric = load_metric(metric) if metric else None

    if methods == ["all"]:
        methods = codec_ids()
    for method in methods:
        codec_class(method)  # an unknown id fails here, before any work
    tensors = [(spec, t) for spec in inputs for t in read_tensors(spec)]
    calibration_file = None
    if calibrate_on:
        import h5py

        calibration_file = h5py.File(calibrate_on, "r")
    results: list[PointResult] = []
    skipped: list[dict[str, str]] = []
    anchors: dict[tuple[str, str], dict] = {}  # (dump, network) → remote-inference rows and their tensors
    heads: dict[str, float] = {}  # tensor → the head network's ms per sample
    units = _units(tensors)
    jobs = [(u, m, p) for u in units for m in methods for p in points_for(m, rates, codec_model)]
    done = 0
    try:
        for spec, name, parts in units:
            originals = []
            for tensor in parts:
                original = np.ascontiguousarray(to_nchw(tensor.array, label=tensor.name), np.float32)
                originals.append(original[None] if original.ndim == 3 else original)
            if len({o.shape[0] for o in originals}) != 1:
                raise InvalidInputError(f"{name}: its tensors hold different numbers of samples")
            layers = [t.attrs.get("layer") for t in parts]
            model = task_model or find_task_model(parts[0], [Path(p) for p in inputs if os.path.isdir(p)]
                                                  + [Path(split_hdf5_spec(spec)[0]).parent, Path("models")])
            task = None
            if model and all(layers):
                try:
                    task = TaskModel(model, layers, threads=threads, metric=task_metric)
                except InvalidInputError as err:  # e.g. one level of an FPN: the tail needs them all
                    skipped.append({"tensor": name, "method": "task metric", "point": "all", "reason": str(err)})
            reference = task.run(originals) if task else None
            if task is not None:
                heads[name] = head_ms(model, layers, threads or None)
            dump_path = split_hdf5_spec(spec)[0]
            if remote and task is not None and dump_path.lower().endswith((".h5", ".hdf5")):
                key = (dump_path, model)
                if key not in anchors:
                    anchors[key] = _anchor(dump_path, model, image_dirs, threads, skipped, name, task_metric)
                anchors[key]["tensors"].append(name)
            calibrations = [calibration_file[t.name][()] if calibration_file is not None and t.name in calibration_file
                            else None for t in parts]
            for method in methods:
                for label, params in points_for(method, rates, codec_model):
                    try:
                        results.append(run_point(originals, parts, method, label, params, calibration=calibrations,
                                                 task=task, reference=reference, repeat=repeat,
                                                 threads=threads or None, name=name))
                    except (InvalidInputError, MissingModelError) as err:  # e.g. no model serves this layer
                        skipped.append({"tensor": name, "method": method, "point": label, "reason": str(err)})
                    done += 1
                    if progress:
                        progress(done, len(jobs))
    finally:
        if calibration_file is not None:
            calibration_file.close()
    remote_rows = [{**row, "tensors": anchor["tensors"]} for anchor in anchors.values() for row in anchor["rows"]]
    return {
        "environment": environment(threads),
        "settings": {"inputs": inputs, "methods": methods, "rates": rates, "repeat": repeat,
                     "task_model": task_model, "calibrate_on": calibrate_on, "remote": remote,
                     "codec_model": codec_model, "metric": task_metric.label if task_metric else None,
                     "timing": "median of repeat runs after one warm-up, per sample, ms; remote inference: "
                               "mean per image, one run"},
        "results": [asdict(r) for r in results],
        "remote": remote_rows,
        "heads_ms": heads,
        "skipped": skipped,
        "summary": summarise(results, remote=remote_rows, heads=heads),
    }


def _anchor(dump_path: str, model: str, image_dirs, threads: int, skipped: list, tensor: str, metric=None) -> dict:
    """Remote inference on a dump's images; an image that cannot be found skips the anchor, said why."""
    from .errors import BackendError
    from .remote import as_rows, remote_inference

    try:
        rows = as_rows(remote_inference(dump_path, model, image_dirs=list(image_dirs), threads=threads or None,
                                        metric=metric), dump_path)
    except (InvalidInputError, BackendError) as err:
        skipped.append({"tensor": tensor, "method": "remote inference", "point": "all", "reason": str(err)})
        rows = []
    return {"rows": rows, "tensors": []}


CSV_COLUMNS = ["tensor", "layer", "method", "point", "bits_per_element", "kbpi", "compression_ratio", "mse", "psnr",
               "snr", "ssim", "agreement", "encode_ms", "decode_ms", "encode_passes"]


def write_csv(report: dict[str, Any]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS + ["stages_ms"], extrasaction="ignore")
    writer.writeheader()
    for row in report["results"]:
        writer.writerow({**row, "stages_ms": json.dumps(row["stages_ms"], sort_keys=True)})
    return buffer.getvalue()


def plot(path: str, report: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        from .errors import MissingBackendError

        raise MissingBackendError("--plot needs matplotlib: pip install 'featcodec[plot]'") from err
    results = report["results"]
    tensors = list(dict.fromkeys(r["tensor"] for r in results))
    has_task = any(r["agreement"] is not None for r in results)
    columns = 2 if has_task else 1
    figure, axes = plt.subplots(len(tensors), columns, figsize=(6 * columns, 4 * len(tensors)), squeeze=False)
    for row, tensor in enumerate(tensors):
        for method in dict.fromkeys(r["method"] for r in results):
            points = sorted((r for r in results if r["tensor"] == tensor and r["method"] == method
                             and np.isfinite(r["psnr"])), key=lambda r: r["bits_per_element"])
            if not points:
                continue
            rates = [r["bits_per_element"] for r in points]
            axes[row][0].plot(rates, [r["psnr"] for r in points], "o-", label=method)
            if has_task:
                axes[row][1].plot([r["kbpi"] for r in points], [r["agreement"] for r in points], "o-", label=method)
        axes[row][0].set(xscale="log", xlabel="bits per element", ylabel="PSNR (dB)", title=tensor)
        axes[row][0].legend()
        if has_task:
            for codec in ("x265", "jpeg"):  # remote inference: the image sent instead
                image = sorted((p for p in report.get("remote", []) if p["codec"] == codec and tensor in p["tensors"]),
                               key=lambda p: p["kbpi"])
                if image:
                    axes[row][1].plot([p["kbpi"] for p in image], [p["agreement"] for p in image], "k--" if codec ==
                                      "x265" else "k:", label=f"image ({codec})")
            axes[row][1].set(xscale="log", xlabel="Kbits per sample", ylabel="agreement", title=tensor)
            axes[row][1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
