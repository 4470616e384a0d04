"""The auto-tiler against its linear bound, without HEVC: what the autoencoder alone costs the task.

    python bench/autotiler_bounds.py data/reference_heldout.h5 data/autotiler_train.h5 [data/video_*.h5] \
        > bench/results/autotiler_bounds.md

For every layer and ratio of the shipped model, on the held-out photos (and every 8th frame of
the video dumps given, for the layers they hold: frames no model was trained on):

* **PCA bound**: per-position channel PCA with the same number of values as the bottleneck
  (on s×s space-to-depth blocks, s the exit's stride, C·s²/CR components), fitted on maps of
  the training dump (every 8th sample), coefficients kept in float: the linear bound;
* **AE float**: auto-tiler encoder → decoder, latent maps in float (no quantization);
* **AE 8-bit**: latent maps rounded to the 8-bit frame values HEVC would code losslessly.

Columns: normalised MSE (per-channel std of the training maps), PSNR (peak = the tensor's
max), agreement mAP@0.5 with the uncompressed detector. Then the model's storage.
"""

import json
import sys
from pathlib import Path

import h5py
import numpy as np

from featcodec import metrics
from featcodec.codecs.autotiler import AutoTiler, available_models, training_seconds
from featcodec.task import TaskModel

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"


def pca_reconstruct(train: np.ndarray, test: np.ndarray, stride: int, ratio: float) -> np.ndarray:
    mean = train.mean((0, 2, 3), dtype=np.float64).astype(np.float32)[:, None, None]
    std = (train.std((0, 2, 3), dtype=np.float64) + 1e-6).astype(np.float32)[:, None, None]

    def blocks(x):
        n, c, h, w = x.shape
        x = (x - mean) / std
        return x.reshape(n, c, h // stride, stride, w // stride, stride).transpose(0, 2, 4, 1, 3, 5).reshape(
            -1, c * stride * stride)

    b = blocks(train).astype(np.float64)
    centre = b.mean(0)
    _, vectors = np.linalg.eigh(np.cov((b - centre).T))
    k = round(b.shape[1] / ratio)
    basis = vectors[:, ::-1][:, :k]
    t = blocks(test)
    r = ((t - centre) @ basis) @ basis.T + centre
    n, c, h, w = test.shape
    r = r.reshape(n, h // stride, w // stride, c, stride, stride).transpose(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    return (r * std + mean).astype(np.float32)


def autoencode(codec: AutoTiler, x: np.ndarray, quantize: bool) -> np.ndarray:
    _, _, exit_entry = codec._entry(x.shape[1:])
    out = []
    for sample in x:
        latent = codec._run(exit_entry["encoder"], sample[None])
        if quantize:
            latent = np.rint(latent * 255) / 255
        out.append(codec._run(exit_entry["decoder"], latent.astype(np.float32))[0])
    return np.stack(out)


VIDEO_STRIDE = 8


def evaluation_maps(heldout: str, videos: list[str], layer: str) -> tuple[np.ndarray, str]:
    """The held-out photos' maps of `layer`, then every VIDEO_STRIDE-th frame of each video dump that
    holds the layer; and what they are, in words."""
    with h5py.File(heldout) as f:
        parts = [f[layer][()].astype(np.float32)]
    frames = 0
    for path in videos:
        with h5py.File(path) as f:
            if layer in f:
                parts.append(f[layer][::VIDEO_STRIDE].astype(np.float32))
                frames += len(parts[-1])
    what = f"{len(parts[0])} photos" + (f" + {frames} video frames" if frames else "")
    return np.concatenate(parts), what


def main(heldout: str, train_dump: str, *videos: str) -> None:
    folder = available_models()["centernet_mbv3"]
    manifest = json.loads((folder / "manifest.json").read_text())
    print("| layer | CR | values | method | normalised MSE | PSNR | agreement | maps |")
    print("|---|---|---|---|---|---|---|---|")
    for layer, entry in manifest["layers"].items():
        x, what = evaluation_maps(heldout, list(videos), layer)
        with h5py.File(train_dump) as f:
            node = f[layer]
            train = np.stack([node[i] for i in range(0, len(node), 8)]).astype(np.float32)
        std = train.std((0, 2, 3))[:, None, None] + 1e-6
        task = TaskModel(str(NETWORK), entry["tensor"])
        reference = task.run(x)
        for ratio in sorted(int(r) for r in entry["exits"]):
            exit_entry = entry["exits"][str(ratio)]
            codec = AutoTiler(cr=ratio)
            real = exit_entry["ratio"]  # a compatibility exit's ratio is not always a whole number
            candidates = {"PCA bound": pca_reconstruct(train, x, exit_entry["stride"], real),
                          "AE float": autoencode(codec, x, False), "AE 8-bit": autoencode(codec, x, True)}
            for method, y in candidates.items():
                nmse = float(np.mean(((y - x) / std) ** 2))
                agreement = task.agreement(x, y, reference)
                print(f"| {layer} | {ratio} | {round(x[0].size / real)} | {method} | {nmse:.4f} | "
                      f"{metrics.psnr(x, y):.2f} | {agreement:.3f} | {what} |", flush=True)
    files = manifest["files"]
    print("\n| layer | exit | encoder files | encoder kB | decoder kB |")
    print("|---|---|---|---|---|")
    for layer, entry in manifest["layers"].items():
        for ratio, exit_entry in sorted(entry["exits"].items(), key=lambda kv: int(kv[0])):
            enc = sum(files[f]["bytes"] for f in exit_entry["encoder"]) / 1e3
            dec = sum(files[f]["bytes"] for f in exit_entry["decoder"]) / 1e3
            print(f"| {layer} | CR{ratio} | {' + '.join(exit_entry['encoder'])} | {enc:.0f} | {dec:.0f} |")
    total = sum(f["bytes"] for f in files.values()) / 1e6
    print(f"\nAll {len(files)} files: {total:.2f} MB. Training: {training_seconds(manifest) / 60:.0f} min "
          f"(phases, every run) on {manifest['training']['dump']}.")


if __name__ == "__main__":
    main(*sys.argv[1:])
