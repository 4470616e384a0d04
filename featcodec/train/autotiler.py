"""Train auto-tilers (Park, Kim & Ko) on HDF5 activation dumps and export them to ONNX.

For a (C, H, W) layer and a compression ratio N, the bottleneck holds C·H·W/N values, as in
the paper: the encoder reduces the layer to K latent maps of (H/s, W/s) with K·(H/s)(W/s) =
C·H·W/N (`featcodec.codecs.autotiler.exit_layout`: CR4 is K = C at s = 2, CR16 K = C at
s = 4), each in [0, 1] (a sigmoid), and the codec tiles those K maps into ONE frame for HEVC.

Per layer, two exits with the paper's cascade:

* **CR4**: encoder E4 (normalise, 3×3 convs, stride-2 steps, sigmoid) and decoder D4
  (pixel-shuffle steps back to (C, H, W), ReLU at the end when the layer is non-negative, so a
  ReLU zero decodes to exactly 0);
* **CR16**: E16 takes E4's latent (E4 frozen) one stride-2 step further; its own decoder D16.

Losses: MSE on activations normalised per channel, plus (``task_weight`` > 0) a loss taken
through the real tail of the network (`featcodec.train.tail`): relative error of the class
heatmaps (weighted towards where objects are) and of the box maps where a class peaks. The
bottleneck passes through a proxy of HEVC during training: 8-bit rounding noise, uniform
noise of a random amplitude up to ``noise`` and, on some samples, a 3×3 blur mixed in, so the
decoder learns to live with coding error. Early stopping on validation photos (the last ones
of the dump: variants of a photo are stored together, so none of them leaks into training).

Compatibility autoencoders (`train_compatibility`, the paper's section 3.3): a larger layer is
mapped onto the shape of a core layer whose auto-tiler, frozen and shared, codes it; each core exit
gives the larger layer one more exit, for the cost of the small compatibility networks.
`finetune_decoders` trains existing exits' decoders further with the task loss, encoders frozen;
with ``hevc_rates`` on latents really coded by x265 at those Kbpi targets (`CodedLatents`)
instead of the proxy, so a decoder learns the error HEVC makes at the rates it will be used at.

Every phase is checkpointed in ``<output>/.checkpoints``: a killed run restarts where it was.
``extend=True`` adds exits to a model already in ``<output>``: the exits it has are loaded from
its ONNX files (checked against onnxruntime) and kept byte for byte, and only the missing ones
are trained, cascaded on the existing lowest-ratio encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import video
from ..codecs.autotiler import exit_layout, frame_to_latent, latent_to_frame
from ..errors import InvalidInputError
from . import require_torch
from .taskloss import TailLoss, task_loss_for

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

NOISE = 4.0 / 255  # largest uniform bottleneck noise during training, in frame units
GRAD_CLIP = 1.0  # gradient norm bound: keeps a bad batch from throwing the networks off
VALID_MAPS = 8  # whole validation maps a phase's early stopping reads, at least:
# and as many more as hold this many values: 8 of a classifier's 64×8×8 maps are too few to stop on (its
# task stages stopped at their first checks), where 8 of the reference detector's hold 3-17 M
VALID_VALUES = 1_000_000
VALID_BATCH_VALUES = 600_000  # values per forward pass of a validation
CALIBRATION_MAPS = 8  # whole training maps the task loss takes its outputs' variances on


def _conv(cin, cout, k=3, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class Normalise(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.tensor(np.asarray(mean, np.float32)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(np.asarray(std, np.float32)).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _logit(y):
    """The inverse of the bottleneck's sigmoid, kept finite at the ends of the frame's range."""
    y = y.clamp(1 / 510, 1 - 1 / 510)
    return torch.log(y) - torch.log1p(-y)


class Encoder(nn.Module):
    """(N, cin, H, W) → (N, latent, H/2^steps, W/2^steps) in [0, 1].

    Two paths summed before the sigmoid: a linear one (space-to-depth, then a 1×1 convolution
    started at the inputs' principal components, so training starts at the linear bound) and a
    convolutional one that starts at zero and learns what the linear path misses. A cascaded
    encoder (``logit_input``) reads the previous exit's latent maps through the sigmoid's inverse.
    """

    def __init__(self, cin: int, latent: int, steps: int, width: int, norm: Normalise | None = None,
                 logit_input: bool = False):
        super().__init__()
        self.norm = norm
        self.logit_input = logit_input
        self.unshuffle = nn.PixelUnshuffle(2 ** steps)
        self.linear = nn.Conv2d(cin * 4 ** steps, latent, 1)
        layers = [_conv(cin, width), nn.PReLU(width)]
        for _ in range(steps):
            layers += [_conv(width, width, stride=2), nn.PReLU(width), _conv(width, width), nn.PReLU(width)]
        layers += [_conv(width, latent)]
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
        if self.logit_input:
            x = _logit(x)
        return torch.sigmoid(self.linear(self.unshuffle(x)) + self.body(x))


class Decoder(nn.Module):
    """(N, latent, h, w) → (N, C, h·2^steps, w·2^steps) in the layer's own units.

    A linear path (the sigmoid's inverse, a 1×1 convolution fitted by least squares, depth-to-
    space) plus a convolutional one that starts at zero; ReLU at the end for non-negative layers.
    """

    def __init__(self, latent: int, channels: int, steps: int, width: int, norm: Normalise, nonnegative: bool):
        super().__init__()
        self.linear = nn.Conv2d(latent, channels * 4 ** steps, 1)
        self.shuffle = nn.PixelShuffle(2 ** steps)
        layers = [_conv(latent, width), nn.PReLU(width), _conv(width, width), nn.PReLU(width)]
        for _ in range(steps):
            layers += [_conv(width, 4 * width), nn.PixelShuffle(2), nn.PReLU(width), _conv(width, width),
                       nn.PReLU(width)]
        layers += [_conv(width, channels)]
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)
        self.norm = norm
        self.nonnegative = nonnegative

    def forward(self, y):
        x = self.shuffle(self.linear(_logit(y))) + self.body(y)
        x = x * self.norm.std + self.norm.mean
        return F.relu(x) if self.nonnegative else x


def init_linear_paths(encoder: Encoder, decoder: Decoder, inputs, targets) -> None:
    """Start both linear paths at per-position PCA: the encoder's 1×1 convolution projects each
    space-to-depth block on its leading principal components (whitened: unit variance before the
    sigmoid), the decoder's is the least-squares map from those back to the normalised blocks."""
    with torch.no_grad():
        x = encoder.norm(inputs) if encoder.norm is not None else inputs
        if encoder.logit_input:
            x = _logit(x)
        blocks = encoder.unshuffle(x)
        flat = blocks.permute(0, 2, 3, 1).reshape(-1, blocks.shape[1]).double()
        mean = flat.mean(0)
        cov = torch.cov((flat - mean).T)
        evals, evecs = torch.linalg.eigh(cov)
        k = encoder.linear.out_channels
        top = evecs[:, -k:].flip(1) / evals[-k:].flip(0).clamp(min=1e-8).sqrt()
        encoder.linear.weight.copy_(top.T.float()[:, :, None, None])
        encoder.linear.bias.copy_((-mean @ top).float())
        z = _logit(encoder(inputs)).permute(0, 2, 3, 1).reshape(-1, k).double()
        target = decoder.norm(targets)
        target_blocks = nn.functional.pixel_unshuffle(target, decoder.shuffle.upscale_factor)
        t = target_blocks.permute(0, 2, 3, 1).reshape(-1, target_blocks.shape[1]).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
        solution = torch.linalg.lstsq(design, t).solution  # (k + 1, C·4^steps)
        # pixel_unshuffle's channel order is the one PixelShuffle reads back
        decoder.linear.weight.copy_(solution[:k].T.float()[:, :, None, None])
        decoder.linear.bias.copy_(solution[k].float())


def hevc_proxy(y, noise: float = NOISE):
    """What HEVC does to a frame, roughly and differentiably: rounding to 8 bits, noise of a random
    amplitude per sample, and on half the samples some of a 3×3 blur (coarse QPs smooth)."""
    n = y.shape[0]
    amplitude = torch.rand(n, 1, 1, 1) * noise
    blur = (torch.rand(n, 1, 1, 1) < 0.5) * torch.rand(n, 1, 1, 1) * 0.5
    smoothed = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    y = (1 - blur) * y + blur * smoothed
    return y + (torch.rand_like(y) - 0.5) * (2 * amplitude + 1 / 255)


PAD_MULTIPLE = 8  # the largest stride of the exits trained (CR64)


@dataclass
class LayerData:
    """One layer's training and validation maps, (N, C, H, W) float32 in the layer's own units."""

    name: str
    tensor: str
    model: str | None
    train: np.ndarray
    valid: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    nonnegative: bool
    samples: int
    shape: tuple[int, int, int]  # a sample's (C, H, W) as dumped; the maps above are padded to PAD_MULTIPLE
    split: str | None = None  # the multi-tensor split point this tensor is a part of (dump's attributes)
    part: int | None = None

    @classmethod
    def load(cls, path: str, dataset: str, valid_fraction: float, max_samples: int | None = None) -> LayerData:
        import h5py

        if not Path(path).is_file():
            raise InvalidInputError(f"no such file: {path}")
        with h5py.File(path, "r") as f:
            node = f.get(dataset)
            if not isinstance(node, h5py.Dataset) or node.ndim != 4:
                raise InvalidInputError(f"{path} has no (N, C, H, W) dataset {dataset!r} (datasets: "
                                        f"{', '.join(k for k in f if isinstance(f[k], h5py.Dataset))})")
            count = len(node) if max_samples is None else min(len(node), max_samples)
            c, h, w = node.shape[1:]
            # odd sizes are padded as the codec pads them (edge values) so every stride divides them
            ph, pw = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
            data = np.empty((count, c, ph, pw), np.float32)
            for i in range(count):  # one sample at a time: no float64 or second copy of a large dump
                data[i] = np.pad(node[i], ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")
            tensor = str(node.attrs.get("layer", dataset))
            model = node.attrs.get("model")
            split, part = node.attrs.get("split"), node.attrs.get("part")
        n_valid = max(1, int(round(count * valid_fraction)))
        train, valid = data[:-n_valid], data[-n_valid:]
        mean = train.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        std = (train.std(axis=(0, 2, 3), dtype=np.float64) + 1e-6).astype(np.float32)
        return cls(dataset.strip("/"), tensor, str(model) if model is not None else None, train, valid, mean, std,
                   bool(train.min() >= 0), count, (int(c), int(h), int(w)),
                   None if split is None else str(split), None if part is None else int(part))

    @property
    def map_values(self) -> int:
        return int(self.valid[0].size)

    def validation(self, count: int):
        """(inputs, targets) of the first `count` validation maps: the maps themselves."""
        x = torch.from_numpy(np.ascontiguousarray(self.valid[:count]))
        return x, x

    def spread(self, count: int):
        """`count` training maps spread over the dump (what the linear paths start from)."""
        return torch.from_numpy(np.ascontiguousarray(self.train[:: max(1, len(self.train) // count)][:count]))

    def batch(self, rng: np.random.Generator, size: int, crop: int):
        """(inputs, targets) of random crops, the crops themselves both (no flips here: the dump holds
        mirrored photos of its own)."""
        n, _, h, w = self.train.shape
        crop = min(crop, h, w)
        out = np.empty((size, self.train.shape[1], crop, crop), np.float32)
        for i in range(size):
            k, y, x = rng.integers(n), rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            out[i] = self.train[k, :, y : y + crop, x : x + crop]
        x = torch.from_numpy(out)
        return x, x


@dataclass
class CodedLatents:
    """Decoder training pairs: the latent maps of a frozen encoder after HEVC at the rates they will be
    coded at (`code_latents`), and the maps they came from. `batch` and `validation` give (inputs,
    targets) crops, aligned: a latent crop of crop/stride at (y, x)/stride, its target at (y, x)."""

    train: np.ndarray  # (N·copies, K, h, w) decoded latents in [0, 1]
    train_targets: np.ndarray  # (N, C, H, W): the map of train[i] is train_targets[i // copies]
    valid: np.ndarray
    valid_targets: np.ndarray
    stride: int

    def batch(self, rng: np.random.Generator, size: int, crop: int):
        n, k, h, w = self.train.shape
        copies, s = n // len(self.train_targets), self.stride
        cells = max(1, min(crop, self.train_targets.shape[2], self.train_targets.shape[3]) // s)
        inputs = np.empty((size, k, cells, cells), np.float32)
        targets = np.empty((size, self.train_targets.shape[1], cells * s, cells * s), np.float32)
        for i in range(size):
            j, y, x = rng.integers(n), rng.integers(h - cells + 1), rng.integers(w - cells + 1)
            inputs[i] = self.train[j, :, y : y + cells, x : x + cells]
            targets[i] = self.train_targets[j // copies, :, y * s : (y + cells) * s, x * s : (x + cells) * s]
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    @property
    def map_values(self) -> int:
        return int(self.valid_targets[0].size)

    def validation(self, count: int):
        return (torch.from_numpy(np.ascontiguousarray(self.valid[:count])),
                torch.from_numpy(np.ascontiguousarray(self.valid_targets[:count])))


def code_latents(encoders: list, maps: np.ndarray, rates: tuple, copies: int) -> tuple[np.ndarray, int]:
    """Every map through the frozen `encoders`, its latent frame HEVC-coded `copies` times (the
    rates of `rates` in turn: Kbpi targets, None for the 8-bit latent uncoded, which is what
    lossless gives) and decoded as the codec does. Returns (N·copies, K, h, w) float32 latents and
    how many targets the frame could not reach within 10 % (too small to spend them)."""
    out, unreachable = None, 0
    for i, sample in enumerate(maps):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(sample[None]))
            for encoder in encoders:
                x = encoder(x)
        latent = x[0].numpy()
        frame = latent_to_frame(latent)
        padded = video.pad_frames(frame[None])
        if out is None:
            out = np.empty((len(maps) * copies, *latent.shape), np.float32)
        for j in range(copies):
            rate = rates[(i * copies + j) % len(rates)]
            coded = frame
            if rate is not None:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", video.RateWarning)
                    stream, _ = video.encode_frames(padded, 8, kbits=float(rate))
                unreachable += any(issubclass(w.category, video.RateWarning) for w in caught)
                coded = video.decode_frames(stream, 1, *padded.shape[1:], 8)[0, : frame.shape[0], : frame.shape[1]]
            out[i * copies + j] = frame_to_latent(coded, latent.shape)
    return out, unreachable


class SplitData:
    """A multi-tensor split's parts together (`LayerData`, in the tail's input order), for training
    their exits jointly through the tail: a batch is whole maps of the same samples, the inputs as
    padded for the encoders, the targets in their real shapes, as the tail takes them."""

    def __init__(self, parts: list[LayerData]):
        self.parts = parts

    def _maps(self, arrays: list[np.ndarray], index):
        inputs = [torch.from_numpy(np.ascontiguousarray(a[index])) for a in arrays]
        return inputs, [x[..., : p.shape[1], : p.shape[2]] for x, p in zip(inputs, self.parts)]

    def batch(self, rng: np.random.Generator, size: int, crop: int):
        return self._maps([p.train for p in self.parts], rng.integers(len(self.parts[0].train), size=size))

    @property
    def map_values(self) -> int:
        return sum(p.map_values for p in self.parts)

    def validation(self, count: int):
        return self._maps([p.valid for p in self.parts], slice(0, count))


class SplitNorm:
    """The parts' normalised values in one row per sample, so a split's MSE is one mean."""

    def __init__(self, norms: list):
        self.norms = norms

    def __call__(self, xs):
        return torch.cat([norm(x).flatten(1) for norm, x in zip(self.norms, xs)], 1)


def _rows(batch, rows: slice):
    """`rows` of a batch: a tensor, or a list of tensors (a split's parts)."""
    return [x[rows] for x in batch] if isinstance(batch, list) else batch[rows]


@dataclass
class PhaseResult:
    name: str
    steps: int
    seconds: float
    train_loss: float
    valid_loss: float
    valid_nmse: float
    history: list[tuple[int, float]] = field(default_factory=list)


def validation_maps(data) -> int:
    """How many whole validation maps of `data` (`LayerData`, `CodedLatents` or `SplitData`) a
    phase's early stopping reads: VALID_MAPS, or as many as hold VALID_VALUES values."""
    return max(VALID_MAPS, VALID_VALUES // max(1, data.map_values))


def _validate(forward, norm, task, valid) -> tuple[float, float]:
    """(total loss, normalised MSE) on whole validation maps (`valid`: inputs, targets), the same
    noise every time; each map weighs the same, however many a forward pass takes."""
    torch.manual_seed(0)
    totals, nmses, weights = [], [], []
    inputs, targets = valid
    count = len(inputs[0] if isinstance(inputs, list) else inputs)
    values = sum(t[0].numel() for t in (targets if isinstance(targets, list) else [targets]))
    batch = max(2, VALID_BATCH_VALUES // max(1, values))
    with torch.no_grad():
        for i in range(0, count, batch):
            x = _rows(targets, slice(i, i + batch))
            decoded = forward(_rows(inputs, slice(i, i + batch)))
            nmse = float(torch.mean((norm(decoded) - norm(x)) ** 2))
            total = nmse + (float(task[1](decoded, task[1].target(x))) * task[0] if task else 0.0)
            totals.append(total)
            nmses.append(nmse)
            weights.append(min(batch, count - i))
    return float(np.average(totals, weights=weights)), float(np.average(nmses, weights=weights))


def _progress(step: int, steps: int, seconds: float, minutes: float | None) -> float:
    """How far into a phase of `steps` steps or `minutes` `step` steps and `seconds` are, 0 to 1."""
    progress = step / steps if steps else 1.0
    if minutes:
        progress = max(progress, seconds / (60 * minutes))
    return min(progress, 1.0)


def _annealed(peak: float, step: int, steps: int, seconds: float, minutes: float | None) -> float:
    """The learning rate `step` steps and `seconds` into a phase of `steps` steps or `minutes`."""
    progress = _progress(step, steps, seconds, minutes)
    return peak / 20 + (peak - peak / 20) * 0.5 * (1 + math.cos(math.pi * progress))


def train_phase(name: str, modules: list, forward: Callable, data: LayerData, norm: Normalise, *, steps: int,
                lr: float, batch: int, crop: int, seed: int, task: tuple[float, TailLoss] | None = None,
                patience: int = 8, every: int = 100, minutes: float | None = None,
                progress: Callable[[str, int, int, str], None] | None = None) -> PhaseResult:
    """Adam on normalised MSE (+ weighted task loss) of `forward(x)` against x; keeps the best
    validation state, stops at `steps`, after `minutes`, or early: `patience` validations without
    a better one once the phase is half way (the learning rate half annealed). `data` is a
    `LayerData` (inputs are the targets) or `CodedLatents` (decoder inputs and their targets).

    The learning rate follows a cosine from `lr` down to lr / 20 over the phase's progress: the
    larger of the steps' share and, with `minutes`, the time's share, so a phase its time ends has
    annealed too (a schedule over `steps` alone left time-bound phases at 80-95 % of the peak rate)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    peak = lr
    valid = data.validation(validation_maps(data))
    best, best_nmse, best_state, bad, history = float("inf"), float("nan"), None, 0, []
    start, loss_value, step = time.perf_counter(), float("nan"), 0
    for step in range(1, steps + 1):
        for m in modules:
            m.train()
        for group in optimiser.param_groups:
            group["lr"] = _annealed(peak, step - 1, steps, time.perf_counter() - start, minutes)
        inputs, x = data.batch(rng, batch, crop)
        decoded = forward(inputs)
        loss = torch.mean((norm(decoded) - norm(x)) ** 2)
        if task:
            loss = loss + task[0] * task[1](decoded, task[1].target(x))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimiser.step()
        loss_value = float(loss.detach())
        out_of_time = minutes is not None and time.perf_counter() - start > 60 * minutes
        if step % every == 0 or step == steps or out_of_time:
            for m in modules:
                m.eval()
            v, v_nmse = _validate(forward, norm, task, valid)
            history.append((step, round(v, 5)))
            if v < best - 1e-5:
                best, best_nmse, bad = v, v_nmse, 0
                best_state = [{k: t.clone() for k, t in m.state_dict().items()} for m in modules]
            elif v > 3 * best and best_state is not None:
                # Diverged (S4 once did: its final ReLU went dead at the full rate): back to the best
                # state at half the learning rate.
                for m, state in zip(modules, best_state):
                    m.load_state_dict(state)
                peak /= 2
                bad += 1
            else:
                bad += 1
            if progress:
                progress(name, step, steps, f"train {loss_value:.4f} valid {v:.4f} (nmse {v_nmse:.4f})")
            # the validation loss rides on the learning rate's noise until the cosine has come down: a
            # classifier's task stage stopped at 1,300 of 5,000 steps on 0.128; annealed, it reached 0.090
            annealing = _progress(step, steps, time.perf_counter() - start, minutes) >= 0.5
            if (bad >= patience and annealing) or out_of_time:
                break
        elif progress:
            progress(name, step, steps, f"train {loss_value:.4f}")
    if best_state is not None:
        for m, state in zip(modules, best_state):
            m.load_state_dict(state)
    for m in modules:
        m.eval()
    return PhaseResult(name, step, time.perf_counter() - start, loss_value, best, best_nmse, history)


def _staged_phases(name: str, checkpoint_stem: Path, encoder, decoder, trainable: list, forward: Callable,
                   data: LayerData, norm: Normalise, task, config: TrainingConfig, seed: int,
                   log: Callable[[str], None], progress) -> list[PhaseResult]:
    """An encoder / decoder pair's training: MSE first on small crops (cheap), then (with a task) the
    task loss on larger ones at a lower rate. Each stage is checkpointed at ``<checkpoint_stem>_<stage>.pt``
    and resumed from there when that file exists. Trains the modules of `trainable`."""
    results = []
    for stage, stage_task in (("MSE", None), ("task", task)):
        if stage == "task" and (task is None or config.task_steps <= 0):
            continue
        phase_name = f"{name} {stage}"
        checkpoint = checkpoint_stem.with_name(f"{checkpoint_stem.name}_{stage.lower()}.pt")
        if checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False)
            encoder.load_state_dict(saved["encoder"])
            decoder.load_state_dict(saved["decoder"])
            result = PhaseResult(**saved["result"])
            log(f"  {phase_name}: resumed from {checkpoint.name}")
        else:
            result = train_phase(phase_name, trainable, forward, data, norm,
                                 steps=config.steps if stage == "MSE" else config.task_steps,
                                 lr=config.lr if stage == "MSE" else config.lr / 4, batch=config.batch,
                                 crop=config.task_crop if stage_task else config.crop, seed=seed, task=stage_task,
                                 minutes=config.minutes_per_phase, progress=progress)
            torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict(),
                        "result": asdict(result)}, checkpoint)
        results.append(result)
        log(f"  {phase_name}: {result.steps} steps in {result.seconds:.0f} s, validation loss "
            f"{result.valid_loss:.4f} (normalised MSE {result.valid_nmse:.4f})")
    return results


def export_onnx(module, channels: int, path: Path) -> str:
    """Export a fully convolutional module with dynamic batch / height / width; returns its sha256."""
    module.eval()
    example = torch.zeros(1, channels, 32, 32)
    partial = path.with_name(path.name + ".tmp")  # written whole, then renamed: a model file is never half new
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(partial), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=17,
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}})
    os.replace(partial, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_onnx_weights(module, path: Path) -> None:
    """Load into `module` the weights that `export_onnx` wrote to `path` (its inverse), and check
    that both compute the same function on a random input."""
    import onnx
    from onnx import numpy_helper

    from ..onnxmodel import session

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    # torch's exporter names PReLU slopes by node number ("onnx::PRelu_45"), in graph order
    slopes = sorted((k for k in weights if k.startswith("onnx::PRelu_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    slope_keys = [f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.PReLU)]
    # each tensor once, by its first name (a module reachable twice, as a Chain's body, is exported once)
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for key, value in tensors.items():
        source = weights.get(key)
        if source is None and key in slope_keys and len(slopes) == len(slope_keys):
            source = weights[slopes[slope_keys.index(key)]]
        if source is None or source.size != value.numel():
            raise ValueError(f"{path.name} holds no weight of shape {tuple(value.shape)} for {key}")
        with torch.no_grad():
            value.copy_(torch.from_numpy(source.reshape(value.shape).copy()))
    module.eval()
    x = torch.rand(1, module.body[0].in_channels, 32, 32)
    with torch.no_grad():
        expected = module(x).numpy()
    got = session(str(path)).run(None, {"input": x.numpy()})[0]
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(expected).max()))):
        raise ValueError(f"{path.name} does not compute what the module loaded from it computes")


@dataclass
class TrainingConfig:
    ratios: tuple[int, ...] = (4, 16)
    steps: int = 4000
    task_steps: int = 2000
    minutes_per_phase: float | None = None
    # per-layer phase lengths that replace minutes_per_phase (a layer whose exits need longer)
    layer_minutes: dict[str, float] = field(default_factory=dict)
    batch: int = 8
    crop: int = 64
    task_crop: int = 96
    lr: float = 2e-3
    width: int = 64
    task_weight: float = 1.0
    noise: float = NOISE
    seed: int = 0
    valid_fraction: float = 0.1
    max_samples: int | None = None
    # finetune_decoders: Kbpi targets (None: uncoded, as lossless) to code the latents at, instead
    # of the noise proxy; each training map is coded `hevc_copies` times, at the next rates in turn
    hevc_rates: tuple = ()
    hevc_copies: int = 2

    def for_layer(self, layer: str) -> TrainingConfig:
        """This configuration with `layer`'s own phase length, if ``layer_minutes`` gives one."""
        minutes = self.layer_minutes.get(layer.strip("/"), self.minutes_per_phase)
        return replace(self, minutes_per_phase=minutes)


def _phase_modules(data: LayerData, config: TrainingConfig) -> dict:
    """The encoder/decoder pair of every exit; later exits cascade on the first one's encoder."""
    c, h, w = data.shape
    norm = Normalise(data.mean, data.std)
    modules, previous = {}, None
    for ratio in sorted(config.ratios):
        steps, latent = exit_layout(c, ratio, (h, w))
        if previous is None:
            encoder = Encoder(c, latent, steps, config.width, norm)
        else:
            prev_ratio, prev_steps, prev_latent = previous
            encoder = Encoder(prev_latent, latent, steps - prev_steps, config.width, logit_input=True)
        modules[ratio] = {"encoder": encoder, "steps": steps, "latent": latent, "cascade_on": previous and previous[0],
                          "decoder": Decoder(latent, c, steps, config.width, norm, data.nonnegative)}
        previous = previous or (ratio, steps, latent)
    return {"norm": norm, "exits": modules}


def train_autotiler(dump: str, layers: list[str], output: str, *, name: str, config: TrainingConfig | None = None,
                    network: str | None = None, log: Callable[[str], None] = print,
                    progress: Callable[[str, int, int, str], None] | None = None, extend: bool = False) -> dict:
    """Train one auto-tiler per layer of `dump` (every exit in ``config.ratios``), export them to
    ONNX in `output` and write its manifest.json. Returns the manifest.

    `network`: the ONNX network the dump came from, for the task loss (default: the model the
    dump names, looked for beside featcodec's reference models; no task loss if not found).
    `extend`: `output` holds a model; keep its exits, train the missing ones (module docstring).

    The tensors of a multi-tensor split (an FPN's levels) each get an auto-tiler trained on MSE,
    as no one of them alone feeds the tail; then each exit's encoders and decoders of all the parts
    are trained together with the loss through the tail (`_train_split`)."""
    config = config or TrainingConfig()
    existing = _existing_model(Path(output), name) if extend else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(output)
    checkpoints = out / ".checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest_layers, files, phases, splits = {}, {}, [], {}
    for layer_index, layer in enumerate(layers):
        data = LayerData.load(dump, layer, config.valid_fraction, config.max_samples)
        c, h, w = data.shape
        built = _phase_modules(data, config)
        norm = built["norm"]
        task, task_text = _task_loss(data, network, config)
        joint = task is None and data.split is not None and _split_network(data, network, config)
        if joint:
            task_text = f"MSE alone, then with the split's other tensors through {Path(joint).name}"
        log(f"{data.name}: {data.tensor} {(c, h, w)}, {len(data.train)} training / {len(data.valid)} validation maps"
            f"{', task loss through ' + task_text if task else ', task loss ' + task_text if task_text else ''}")
        prefix = data.name.lower().replace("/", "_")
        kept = _load_existing_exits(existing, data.name, built, out, config, log) if existing else {}
        for ratio, exit_modules in built["exits"].items():
            if ratio in kept:
                continue
            encoder, decoder = exit_modules["encoder"], exit_modules["decoder"]
            forward, first = _exit_forward(built, ratio, config.noise)
            sample = data.spread(24)
            with torch.no_grad():
                inputs = first(sample) if first is not None else sample
            init_linear_paths(encoder, decoder, inputs, sample)
            phases += _staged_phases(f"{data.name} CR{ratio}", checkpoints / f"{prefix}_cr{ratio}", encoder, decoder,
                                     [encoder, decoder], forward, data, norm, task, config.for_layer(data.name),
                                     config.seed + 10 * layer_index + ratio, log, progress)
        layer_entry = {"data": data.name, "tensor": data.tensor, "shape": data.shape,
                       "nonnegative": data.nonnegative, "built": built, "kept": kept, "prefix": prefix}
        if joint:  # exported once the split's parts are trained together, on the maps loaded here
            layer_entry["maps"] = data
            splits.setdefault((data.split, joint), []).append((data.part, layer_entry))
        else:
            manifest_layers[data.name] = _export_layer(layer_entry, config, out, files, existing)
        del data, built, task

    for (split, tail_network), parts in splits.items():
        entries = [entry for _, entry in sorted(parts, key=lambda part: part[0])]
        phases += _train_split(split, tail_network, entries, config, checkpoints, log, progress)
        for entry in entries:
            manifest_layers[entry["data"]] = _export_layer(entry, config, out, files, existing)
            manifest_layers[entry["data"]]["trained_with"] = [e["data"] for e in entries if e is not entry]
            del entry["maps"]

    if existing:
        return _write_extension(existing, out, manifest_layers, files, config, dump, layers, phases, started)
    manifest = {
        "name": name, "kind": "autotiler", "format": 2,
        "bottleneck": "K latent maps in [0, 1], tiled into one frame (grid rows = largest divisor of K <= sqrt K)",
        "layers": manifest_layers,
        "files": {k: {"sha256": v, "bytes": (out / k).stat().st_size} for k, v in sorted(files.items())},
        "training": {"dump": Path(dump).name, "layers": layers, **{k: v for k, v in asdict(config).items()},
                     "torch": torch.__version__, "grad_clip": GRAD_CLIP,
                     # phases resumed from checkpoints keep the time they took when they ran
                     "seconds": round(sum(p.seconds for p in phases), 1),
                     "this_run_seconds": round(time.perf_counter() - started, 1),
                     "phases": _phase_records(phases)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _exit_forward(built: dict, ratio: int, noise: float) -> tuple[Callable, nn.Module | None]:
    """(x → decoded map through the exit's bottleneck and the HEVC proxy, the frozen encoder the
    exit cascades on, or None)."""
    exit_modules = built["exits"][ratio]
    encoder, decoder = exit_modules["encoder"], exit_modules["decoder"]
    cascade = exit_modules["cascade_on"]
    first = built["exits"][cascade]["encoder"] if cascade else None
    if first is not None:
        first.eval()
        for p in first.parameters():
            p.requires_grad_(False)
        chain = lambda x: encoder(first(x))  # noqa: E731
    else:
        chain = encoder
    return (lambda x: decoder(hevc_proxy(chain(x), noise))), first


def _export_layer(layer: dict, config: TrainingConfig, out: Path, files: dict, existing: dict | None) -> dict:
    """Export a trained layer's exits (`layer`: what the training loop kept of it) to ONNX; its
    manifest entry. Exits kept from an existing model stay as their files are."""
    c, h, w = layer["shape"]
    built, kept, prefix = layer["built"], layer["kept"], layer["prefix"]
    entry = {"tensor": layer["tensor"], "shape": [int(c), int(h), int(w)], "nonnegative": layer["nonnegative"],
             "structure": "dedicated (one encoder per layer; higher ratios cascade on the CR"
                          f"{min(config.ratios)} encoder, frozen)", "exits": {}}
    for ratio, exit_modules in built["exits"].items():
        if ratio in kept:  # exported already: the files stay as they are
            entry["exits"][str(ratio)] = kept[ratio]
            for f in (*kept[ratio]["encoder"], *kept[ratio]["decoder"]):
                files[f] = existing["files"][f]["sha256"]
            continue
        cascade = exit_modules["cascade_on"]
        enc_file = f"{prefix}_enc{ratio}.onnx"
        dec_file = f"{prefix}_dec{ratio}.onnx"
        enc_in = built["exits"][cascade]["latent"] if cascade else c
        files[enc_file] = export_onnx(exit_modules["encoder"], enc_in, out / enc_file)
        files[dec_file] = export_onnx(exit_modules["decoder"], exit_modules["latent"], out / dec_file)
        encoders = ([f"{prefix}_enc{cascade}.onnx"] if cascade else []) + [enc_file]
        latent, steps = exit_modules["latent"], exit_modules["steps"]
        entry["exits"][str(ratio)] = {
            "encoder": encoders, "decoder": [dec_file], "stride": 2 ** steps, "latent_channels": latent,
            "ratio": c * h * w / (latent * (h // 2 ** steps) * (w // 2 ** steps))}
    return entry


def _train_split(split: str, network: str, parts: list[dict], config: TrainingConfig, checkpoints: Path,
                 log: Callable[[str], None], progress) -> list[PhaseResult]:
    """Each exit of a multi-tensor split's parts (`parts`: what the training loop kept of each, its
    maps included, in the split's order) trained together through the tail from all of them: MSE
    over every part plus the task loss on their decodings, on whole maps, at the task stage's rate
    and length. Checkpointed per exit (``<split>_cr<ratio>_joint.pt``)."""
    datas = [part["maps"] for part in parts]
    loss, text = task_loss_for(network, [d.tensor for d in datas], [d.valid[:2] for d in datas],
                               [d.shape[1:] for d in datas], calibration=[d.spread(CALIBRATION_MAPS) for d in datas])
    order = [[d.tensor for d in datas].index(name) for name in loss.tail.input_names]
    datas = [datas[i] for i in order]
    entries = [parts[i] for i in order]
    log(f"{split}: {', '.join(d.name for d in datas)} together, task loss through {Path(network).name}: {text}")
    data = SplitData(datas)
    norm = SplitNorm([e["built"]["norm"] for e in entries])
    results = []
    for ratio in sorted(config.ratios):
        if any(ratio in e["kept"] for e in entries):
            continue
        forwards = [_exit_forward(e["built"], ratio, config.noise)[0] for e in entries]

        def forward(xs, forwards=forwards, datas=datas):
            return [f(x)[..., : d.shape[1], : d.shape[2]] for f, x, d in zip(forwards, xs, datas)]

        modules = [e["built"]["exits"][ratio][k] for e in entries for k in ("encoder", "decoder")]
        name = f"{split} CR{ratio} joint"
        checkpoint = checkpoints / f"{split.lower().replace('/', '_')}_cr{ratio}_joint.pt"
        if checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False)
            for m, state in zip(modules, saved["modules"]):
                m.load_state_dict(state)
            result = PhaseResult(**saved["result"])
            log(f"  {name}: resumed from {checkpoint.name}")
        else:
            result = train_phase(name, modules, forward, data, norm, steps=config.task_steps, lr=config.lr / 4,
                                 batch=config.batch, crop=config.task_crop, seed=config.seed + ratio,
                                 task=(config.task_weight, loss), minutes=config.for_layer(split).minutes_per_phase,
                                 progress=progress)
            torch.save({"modules": [m.state_dict() for m in modules], "result": asdict(result)}, checkpoint)
        results.append(result)
        log(f"  {name}: {result.steps} steps in {result.seconds:.0f} s, validation loss {result.valid_loss:.4f} "
            f"(normalised MSE {result.valid_nmse:.4f})")
    return results


def _phase_records(phases: list) -> list[dict]:
    """What the manifest records of each training phase."""
    return [{"name": p.name, "steps": p.steps, "seconds": round(p.seconds, 1),
             "final_train_loss": round(p.train_loss, 5), "best_valid_loss": round(p.valid_loss, 5),
             "best_valid_nmse": round(p.valid_nmse, 5)} for p in phases]


def _existing_model(out: Path, name: str) -> dict:
    path = out / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"--extend: {out} holds no manifest.json to extend")
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != "autotiler" or manifest.get("name") != name:
        raise InvalidInputError(f"--extend: {path} is not the auto-tiler {name!r}")
    return manifest


def _load_existing_exits(existing: dict, layer: str, built: dict, out: Path, config: TrainingConfig,
                         log: Callable[[str], None]) -> dict[int, dict]:
    """Load the exits `existing` has for `layer` into the modules built for them; their entries."""
    entry = existing["layers"].get(layer, {"exits": {}})
    kept = {}
    for ratio, exit_modules in built["exits"].items():
        old = entry["exits"].get(str(ratio))
        if old is None:
            continue
        if (old["stride"], old["latent_channels"]) != (2 ** exit_modules["steps"], exit_modules["latent"]):
            raise InvalidInputError(f"--extend: {layer} CR{ratio} of the existing model has another layout")
        load_onnx_weights(exit_modules["encoder"], out / old["encoder"][-1])
        load_onnx_weights(exit_modules["decoder"], out / old["decoder"][0])
        kept[ratio] = old
        log(f"  {layer} CR{ratio}: kept from the existing model ({', '.join(old['encoder'] + old['decoder'])})")
    if min(config.ratios) not in kept and entry["exits"]:
        raise InvalidInputError(f"--extend: new exits of {layer} cascade on CR{min(config.ratios)}, "
                                "which the model lacks")
    return kept


def _write_extension(existing: dict, out: Path, layers_built: dict, files: dict, config: TrainingConfig, dump: str,
                     layers: list[str], phases: list, started: float) -> dict:
    """The existing manifest with the new exits added and the extension's training recorded."""
    manifest = dict(existing)
    manifest["layers"] = dict(existing["layers"])
    for layer, entry in layers_built.items():  # exits this run did not build stay as they were
        old = existing["layers"].get(layer, {})
        manifest["layers"][layer] = {**entry, **{k: v for k, v in old.items() if k != "exits"},
                                     "exits": {**old.get("exits", {}), **entry["exits"]}}
    manifest["files"] = {**existing["files"], **{k: {"sha256": v, "bytes": (out / k).stat().st_size}
                                                 for k, v in files.items()}}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    training = dict(existing["training"])
    training.setdefault("extensions", []).append({
        "dump": Path(dump).name, "layers": layers, **asdict(config), "torch": torch.__version__,
        "seconds": round(sum(p.seconds for p in phases), 1),
        "this_run_seconds": round(time.perf_counter() - started, 1),
        "phases": _phase_records(phases)})
    manifest["training"] = training
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _task_loss(data: LayerData, network: str | None, config: TrainingConfig) -> tuple:
    """(weight, TailLoss) through the tail of `network` (default: the network the dump names, when
    bundled) and a description of it; (None, None) when ``config.task_weight`` is 0 or none is found."""
    from ..onnxmodel import check_cut, load_model

    tail_path = network or _find_network(data.model)
    if config.task_weight <= 0 or not tail_path:
        return None, None
    try:
        check_cut(load_model(tail_path), data.tensor)
    except InvalidInputError as err:  # one tensor of a multi-tensor split: the tail needs them all
        return None, f"none ({err}): MSE alone"
    loss, text = task_loss_for(tail_path, data.tensor, data.valid[:2], [data.shape[1:]],
                               calibration=data.spread(CALIBRATION_MAPS))
    return (config.task_weight, loss), f"{Path(tail_path).name}: {text}"


def _split_network(data: LayerData, network: str | None, config: TrainingConfig) -> str | None:
    """The network whose tail a multi-tensor split's parts train through together, or None."""
    if config.task_weight <= 0 or config.task_steps <= 0:
        return None
    return network or _find_network(data.model)


def _find_network(model_name: str | None) -> str | None:
    if not model_name:
        return None
    candidate = Path(__file__).resolve().parents[2] / "models" / "reference" / model_name
    return str(candidate) if candidate.is_file() else None


def _coded_pairs(data: LayerData, encoders: list, stride: int, config: TrainingConfig,
                 log: Callable[[str], None]) -> CodedLatents:
    """`data`'s maps with their latents coded at ``config.hevc_rates`` (validation maps once each,
    at the rates in turn, so every rate is validated)."""
    started = time.perf_counter()
    train, missed = code_latents(encoders, data.train, config.hevc_rates, config.hevc_copies)
    valid_maps = data.valid[: max(validation_maps(data), len(config.hevc_rates))]
    valid, valid_missed = code_latents(encoders, valid_maps, config.hevc_rates, 1)
    rates = ", ".join("lossless" if r is None else f"{r:g}" for r in config.hevc_rates)
    log(f"  coded {len(train)} training and {len(valid)} validation latents at {rates} Kbpi in "
        f"{time.perf_counter() - started:.0f} s ({missed + valid_missed} targets out of reach, kept at the "
        "nearest rate)")
    return CodedLatents(train, data.train, valid, valid_maps, stride)


# --- compatibility autoencoders (the paper's section 3.3) -----------------------------------


class CompatEncoder(nn.Module):
    """(N, C, H, W) of a layer → (N, Cc, H, W) in the units of the core's layer, which the core's
    frozen encoder then reads. A linear path (1×1 convolution started at the layer's per-position
    principal components, scaled to the core layer's statistics) plus a convolutional one that
    starts at zero."""

    def __init__(self, channels: int, core_channels: int, width: int, norm: Normalise, core_norm: Normalise):
        super().__init__()
        self.norm = norm
        self.core_norm = core_norm
        self.linear = nn.Conv2d(channels, core_channels, 1)
        self.body = nn.Sequential(_conv(channels, width), nn.PReLU(width), _conv(width, width), nn.PReLU(width),
                                  _conv(width, core_channels))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        x = self.norm(x)
        return (self.linear(x) + self.body(x)) * self.core_norm.std + self.core_norm.mean


class CompatDecoder(nn.Module):
    """The core decoder's (N, Cc, H, W) → the layer's (N, C, H, W): linear path (least squares)
    plus a convolutional one from zero; ReLU at the end for non-negative layers."""

    def __init__(self, core_channels: int, channels: int, width: int, norm: Normalise, core_norm: Normalise,
                 nonnegative: bool):
        super().__init__()
        self.norm = norm
        self.core_norm = core_norm
        self.nonnegative = nonnegative
        self.linear = nn.Conv2d(core_channels, channels, 1)
        self.body = nn.Sequential(_conv(core_channels, width), nn.PReLU(width), _conv(width, width),
                                  nn.PReLU(width), _conv(width, channels))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, y):
        y = self.core_norm(y)
        x = (self.linear(y) + self.body(y)) * self.norm.std + self.norm.mean
        return F.relu(x) if self.nonnegative else x


def _flat(x):
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()


def init_compat_linear(encoder: CompatEncoder, sample) -> None:
    """The encoder's linear path: the layer's leading principal components per position, whitened
    (the core's normalisation then sees unit variance)."""
    with torch.no_grad():
        flat = _flat(encoder.norm(sample))
        mean = flat.mean(0)
        evals, evecs = torch.linalg.eigh(torch.cov((flat - mean).T))
        k = encoder.linear.out_channels
        top = evecs[:, -k:].flip(1) / evals[-k:].flip(0).clamp(min=1e-8).sqrt()
        encoder.linear.weight.copy_(top.T.float()[:, :, None, None])
        encoder.linear.bias.copy_((-mean @ top).float())


def init_compat_decoder(decoder: CompatDecoder, decoded_core, sample) -> None:
    """The decoder's linear path: least squares from what the core gives back to the layer."""
    with torch.no_grad():
        z = _flat(decoder.core_norm(decoded_core))
        t = _flat(decoder.norm(sample))
        design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
        solution = torch.linalg.lstsq(design, t).solution
        decoder.linear.weight.copy_(solution[:-1].T.float()[:, :, None, None])
        decoder.linear.bias.copy_(solution[-1].float())


def _core_modules(manifest: dict, core: str, out: Path, width: int) -> dict:
    """The core layer's exits as frozen torch modules, loaded from its ONNX files (and checked)."""
    entry = manifest["layers"].get(core)
    if entry is None:
        raise InvalidInputError(f"--core {core}: the model has no layer {core} "
                                f"(it has {', '.join(manifest['layers'])})")
    c = entry["shape"][0]
    exits, first = {}, None  # normalisations start as placeholders: the real statistics load from the files
    for ratio in sorted(int(r) for r in entry["exits"]):
        ex = entry["exits"][str(ratio)]
        if ex.get("core"):
            continue  # a compatibility exit of the core itself: not part of the core
        steps = int(math.log2(ex["stride"]))
        if first is None:
            encoder = Encoder(c, ex["latent_channels"], steps, width, Normalise(np.zeros(c), np.ones(c)))
        else:
            encoder = Encoder(first[1]["latent_channels"], ex["latent_channels"],
                              steps - int(math.log2(first[1]["stride"])), width, logit_input=True)
        decoder = Decoder(ex["latent_channels"], c, steps, width, Normalise(np.zeros(c), np.ones(c)),
                          entry["nonnegative"])
        load_onnx_weights(encoder, out / ex["encoder"][-1])
        load_onnx_weights(decoder, out / ex["decoder"][0])
        for m in (encoder, decoder):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        chain = encoder if first is None else (lambda x, e=encoder, f=first[0]: e(f(x)))
        exits[ratio] = {"encode": chain, "decoder": decoder, "entry": ex}
        first = first or (encoder, ex)
    return {"channels": c, "norm": first[0].norm, "exits": exits}


def train_compatibility(dump: str, layers: list[str], output: str, *, core: str, name: str,
                        config: TrainingConfig | None = None, network: str | None = None,
                        log: Callable[[str], None] = print,
                        progress: Callable[[str, int, int, str], None] | None = None) -> dict:
    """Compatibility autoencoders (Park, Kim & Ko, section 3.3) onto the `core` layer's auto-tiler.

    For each of `layers` (a larger layer than the core's): one compatibility encoder maps it to the
    core layer's shape, the core's frozen encoder and decoder code that, and one compatibility
    decoder per core exit maps it back. The core is shared, so each new exit costs only the small
    compatibility networks; its ratio is the core's times the layer's size over the core's (the
    paper's 8/32 and 16/64). The encoder is trained with the core's lowest exit (MSE, then the task
    loss), then frozen while each higher exit's decoder trains. Adds the exits to `output`'s
    manifest (keys: the ratios rounded) and returns it."""
    config = config or TrainingConfig()
    out = Path(output)
    existing = _existing_model(out, name)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoints = out / ".checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    core_built = _core_modules(existing, core, out, config.width)
    cc = core_built["channels"]
    core_norm = core_built["norm"]
    core_prefix = core.lower().replace("/", "_")
    files, phases, manifest_layers = {}, [], {}
    for layer_index, layer in enumerate(layers):
        data = LayerData.load(dump, layer, config.valid_fraction, config.max_samples)
        c, h, w = data.shape
        if c <= cc:  # same spatial size (fully convolutional): channels decide
            raise InvalidInputError(f"{layer} ({c} channels) is not larger than the core {core} ({cc} channels)")
        prefix = data.name.lower().replace("/", "_")
        planned = {}  # core ratio -> (real ratio, exit key) of each exit this run trains
        for core_ratio, core_exit in core_built["exits"].items():
            if core_ratio in config.ratios:
                ce = core_exit["entry"]
                real = c * h * w / (ce["latent_channels"] * (h // ce["stride"]) * (w // ce["stride"]))
                planned[core_ratio] = (real, int(round(real)))
        had = existing["layers"].get(data.name, {}).get("exits", {})
        keys = {str(key) for _, key in planned.values()}
        dedicated = sorted(k for k in keys if k in had and not had[k].get("core"))
        if dedicated:
            raise InvalidInputError(f"{data.name} has a dedicated CR{dedicated[0]} exit already")
        # every compatibility exit of a layer reads its one compatibility encoder, which this run retrains
        stale = sorted((k for k, ex in had.items() if ex.get("core") and k not in keys), key=int)
        if stale:
            raise InvalidInputError(f"{data.name}'s compatibility exits {', '.join('CR' + k for k in stale)} share the "
                                    "encoder this run retrains: train all of its core ratios together")
        norm = Normalise(data.mean, data.std)
        task, task_text = _task_loss(data, network, config)
        log(f"{data.name}: compatibility autoencoders onto {core}'s core, {len(data.train)} training maps"
            f"{', task loss through ' + task_text if task else ''}")
        encoder = CompatEncoder(c, cc, config.width, norm, core_norm)
        sample = data.spread(24)
        init_compat_linear(encoder, sample)
        entry_exits, encoder_trained = {}, False
        for core_ratio, core_exit in sorted(core_built["exits"].items()):
            if core_ratio not in planned:
                continue
            real, ratio_key = planned[core_ratio]
            decoder = CompatDecoder(cc, c, config.width, norm, core_norm, data.nonnegative)
            with torch.no_grad():
                init_compat_decoder(decoder, core_exit["decoder"](core_exit["encode"](encoder(sample))), sample)
            # the encoder trains with the first exit asked for, then is shared, frozen, by the others
            trainable = [decoder] if encoder_trained else [encoder, decoder]
            if encoder_trained:
                for p in encoder.parameters():
                    p.requires_grad_(False)
            encoder_trained = True
            forward = (lambda x, e=encoder, ce=core_exit, d=decoder:  # noqa: E731
                       d(ce["decoder"](hevc_proxy(ce["encode"](e(x)), config.noise))))
            phases += _staged_phases(f"{data.name} CR{ratio_key} (compatibility, {core} CR{core_ratio})",
                                     checkpoints / f"{prefix}_compat{ratio_key}", encoder, decoder, trainable, forward,
                                     data, norm, task, config.for_layer(data.name),
                                     config.seed + 10 * layer_index + core_ratio, log,
                                     progress)
            dec_file = f"{prefix}_compat_dec{ratio_key}.onnx"
            files[dec_file] = export_onnx(decoder, cc, out / dec_file)
            enc_file = f"{prefix}_compat_enc.onnx"
            ce = core_exit["entry"]
            entry_exits[str(ratio_key)] = {
                "encoder": [enc_file, *ce["encoder"]], "decoder": [*ce["decoder"], dec_file],
                "stride": ce["stride"], "latent_channels": ce["latent_channels"], "ratio": real,
                "core": f"{core} CR{core_ratio}"}
        files[f"{prefix}_compat_enc.onnx"] = export_onnx(encoder, c, out / f"{prefix}_compat_enc.onnx")
        manifest_layers[data.name] = {"tensor": data.tensor, "shape": [int(c), int(h), int(w)],
                                      "nonnegative": data.nonnegative, "exits": entry_exits}
        del data
    manifest = dict(existing)
    manifest["layers"] = {k: dict(v) for k, v in existing["layers"].items()}
    for layer, built in manifest_layers.items():
        entry = manifest["layers"].setdefault(layer, {k: v for k, v in built.items() if k != "exits"})
        entry["exits"] = {**entry.get("exits", {}), **built["exits"]}
        ratios = ", ".join(f"CR{r}" for r in sorted(built["exits"], key=int))
        dedicated = entry.get("structure", "").split("; compatibility", 1)[0]
        entry["structure"] = (f"{dedicated + '; ' if dedicated else ''}compatibility autoencoders onto {core}'s "
                              f"shared core at {ratios} ({core_prefix} exits + {layer.lower()}_compat_*.onnx)")
    manifest["files"] = dict(sorted({**existing["files"], **{k: {"sha256": v, "bytes": (out / k).stat().st_size}
                                                             for k, v in files.items()}}.items()))
    training = dict(existing["training"])
    training.setdefault("extensions", []).append({
        "dump": Path(dump).name, "layers": layers, "core": core, **asdict(config), "torch": torch.__version__,
        "seconds": round(sum(p.seconds for p in phases), 1),
        "this_run_seconds": round(time.perf_counter() - started, 1), "phases": _phase_records(phases)})
    manifest["training"] = training
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def finetune_decoders(dump: str, layers: list[str], output: str, *, name: str, config: TrainingConfig | None = None,
                      network: str | None = None, log: Callable[[str], None] = print,
                      progress: Callable[[str, int, int, str], None] | None = None) -> dict:
    """More training of existing exits' decoders with the task loss (MSE alone when
    ``config.task_weight`` is 0), their encoders frozen, so the exits cascaded on them and the
    frames already coded stay valid. A decoder is replaced only when its validation loss improves
    on the one it had; the manifest records the new file and the phase. Returns the manifest."""
    config = config or TrainingConfig()
    out = Path(output)
    existing = _existing_model(out, name)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    files, phases = {}, []
    for layer_index, layer in enumerate(layers):
        data = LayerData.load(dump, layer, config.valid_fraction, config.max_samples)
        task, _ = _task_loss(data, network, config)  # task_weight 0: MSE alone
        if config.task_weight > 0 and task is None:
            raise InvalidInputError(f"{layer}: no network for the task loss (give --network, or --task-weight 0)")
        # the modules of the exits asked for and of the lowest-ratio one they cascade on
        dedicated = [int(r) for r, e in existing["layers"].get(data.name, {}).get("exits", {}).items()
                     if not e.get("core")]
        chain = replace(config, ratios=tuple(sorted({*config.ratios, *sorted(dedicated)[:1]})))
        built = _phase_modules(data, chain)
        kept = _load_existing_exits(existing, data.name, built, out, chain, log)
        missing = [f"CR{r}" for r in config.ratios if r not in kept]
        if missing:
            raise InvalidInputError(f"{layer} has no {', '.join(missing)} exit to fine-tune")
        for ratio in config.ratios:
            exit_modules = built["exits"][ratio]
            cascade = exit_modules["cascade_on"]
            encoders = [built["exits"][cascade]["encoder"]] if cascade else []
            encoders.append(exit_modules["encoder"])
            for m in encoders:
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
            decoder = exit_modules["decoder"]

            def forward(x, encoders=encoders, decoder=decoder):
                for encoder in encoders:
                    x = encoder(x)
                return decoder(hevc_proxy(x, config.noise))

            pairs, coded = data, ""
            if config.hevc_rates:
                pairs = _coded_pairs(data, encoders, 2 ** exit_modules["steps"], config, log)
                forward, coded = decoder, " on HEVC-coded latents"
            before, _ = _validate(forward, built["norm"], task, pairs.validation(validation_maps(pairs)))
            phase_name = f"{data.name} CR{ratio} decoder {'task' if task else 'MSE'}{coded}"
            result = train_phase(phase_name, [decoder], forward, pairs, built["norm"], steps=config.task_steps,
                                 lr=config.lr / 4, batch=config.batch, crop=config.task_crop if task else config.crop,
                                 seed=config.seed + 10 * layer_index + ratio + 1, task=task,
                                 minutes=config.for_layer(data.name).minutes_per_phase, progress=progress)
            phases.append(result)
            dec_file = kept[ratio]["decoder"][0]
            if result.valid_loss < before:
                files[dec_file] = export_onnx(decoder, exit_modules["latent"], out / dec_file)
                log(f"  {phase_name}: validation loss {before:.4f} -> {result.valid_loss:.4f}, {dec_file} replaced")
            else:
                log(f"  {phase_name}: validation loss {before:.4f}, no better ({result.valid_loss:.4f}): kept")
        del data, built, task
    manifest = dict(existing)
    manifest["files"] = dict(sorted({**existing["files"], **{k: {"sha256": v, "bytes": (out / k).stat().st_size}
                                                             for k, v in files.items()}}.items()))
    training = dict(existing["training"])
    training.setdefault("extensions", []).append({
        "dump": Path(dump).name, "layers": layers, "decoders_only": True, **asdict(config),
        "torch": torch.__version__, "seconds": round(sum(p.seconds for p in phases), 1),
        "this_run_seconds": round(time.perf_counter() - started, 1), "phases": _phase_records(phases),
        "replaced": sorted(files)})
    manifest["training"] = training
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
