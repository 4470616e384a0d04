"""An auto-tiler trained for any network, against its linear bound, without HEVC.

    FEATCODEC_MODELS=data/networks/models/autotiler python bench/network_bounds.py \
        NETWORK.onnx TRAIN.h5 TEST.h5 LAYER MODEL > bench/results/NAME_bounds.md

For each exit of MODEL's LAYER, on the maps of TEST.h5 (photos the model never saw): the per-position
channel PCA with as many values as the bottleneck, fitted on TRAIN.h5's maps (the linear bound, see
autotiler_bounds.py), the auto-tiler with its latent in float, and rounded to the 8 bits HEVC codes
losslessly. Columns: normalised MSE, PSNR and the network's task agreement (its manifest's metric).
Maps whose size the stride does not divide are padded with edge values, as the codec pads them.
"""

import json
import sys

import h5py
import numpy as np
from autotiler_bounds import pca_reconstruct

from featcodec import metrics
from featcodec.codecs.autotiler import AutoTiler, available_models
from featcodec.task import TaskModel


def padded(x: np.ndarray, stride: int) -> np.ndarray:
    h, w = x.shape[2:]
    return np.pad(x, ((0, 0), (0, 0), (0, -h % stride), (0, -w % stride)), mode="edge")


def autoencode(codec: AutoTiler, x: np.ndarray, stride: int, quantize: bool) -> np.ndarray:
    _, _, exit_entry = codec._entry(x.shape[1:])
    out = []
    for sample in padded(x, stride):
        latent = codec._run(exit_entry["encoder"], sample[None])
        if quantize:
            latent = np.rint(latent * 255) / 255
        out.append(codec._run(exit_entry["decoder"], latent.astype(np.float32))[0])
    return np.stack(out)


def main(network: str, train_dump: str, test_dump: str, layer: str, model: str) -> None:
    manifest = json.loads((available_models()[model] / "manifest.json").read_text())
    entry = manifest["layers"][layer]
    with h5py.File(test_dump) as f:
        x = f[layer][()].astype(np.float32)
    with h5py.File(train_dump) as f:
        node = f[layer]
        train = np.stack([node[i] for i in range(0, len(node), 4)]).astype(np.float32)
    h, w = x.shape[2:]
    std = train.std((0, 2, 3))[:, None, None] + 1e-6
    task = TaskModel(network, entry["tensor"])
    reference = task.run(x)
    print(f"{model} {layer} ({entry['tensor']}, {tuple(entry['shape'])}); {len(x)} test maps, {task.metric_name}\n")
    print("| CR | values | method | normalised MSE | PSNR | agreement |")
    print("|---|---|---|---|---|---|")
    for ratio in sorted(int(r) for r in entry["exits"]):
        exit_entry = entry["exits"][str(ratio)]
        stride, real = exit_entry["stride"], exit_entry["ratio"]
        codec = AutoTiler(cr=ratio, model=model)
        pca = pca_reconstruct(padded(train, stride), padded(x, stride), stride, real)[:, :, :h, :w]
        for method, y in {"PCA bound": pca, "AE float": autoencode(codec, x, stride, False),
                          "AE 8-bit": autoencode(codec, x, stride, True)}.items():
            y = y[:, :, :h, :w]
            nmse = float(np.mean(((y - x) / std) ** 2))
            print(f"| {ratio} | {round(x[0].size / real)} | {method} | {nmse:.4f} | {metrics.psnr(x, y):.2f} | "
                  f"{task.agreement(x, y, reference):.3f} |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
