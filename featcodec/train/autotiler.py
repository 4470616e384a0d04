"""Train an auto-tiler (Park, Kim & Ko) on HDF5 activation dumps and export it to ONNX.

The network family, fully convolutional so it runs on whole maps after training on crops:

* **core** for the smallest layer (C_core channels): encoder E4 turns (C_core, H, W) into ONE
  single-channel map (1, 2H, 2W) — a pixel shuffle then a 5×5 convolution, the bigger kernel at
  the bottleneck — the CR4 exit; E16 reduces that map to (1, H, W), the CR16 exit, trained with
  E4 frozen. One decoder per exit (D4, D16), trained separately.
* **compatibility autoencoders** for every other layer (C channels → C_core and back), trained
  with the core frozen, so one core serves several split layers; their CR16 decoders are
  trained last, everything else frozen. Real ratios: CR4 = C/4, CR16 = C (for maps of H×W).

Bottleneck maps pass through a sigmoid (they become video frames in [0, 1]) and training adds
uniform noise of a few 8-bit steps to them, so the decoders learn to live with HEVC's error.
Loss: MSE on activations normalised per channel (mean, std from the training dump). Early
stopping on a validation split of whole images; fixed seeds.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import require_torch

torch = require_torch()
nn = torch.nn

WIDTH = 32
NOISE = 2.0 / 255  # bottleneck noise during training, in frame units


def _conv(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class CoreEncoder4(nn.Module):
    def __init__(self, channels: int, width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, width, 3), nn.PReLU(width), _conv(width, width, 3), nn.PReLU(width),
                                  _conv(width, 4, 3), nn.PixelShuffle(2))
        self.tile = _conv(1, 1, 5)

    def forward(self, x):
        return torch.sigmoid(self.tile(self.body(x)))


class CoreDecoder4(nn.Module):
    def __init__(self, channels: int, width: int = WIDTH):
        super().__init__()
        self.untile = nn.Sequential(_conv(1, 8, 5), nn.PReLU(8), nn.PixelUnshuffle(2))
        self.body = nn.Sequential(_conv(32, width, 3), nn.PReLU(width), _conv(width, width, 3), nn.PReLU(width),
                                  _conv(width, channels, 3))

    def forward(self, y):
        return self.body(self.untile(y))


class Encoder16(nn.Module):
    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(_conv(1, 8, 5), nn.PReLU(8), nn.PixelUnshuffle(2), _conv(32, width, 3),
                                  nn.PReLU(width), _conv(width, 1, 5))

    def forward(self, y):
        return torch.sigmoid(self.body(y))


class Decoder16(nn.Module):
    def __init__(self, channels: int, width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(_conv(1, width, 5), nn.PReLU(width), _conv(width, width, 3), nn.PReLU(width),
                                  _conv(width, width, 3), nn.PReLU(width), _conv(width, channels, 3))

    def forward(self, y):
        return self.body(y)


class CompatEncoder(nn.Module):
    def __init__(self, channels: int, core_channels: int, width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 1), nn.PReLU(width), _conv(width, core_channels, 3))

    def forward(self, x):
        return self.body(x)


class CompatDecoder(nn.Module):
    def __init__(self, core_channels: int, channels: int, width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(_conv(core_channels, width, 3), nn.PReLU(width), nn.Conv2d(width, channels, 1))

    def forward(self, x):
        return self.body(x)


def _noisy(y):
    return y + (torch.rand_like(y) - 0.5) * 2 * NOISE


@dataclass
class LayerData:
    """One layer's normalised training and validation maps, (N, C, H, W) float32."""

    name: str
    tensor: str
    train: np.ndarray
    valid: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def load(cls, path: str, dataset: str, valid_fraction: float) -> LayerData:
        import h5py

        from ..errors import InvalidInputError

        if not Path(path).is_file():
            raise InvalidInputError(f"no such file: {path}")
        with h5py.File(path, "r") as f:
            node = f.get(dataset)
            if not isinstance(node, h5py.Dataset) or node.ndim != 4:
                raise InvalidInputError(f"{path} has no (N, C, H, W) dataset {dataset!r} (datasets: "
                                        f"{', '.join(k for k in f if isinstance(f[k], h5py.Dataset))})")
            data = node[()].astype(np.float32)
            tensor = str(node.attrs.get("layer", dataset))
        n_valid = max(1, int(round(len(data) * valid_fraction)))
        train, valid = data[:-n_valid], data[-n_valid:]
        mean = train.mean(axis=(0, 2, 3))
        std = train.std(axis=(0, 2, 3)) + 1e-6
        norm = lambda a: (a - mean[None, :, None, None]) / std[None, :, None, None]  # noqa: E731
        return cls(dataset.strip("/"), tensor, norm(train), norm(valid), mean, std)

    def batch(self, rng: np.random.Generator, size: int, crop: int):
        """Random crops with random horizontal / vertical flips."""
        n, _, h, w = self.train.shape
        crop = min(crop, h, w)
        out = np.empty((size, self.train.shape[1], crop, crop), np.float32)
        for i in range(size):
            k, y, x = rng.integers(n), rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            patch = self.train[k, :, y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            if rng.random() < 0.5:
                patch = patch[:, ::-1, :]
            out[i] = patch
        return torch.from_numpy(out)


@dataclass
class PhaseResult:
    name: str
    steps: int
    seconds: float
    train_loss: float
    valid_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)


def train_phase(name: str, modules: list, forward: Callable, data: LayerData, *, steps: int, lr: float,
                batch: int, crop: int, seed: int, patience: int = 6, every: int = 50, minutes: float | None = None,
                log: Callable[[str], None] = print) -> PhaseResult:
    """Adam on MSE of `forward(x)` against x; keep the best validation state (early stopping)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for m in modules for p in m.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    valid = torch.from_numpy(np.ascontiguousarray(data.valid))
    best, best_state, bad, history = float("inf"), None, 0, []
    start, loss_value, step = time.perf_counter(), float("nan"), 0
    for step in range(1, steps + 1):
        for m in modules:
            m.train()
        x = data.batch(rng, batch, crop)
        loss = torch.mean((forward(x) - x) ** 2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        loss_value = float(loss.detach())
        if step % every == 0 or step == steps:
            for m in modules:
                m.eval()
            with torch.no_grad():
                torch.manual_seed(0)  # the same bottleneck noise for every evaluation
                v = float(np.mean([float(torch.mean((forward(valid[i : i + 2]) - valid[i : i + 2]) ** 2))
                                   for i in range(0, len(valid), 2)]))
            history.append((step, v))
            log(f"  {name}: step {step}/{steps} train {loss_value:.4f} valid {v:.4f}")
            if v < best - 1e-5:
                best, bad = v, 0
                best_state = [{k: t.clone() for k, t in m.state_dict().items()} for m in modules]
            else:
                bad += 1
                if bad >= patience:
                    break
            if minutes is not None and time.perf_counter() - start > 60 * minutes:
                break
    if best_state is not None:
        for m, state in zip(modules, best_state):
            m.load_state_dict(state)
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return PhaseResult(name, step, time.perf_counter() - start, loss_value, best, history)


def export_onnx(module, channels: int, path: Path) -> str:
    """Export a fully convolutional module with dynamic batch / height / width; returns its sha256."""
    module.eval()
    example = torch.zeros(1, channels, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}},
                          opset_version=17)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_autotiler(dump: str, layers: list[str], output: str, *, name: str, steps: int = 600, batch: int = 12,
                    crop: int = 64, lr: float = 1e-3, seed: int = 0, valid_fraction: float = 0.15,
                    minutes_per_phase: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Train the core on the smallest layer of `layers`, compatibility autoencoders for the others,
    export everything to ONNX in `output` and write its manifest.json. Returns the manifest."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = {d.name: d for d in (LayerData.load(dump, layer, valid_fraction) for layer in layers)}
    core_name = min(data, key=lambda k: data[k].train[0].size)
    core = data[core_name]
    channels = core.train.shape[1]
    torch.manual_seed(seed)
    e4, d4, e16, d16 = CoreEncoder4(channels), CoreDecoder4(channels), Encoder16(), Decoder16(channels)
    common = dict(steps=steps, batch=batch, crop=crop, minutes=minutes_per_phase, log=log)
    phases = [train_phase("core CR4", [e4, d4], lambda x: d4(_noisy(e4(x))), core, lr=lr, seed=seed, **common)]
    phases.append(train_phase("core CR16", [e16, d16], lambda x: d16(_noisy(e16(e4(x)))), core, lr=lr,
                              seed=seed + 1, **common))
    compat = {}
    for offset, (layer_name, layer) in enumerate(sorted(data.items())):
        if layer_name == core_name:
            continue
        c = layer.train.shape[1]
        enc, dec4, dec16 = CompatEncoder(c, channels), CompatDecoder(channels, c), CompatDecoder(channels, c)
        phases.append(train_phase(f"{layer_name} compatibility CR4", [enc, dec4],
                                  lambda x, enc=enc, dec4=dec4: dec4(d4(_noisy(e4(enc(x))))), layer, lr=lr,
                                  seed=seed + 10 + offset, **common))
        phases.append(train_phase(f"{layer_name} compatibility CR16 decoder", [dec16],
                                  lambda x, enc=enc, dec16=dec16: dec16(d16(_noisy(e16(e4(enc(x)))))), layer,
                                  lr=lr, seed=seed + 20 + offset, **common))
        compat[layer_name] = (enc, dec4, dec16)

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {}

    def export(module, cin, filename):
        files[filename] = export_onnx(module, cin, out / filename)
        return filename

    core_files = {"enc4": export(e4, channels, "core_enc4.onnx"), "dec4": export(d4, 1, "core_dec4.onnx"),
                  "enc16": export(e16, 1, "core_enc16.onnx"), "dec16": export(d16, 1, "core_dec16.onnx")}
    manifest_layers = {}
    for layer_name, layer in sorted(data.items()):
        c, h, w = layer.train.shape[1:]
        entry = {"tensor": layer.tensor, "shape": [int(c), int(h), int(w)],
                 "normalisation": {"mean": [float(v) for v in layer.mean], "std": [float(v) for v in layer.std]}}
        if layer_name == core_name:
            entry["encoder"] = {"cr4": [core_files["enc4"]], "cr16": [core_files["enc4"], core_files["enc16"]]}
            entry["decoder"] = {"cr4": [core_files["dec4"]], "cr16": [core_files["dec16"]]}
        else:
            enc, dec4, dec16 = compat[layer_name]
            prefix = layer_name.lower()
            ce = export(enc, c, f"{prefix}_compat_enc.onnx")
            cd4 = export(dec4, channels, f"{prefix}_compat_dec4.onnx")
            cd16 = export(dec16, channels, f"{prefix}_compat_dec16.onnx")
            entry["encoder"] = {"cr4": [ce, core_files["enc4"]], "cr16": [ce, core_files["enc4"], core_files["enc16"]]}
            entry["decoder"] = {"cr4": [core_files["dec4"], cd4], "cr16": [core_files["dec16"], cd16]}
        entry["compression_ratio"] = {"cr4": c * h * w / (4 * h * w), "cr16": c * h * w / (h * w)}
        manifest_layers[layer_name] = entry
    manifest = {
        "name": name, "kind": "autotiler", "core_layer": core_name, "core_channels": int(channels),
        "bottleneck": {"cr4": "(1, 2H, 2W)", "cr16": "(1, H, W)", "range": [0.0, 1.0]},
        "layers": manifest_layers,
        "files": {k: {"sha256": v, "bytes": (out / k).stat().st_size} for k, v in sorted(files.items())},
        "training": {"dump": Path(dump).name, "layers": layers, "steps": steps, "batch": batch, "crop": crop,
                     "lr": lr, "seed": seed, "valid_fraction": valid_fraction, "noise": NOISE,
                     "torch": torch.__version__,
                     "phases": [{"name": p.name, "steps": p.steps, "seconds": round(p.seconds, 1),
                                 "final_train_loss": p.train_loss, "best_valid_loss": p.valid_loss} for p in phases]},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
