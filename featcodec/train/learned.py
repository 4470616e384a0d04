"""Train the ``learned`` codec: an auto-tiler exit trained further for bits (optional extra: torch).

The auto-tiler minimises the bottleneck's dimensions; HEVC then codes latent maps it was never
trained to make cheap. Here an exit's encoder chain and decoder (`featcodec.train.autotiler`, loaded
from the shipped ONNX files) are trained on

    mse_weight · normalised MSE + task_weight · task loss + λ · Kbits per sample

where the Kbits are the ideal code length of the K latent maps (in [0, 1]) quantized with a step
``step`` (symbols round(y / step)), under a per-channel density `ChannelPrior`: a histogram over
[0, 1] whose CDF is piecewise linear, so a cell's probability CDF(y + step/2) − CDF(y − step/2) is
differentiable in y (CompressAI's additive-uniform-noise relaxation, with a simpler monotone CDF).
The step is drawn per sample, log-uniformly from [1/15, 1/2] (16 to 3 levels), so one model serves
every rate and the codec's step is its rate control. The decoder reads the noisy latent on half the
batches and the really rounded one (straight-through) on the other half.

At run time nothing of this is needed: the codec (`featcodec.codecs.learned`) runs the exported
ONNX encoder, rounds, and codes the symbols with the compiled context coder, whose adaptive
contexts (neighbours, partner channels) code below this factorized estimate; the bench measures
the real rate. Validation (the dump's last photos, as the auto-tiler's) chooses the kept state;
a checkpoint at every validation makes a killed run resume where it was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..codecs.learned import MAX_STEP, MIN_STEP
from ..errors import InvalidInputError
from . import require_torch
from .autotiler import (
    CALIBRATION_MAPS,
    GRAD_CLIP,
    Decoder,
    Encoder,
    LayerData,
    Normalise,
    _find_network,
    export_onnx,
    load_onnx_weights,
)

torch = require_torch()
nn = torch.nn

VALID_STEPS = (1 / 15, 1 / 7, 1 / 3)  # the steps a validation reads (fine, middle, coarse)


class ChannelPrior(nn.Module):
    """Per-channel density of latent values in [0, 1]: `bins` equal bins (softmax of logits), the CDF
    linear inside each. `bits(y, step)` is the code length of the cell of width `step` around y."""

    def __init__(self, channels: int, bins: int = 64):
        super().__init__()
        self.bins = bins
        self.logits = nn.Parameter(torch.zeros(channels, bins))

    def cdf(self, y):
        c = y.shape[1]
        mass = torch.softmax(self.logits, -1)
        cum = torch.cat([torch.zeros(c, 1), torch.cumsum(mass, -1)], -1).clamp(max=1.0)  # (C, bins + 1)
        t = y.clamp(0, 1) * self.bins
        index = t.detach().floor().clamp(max=self.bins - 1).long()
        frac = t - index
        offsets = (torch.arange(c) * (self.bins + 1)).view(1, c, 1, 1)
        flat = cum.reshape(-1)
        low = flat[index + offsets]
        high = flat[index + 1 + offsets]
        return low + frac * (high - low)

    def bits(self, y, step):
        """Bits of each latent value `y` (N, C, h, w) quantized with `step` (N, 1, 1, 1)."""
        p = self.cdf(y + step / 2) - self.cdf(y - step / 2)
        return -torch.log2(p.clamp(min=1e-9))

    @torch.no_grad()
    def fit(self, y) -> None:
        """Start at the histogram of latents `y` (N, C, h, w)."""
        c = y.shape[1]
        index = (y.clamp(0, 1) * self.bins).floor().clamp(max=self.bins - 1).long()
        counts = torch.zeros(c, self.bins)
        counts.scatter_add_(1, index.permute(1, 0, 2, 3).reshape(c, -1),
                            torch.ones(c, index[:, 0].numel()))
        self.logits.copy_(torch.log(counts / counts.sum(1, keepdim=True) + 1e-3))


def random_steps(n: int, generator=None):
    """`n` quantization steps, log-uniform in [MIN_STEP, MAX_STEP], shaped (n, 1, 1, 1)."""
    u = torch.rand(n, 1, 1, 1, generator=generator)
    return torch.exp(math.log(MIN_STEP) + u * (math.log(MAX_STEP) - math.log(MIN_STEP)))


def quantized(y, step, hard: bool):
    """What the decoder reads: y with uniform noise of the cell's width, or rounded (straight-through)."""
    if hard:
        rounded = torch.clamp(torch.round(y / step) * step, 0, 1)
        return y + (rounded - y).detach()
    return y + (torch.rand_like(y) - 0.5) * step


class Chain(nn.Module):
    """Encoders applied in turn (an exit's cascade), exported as one network."""

    def __init__(self, encoders: list):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.body = encoders[0].body  # export_onnx's example reads body[0].in_channels

    def forward(self, x):
        for encoder in self.encoders:
            x = encoder(x)
        return x


class LightEncoder(nn.Module):
    """A cheap encoder for the device: per stride-2 step a depthwise 3×3 convolution of stride 2 and a
    1×1 convolution (MobileNet's separable pair), a last separable pair to the latent, the sigmoid.
    On S2 at CR16 about 30 M multiply-adds where the auto-tiler's encoders take about 1.5 G; it is
    first distilled from them (`distill`), then trained with the rest."""

    def __init__(self, cin: int, latent: int, steps: int, width: int, norm: nn.Module):
        super().__init__()
        self.norm = norm
        layers, c = [], cin
        for _ in range(steps):
            layers += [nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c), nn.Conv2d(c, width, 1), nn.PReLU(width)]
            c = width
        layers += [nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, latent, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return torch.sigmoid(self.body(self.norm(x)))


def distill(student, teacher, data: LayerData, config: RateConfig, log: Callable[[str], None]) -> dict:
    """Train `student` to give `teacher`'s latent (MSE of the logits) on training crops, for
    ``config.distill_minutes``; returns the record of the phase."""
    from .autotiler import _logit

    optimiser = torch.optim.Adam(student.parameters(), lr=2e-3)
    rng = np.random.default_rng(config.seed + 1)
    started, step, value = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - started < 60 * config.distill_minutes:
        step += 1
        share = (time.perf_counter() - started) / (60 * config.distill_minutes)
        optimiser.param_groups[0]["lr"] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(share, 1.0))))
        x, _ = data.batch(rng, config.batch, config.crop)
        with torch.no_grad():
            target = _logit(teacher(x))
        loss = torch.mean((_logit(student(x)) - target) ** 2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        if step % config.every == 0:
            log(f"  distil step {step}: logit MSE {value:.4f}")
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(data.valid[:4]))
        valid = float(torch.mean((_logit(student(x)) - _logit(teacher(x))) ** 2))
    log(f"  distilled in {step} steps: validation logit MSE {valid:.4f}")
    return {"steps": step, "seconds": round(time.perf_counter() - started, 1), "train_logit_mse": round(value, 5),
            "valid_logit_mse": round(valid, 5)}


@dataclass
class RateConfig:
    base: str = "centernet_mbv3"  # the auto-tiler model whose exit starts training
    ratio: int = 16
    lam: float = 0.004  # loss per Kbit per sample
    minutes: float = 45.0
    steps: int = 100_000
    batch: int = 8
    crop: int = 64
    lr: float = 5e-4
    prior_lr: float = 1e-2
    task_weight: float = 1.0
    mse_weight: float = 0.5  # the features' normalised MSE: keeps the decoder close to the layer off the task
    encoder: str = "exit"  # "exit": the auto-tiler's encoders; "light": a `LightEncoder` distilled from them
    start: str | None = None  # a learned model whose encoder and decoder for the layer start instead of the exit's
    distill_minutes: float = 10.0
    width: int = 64
    every: int = 100
    seed: int = 0
    valid_fraction: float = 0.1
    max_samples: int | None = None


def _base_exit(base: str, layer: str, ratio: int) -> tuple[Path, dict, dict]:
    from ..codecs.autotiler import available_models

    folder = available_models().get(base)
    if folder is None:
        raise InvalidInputError(f"no auto-tiler model {base!r} to start from")
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["layers"].get(layer)
    if entry is None or str(ratio) not in entry["exits"]:
        raise InvalidInputError(f"auto-tiler {base!r} has no {layer} CR{ratio} exit to start from")
    exit_ = entry["exits"][str(ratio)]
    if "core" in exit_:
        raise InvalidInputError(f"{layer} CR{ratio} of {base!r} is a compatibility exit: start from a dedicated one")
    return folder, entry, exit_


def _build(data: LayerData, folder: Path, entry: dict, exit_: dict, width: int):
    """The exit's encoder chain and decoder as torch modules, with the shipped weights (each network
    carries its own normalisation buffers)."""
    c = data.train.shape[1]
    # each encoder of a cascade ends at the exit that stops there: its stride and latent maps
    ends = {tuple(e["encoder"]): (e["stride"], e["latent_channels"]) for e in entry["exits"].values()}
    encoders, channels_in, done = [], c, 0
    for i, name in enumerate(exit_["encoder"]):
        stride, latent = ends[tuple(exit_["encoder"][: i + 1])]
        steps = int(round(math.log2(stride))) - done
        norm = Normalise(data.mean, data.std) if i == 0 else None
        encoder = Encoder(channels_in, latent, steps, width, norm, logit_input=i > 0)
        load_onnx_weights(encoder, folder / name)
        encoders.append(encoder)
        channels_in, done = latent, done + steps
    decoder = Decoder(exit_["latent_channels"], c, done, width, Normalise(data.mean, data.std), data.nonnegative)
    load_onnx_weights(decoder, folder / exit_["decoder"][0])
    return Chain(encoders), decoder


def _load_learned(encoder, decoder, name: str, layer: str, exit_: dict, light=None) -> bool:
    """Load learned model `name`'s encoder and decoder for `layer` (trained from the same exit); its
    encoder goes into `light` if it is a light one (so training goes on from it), else into `encoder`.
    Returns whether it was light."""
    from ..codecs.learned import available_models

    folder = available_models().get(name)
    if folder is None:
        raise InvalidInputError(f"no learned model {name!r} to start from")
    entry = json.loads((folder / "manifest.json").read_text())["layers"].get(layer)
    if entry is None or (entry["stride"], entry["latent_channels"]) != (exit_["stride"], exit_["latent_channels"]):
        raise InvalidInputError(f"learned model {name!r} has no {layer} of the base exit's shape to start from")
    is_light = entry.get("encoder_kind", "the auto-tiler's encoders") != "the auto-tiler's encoders"
    if is_light and light is None:
        raise InvalidInputError(f"learned model {name!r} has a light encoder: train it with --encoder light")
    load_onnx_weights(light if is_light else encoder, folder / entry["encoder"])
    load_onnx_weights(decoder, folder / entry["decoder"])
    return is_light


def _objective(encoder, decoder, prior, task, x, steps, hard: bool, config: RateConfig, latents_per_sample: int):
    """(loss, normalised MSE, task loss, Kbits per sample) of maps `x` at quantization `steps`."""
    y = encoder(x)
    noisy = y + (torch.rand_like(y) - 0.5) * steps
    kbits = prior.bits(noisy, steps).mean() * latents_per_sample / 1000
    decoded = decoder(quantized(y, steps, hard))
    norm = decoder.norm
    nmse = torch.mean((norm(decoded) - norm(x)) ** 2)
    task_loss = task(decoded, task.target(x)) if task is not None else torch.zeros(())
    loss = config.mse_weight * nmse + config.task_weight * task_loss + config.lam * kbits
    return loss, nmse, task_loss, kbits


def _validate(encoder, decoder, prior, task, valid, config, latents_per_sample) -> dict:
    """Mean objective and its parts on whole validation maps, at each of VALID_STEPS, hard rounding."""
    torch.manual_seed(0)
    parts = []
    with torch.no_grad():
        for step in VALID_STEPS:
            for i in range(0, len(valid), 2):
                x = torch.from_numpy(np.ascontiguousarray(valid[i : i + 2]))
                steps = torch.full((len(x), 1, 1, 1), step)
                out = _objective(encoder, decoder, prior, task, x, steps, True, config, latents_per_sample)
                parts.append([float(v) for v in out])
    loss, nmse, task_loss, kbits = np.mean(parts, axis=0)
    return {"loss": float(loss), "nmse": float(nmse), "task": float(task_loss), "kbits": float(kbits)}


def train_learned(dump: str, layer: str, output: str, *, name: str, config: RateConfig | None = None,
                  network: str | None = None, log: Callable[[str], None] = print,
                  progress: Callable[[str, int, int, str], None] | None = None) -> dict:
    """Train `layer`'s learned codec from the auto-tiler exit ``config.base`` CR``config.ratio`` on the
    dump `dump`; export it to `output` and write (or add the layer to) its manifest.json."""
    from ..codecs.learned import MANIFEST_FORMAT
    from .taskloss import task_loss_for

    config = config or RateConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    out = Path(output)
    checkpoints = out / ".checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    data = LayerData.load(dump, layer, config.valid_fraction, config.max_samples)
    c, h, w = data.shape
    folder, entry, exit_ = _base_exit(config.base, data.name, config.ratio)
    if entry["tensor"] != data.tensor or list(entry["shape"]) != [c, h, w]:
        raise InvalidInputError(f"{dump}:{layer} is {data.tensor} {(c, h, w)}, the base exit serves "
                                f"{entry['tensor']} {tuple(entry['shape'])}")
    encoder, decoder = _build(data, folder, entry, exit_, config.width)
    stride, k = exit_["stride"], exit_["latent_channels"]
    if config.encoder not in ("exit", "light"):
        raise InvalidInputError(f"encoder must be exit or light, got {config.encoder!r}")
    light = LightEncoder(c, k, int(round(math.log2(stride))), config.width,
                         Normalise(data.mean, data.std)) if config.encoder == "light" else None
    started_light = False
    if config.start:
        started_light = _load_learned(encoder, decoder, config.start, data.name, exit_, light)
        log(f"  {data.name}: starting from learned model {config.start!r}")
    distilled = None
    prefix = data.name.lower().replace("/", "_")
    if light is not None:
        teacher, encoder = encoder, light
        light_checkpoint = checkpoints / f"{prefix}_light_distilled.pt"
        if started_light:
            distilled = {"from": config.start}
        elif light_checkpoint.exists():
            saved = torch.load(light_checkpoint, weights_only=False)
            encoder.load_state_dict(saved["encoder"])
            distilled = saved["record"]
        else:
            teacher.eval()
            distilled = distill(encoder, teacher, data, config, log)
            torch.save({"encoder": encoder.state_dict(), "record": distilled}, light_checkpoint)
        del teacher
    latents_per_sample = k * math.ceil(h / stride) * math.ceil(w / stride)
    tail_path = network or _find_network(data.model)
    task = None
    if config.task_weight > 0 and tail_path:
        task, text = task_loss_for(tail_path, data.tensor, data.valid[:2], [data.shape[1:]],
                                   calibration=data.spread(CALIBRATION_MAPS))
        log(f"  task loss through {Path(tail_path).name}: {text}")
    prior = ChannelPrior(k)
    with torch.no_grad():
        prior.fit(encoder(data.spread(24)))
    modules = [encoder, decoder, prior]
    optimiser = torch.optim.Adam([{"params": list(encoder.parameters()) + list(decoder.parameters()), "lr": config.lr},
                                  {"params": prior.parameters(), "lr": config.prior_lr}])
    checkpoint = checkpoints / f"{prefix}_learned{'_light' if config.encoder == 'light' else ''}.pt"
    phase = f"{data.name} rate λ={config.lam:g}"
    step, elapsed, history, best, best_state = 0, 0.0, [], None, None
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        for m, state in zip(modules, saved["modules"]):
            m.load_state_dict(state)
        optimiser.load_state_dict(saved["optimiser"])
        step, elapsed, history, best, best_state = (saved[k] for k in ("step", "elapsed", "history", "best",
                                                                        "best_state"))
        rng = np.random.default_rng(config.seed + step)
        log(f"  {phase}: resumed from {checkpoint.name} at step {step} ({elapsed / 60:.1f} min)")
    valid = data.valid[:8]
    if best is None:
        for m in modules:
            m.eval()
        best = _validate(encoder, decoder, prior, task, valid, config, latents_per_sample)
        best_state = [{key: t.clone() for key, t in m.state_dict().items()} for m in modules]
        history.append((0, best))
        log(f"  {phase}: start, validation {best}")
    params = [p for m in modules for p in m.parameters()]
    started = time.perf_counter() - elapsed
    while step < config.steps and time.perf_counter() - started < 60 * config.minutes:
        step += 1
        for m in modules:
            m.train()
        progress_share = max(step / config.steps, (time.perf_counter() - started) / (60 * config.minutes))
        scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress_share, 1.0)))
        for group, lr in zip(optimiser.param_groups, (config.lr, config.prior_lr)):
            group["lr"] = lr * scale
        x, _ = data.batch(rng, config.batch, config.crop)
        steps = random_steps(len(x))
        loss, nmse, task_loss, kbits = _objective(encoder, decoder, prior, task, x, steps, step % 2 == 0,
                                                  config, latents_per_sample)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimiser.step()
        loss, nmse, task_loss, kbits = (float(v.detach()) for v in (loss, nmse, task_loss, kbits))
        text = f"loss {loss:.4f} nmse {nmse:.4f} task {task_loss:.4f} Kbits {kbits:.1f}"
        if step % config.every == 0:
            for m in modules:
                m.eval()
            v = _validate(encoder, decoder, prior, task, valid, config, latents_per_sample)
            history.append((step, v))
            if v["loss"] < best["loss"]:
                best = v
                best_state = [{key: t.clone() for key, t in m.state_dict().items()} for m in modules]
            text += f" | valid {v['loss']:.4f} (task {v['task']:.4f}, {v['kbits']:.1f} Kbits)"
            torch.save({"modules": [m.state_dict() for m in modules], "optimiser": optimiser.state_dict(),
                        "step": step, "elapsed": time.perf_counter() - started, "history": history,
                        "best": best, "best_state": best_state}, checkpoint)
            log(f"  {phase} step {step}: {text}")
        if progress:
            progress(phase, step, config.steps, text)
    seconds = time.perf_counter() - started
    for m, state in zip(modules, best_state):
        m.load_state_dict(state)
        m.eval()
    enc_file, dec_file = f"{prefix}_enc.onnx", f"{prefix}_dec.onnx"
    files = {enc_file: export_onnx(encoder, c, out / enc_file), dec_file: export_onnx(decoder, k, out / dec_file)}
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {
        "name": name, "kind": "learned", "format": MANIFEST_FORMAT,
        "bottleneck": "K latent maps in [0, 1], symbols round(y / step) coded by the compiled context coder",
        "layers": {}, "files": {}, "training": {}}
    if manifest.get("kind") != "learned":
        raise InvalidInputError(f"{path} is not a learned codec's manifest")
    manifest["layers"][data.name] = {
        "tensor": data.tensor, "shape": [int(c), int(h), int(w)], "nonnegative": data.nonnegative,
        "encoder": enc_file, "decoder": dec_file, "stride": stride, "latent_channels": k,
        "start": f"{config.base} {data.name} CR{config.ratio}"
                 + (f", through learned {config.start}" if config.start else ""),
        "encoder_kind": "the auto-tiler's encoders" if config.encoder == "exit" else "light (distilled)"}
    manifest["files"].update({f: {"sha256": digest, "bytes": (out / f).stat().st_size} for f, digest in files.items()})
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest["training"][data.name] = {
        "dump": Path(dump).name, **asdict(config), "torch": torch.__version__, "steps_run": step,
        "seconds": round(seconds + (distilled or {}).get("seconds", 0), 1), "distilled": distilled,
        "training_maps": len(data.train), "validation_maps": len(data.valid),
        "validation": {"steps": [round(s, 5) for s in VALID_STEPS], "best": best, "start": history[0][1]},
        "history": [(s, {k2: round(v2, 5) for k2, v2 in v.items()}) for s, v in history]}
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
