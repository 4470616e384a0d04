"""``learned``: a bottleneck trained for bits, its latent entropy-coded by the compiled coder.

The auto-tiler (`featcodec.codecs.autotiler`) reduces a layer to K latent maps and lets HEVC code
them; its networks were trained for dimensions, not for bits. Here an exit's encoder and decoder
were trained further with a rate term (`featcodec.train.learned`): the K latent maps in [0, 1] are
quantized with a step ``step`` to symbols round(y / step) (``1 / step + 1`` of them, at most 16)
and coded by the lightweight codec's compiled context coder (version 7: one adaptive 16-lane
distribution per context of the causal neighbours), which adapts to each map as it codes, so no
probability table ships with the model. The decoder network reads the symbols times the step.

The step is the rate control: one model serves every rate. ``kbpi`` finds the step whose payload
is nearest the target from below within +10 % (a false-position search on the step, each probe a
kernel encode of the latent; the encoder network runs once), with a `RateWarning` when no step
reaches it.

Models are ``models/learned/<name>/manifest.json`` plus one encoder and one decoder ONNX file per
layer, looked for as auto-tiler models are (``$FEATCODEC_MODELS`` first); the header records each
file's sha256 and decoding refuses a file whose hash differs. Torch is never imported.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .. import entropy
from ..errors import CorruptStreamError, InvalidInputError, MissingModelError
from ..video import RateWarning
from .autotiler import model_folders
from .base import Codec, Param, side_ints, side_numbers

# The light encoder's model: on the validation photos it chose, fewer bits than the exit-encoder one
# at every agreement (bench/results/learned_selection.md) for a fraction of its device time;
# centernet_mbv3 stays for the files coded with it.
DEFAULT_MODEL = "centernet_mbv3_light"
MANIFEST_FORMAT = 1
MIN_STEP = 1 / 15  # 16 symbols: the coder's alphabet
MAX_STEP = 1 / 2  # 3 symbols
CODER_VERSION = entropy.FAST_VERSION
KBPI_TOLERANCE = 0.10
SEARCH_PROBES = 9  # at most, after the two ends: probes of the step for a Kbpi target (each a kernel encode)


def available_models() -> dict[str, Path]:
    """Model name → folder of every learned-codec manifest found (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in model_folders("learned"):
        if folder.is_dir():
            for manifest in sorted(folder.glob("*/manifest.json")):
                try:
                    content = json.loads(manifest.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if content.get("kind") == "learned" and content.get("format") == MANIFEST_FORMAT:
                    found.setdefault(content.get("name", manifest.parent.name), manifest.parent)
    return found


def symbol_count(step: float) -> int:
    """Symbols of a latent in [0, 1] quantized with `step`: round(1 / step) + 1.

    >>> symbol_count(1 / 15), symbol_count(0.5), symbol_count(0.3)
    (16, 3, 4)
    """
    return int(round(1 / step)) + 1


def check_step(step) -> float:
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (MIN_STEP - 1e-9 <= step <= MAX_STEP):
        raise InvalidInputError(f"learned --step must be a number in [{MIN_STEP:.4f}, {MAX_STEP}] "
                                f"(1/15 to 1/2), got {step!r}")
    return float(step)


class Learned(Codec):
    """Encoder network (onnxruntime) → latent quantized with `step` → compiled context coder → decoder.

    Parameters: ``step`` (the latent's quantization step in [1/15, 1/2]: smaller, more bits),
    ``kbpi`` (a target in kilobits per sample instead: the step is searched per sample), ``model``
    and ``layer`` (default: the model's layer of the input's shape).
    """

    codec_id = "learned"
    params = (
        Param("step", float, "Quantization step of the latent in [1/15, 1/2]: smaller steps, more bits."),
        Param("kbpi", float, "Target kilobits per sample: the step is searched per sample (within +10 %)."),
        Param("model", str, "Model name (see `featcodec models`)."),
        Param("layer", str, "Which of the model's layers (default: the one of the input's shape).", cli=False),
    )
    rate_points = {
        "paper": [("default", {})] + [(f"kbpi={k}", {"kbpi": k}) for k in (15, 30, 45, 60, 90, 120, 240)]
        + [("step=1/15", {"step": MIN_STEP})],
        "quick": [("default", {}), ("kbpi=60", {"kbpi": 60})],
    }

    def __init__(self, step: float = 1 / 7, kbpi: float | None = None, model: str = DEFAULT_MODEL,
                 layer: str | None = None):
        self.step = check_step(step)
        if kbpi is not None and (isinstance(kbpi, bool) or not isinstance(kbpi, (int, float))
                                 or not 0 < kbpi < 1e7):
            raise InvalidInputError(f"learned --kbpi must be a positive number of kilobits, got {kbpi!r}")
        self.kbpi = kbpi
        self.model = model
        self.layer = layer
        self._folder: Path | None = None
        self._manifest: dict | None = None
        self._sessions: dict[str, object] = {}
        self._layers_coded: set[str] = set()

    # --- models ---------------------------------------------------------------------------

    @classmethod
    def describe_models(cls) -> list[str]:
        lines = []
        for name, folder in sorted(available_models().items()):
            manifest = json.loads((folder / "manifest.json").read_text())
            files = manifest["files"]
            lines.append(f"{name} (codec learned, {folder}): {len(files)} ONNX files, "
                         f"{sum(f['bytes'] for f in files.values()) / 1e6:.2f} MB")
            for layer, entry in manifest["layers"].items():
                c, h, w = entry["shape"]
                s, k = entry["stride"], entry["latent_channels"]
                lh, lw = -(-h // s), -(-w // s)
                training = manifest.get("training", {}).get(layer, {})
                lines.append(f"  {layer} {entry['tensor']} {tuple(entry['shape'])}: {k} latent maps of "
                             f"{lh}x{lw} (real ratio {c * h * w / (k * lh * lw):.2f}x), "
                             f"encoder {entry['encoder']} ({files[entry['encoder']]['bytes'] / 1e3:.0f} kB), decoder "
                             f"{entry['decoder']} ({files[entry['decoder']]['bytes'] / 1e3:.0f} kB); from "
                             f"{entry.get('start', '?')}, λ {training.get('lam', '?')}, "
                             f"{training.get('seconds', 0) / 60:.0f} min of training")
        return lines

    @property
    def folder(self) -> Path:
        if self._folder is None:
            models = available_models()
            if self.model not in models:
                known = ", ".join(sorted(models)) or "none found"
                raise MissingModelError(f"no learned-codec model {self.model!r} (available: {known}; "
                                        "see `featcodec models`)")
            self._folder = models[self.model]
        return self._folder

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = json.loads((self.folder / "manifest.json").read_text())
        return self._manifest

    def _entry(self, shape: tuple[int, ...]) -> tuple[str, dict]:
        layers = self.manifest["layers"]
        if self.layer is not None:
            matches = [k for k, v in layers.items() if self.layer in (k, v["tensor"])]
        else:
            matches = [k for k, v in layers.items() if tuple(v["shape"]) == tuple(shape)]
            if not matches:  # fully convolutional: another spatial size of a known channel count
                matches = [k for k, v in layers.items() if v["shape"][0] == shape[0]]
        if len(matches) != 1 or layers[matches[0]]["shape"][0] != shape[0]:
            served = "; ".join(f"{k} {tuple(v['shape'])}" for k, v in layers.items())
            what = f"layer {self.layer!r}" if self.layer else f"{shape[0]} channels"
            raise InvalidInputError(f"learned-codec model {self.model!r} serves no tensor of shape {tuple(shape)} "
                                    f"({what}); it serves {served}")
        return matches[0], layers[matches[0]]

    def _session(self, filename: str):
        if filename not in self._sessions:
            from ..onnxmodel import session, sha256_file

            path = self.folder / filename
            record = self.manifest["files"].get(filename)
            if not path.exists() or record is None:
                raise MissingModelError(f"learned-codec model file {path} is missing")
            if sha256_file(path) != record["sha256"]:
                raise MissingModelError(f"{path} does not match the sha256 in its manifest")
            self._sessions[filename] = session(str(path), self.threads)
        return self._sessions[filename]

    def models(self) -> list[dict[str, str]]:
        layers = self.manifest["layers"] if self._layers_coded else {}
        used = sorted({layers[k][side] for k in self._layers_coded for side in ("encoder", "decoder")})
        files = self.manifest["files"] if used else {}
        return [{"name": f"{self.model}/{f}", "sha256": files[f]["sha256"]} for f in used]

    def verify_models(self, records: list[dict]) -> None:
        files = self.manifest["files"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise CorruptStreamError(f"header models must be a list of {{name, sha256}} records, got {records!r}")
        for record in records:
            name = str(record.get("name", "")).split("/", 1)[-1]
            if name not in files:
                raise MissingModelError(f"the file needs model file {record.get('name')}, not in model {self.model!r}")
            if files[name]["sha256"] != record.get("sha256"):
                have, wanted = files[name]["sha256"][:12], str(record.get("sha256"))[:12]
                raise MissingModelError(f"model file {record.get('name')} differs from the one the file was encoded "
                                        f"with (sha256 {have}… ≠ {wanted}…)")

    # --- coding ---------------------------------------------------------------------------

    @staticmethod
    def _latent_shape(shape, entry) -> tuple[int, int, int]:
        s, k = int(entry["stride"]), int(entry["latent_channels"])
        return k, -(-shape[1] // s), -(-shape[2] // s)

    def latent(self, sample: np.ndarray) -> tuple[str, np.ndarray]:
        """(layer key, (K, h, w) latent in [0, 1]) of one (C, H, W) sample: the encoder network."""
        key, entry = self._entry(sample.shape)
        self._layers_coded.add(key)
        k, lh, lw = self._latent_shape(sample.shape, entry)
        s = int(entry["stride"])
        pad = ((0, 0), (0, lh * s - sample.shape[1]), (0, lw * s - sample.shape[2]))
        x = np.pad(sample, pad, mode="edge")[None].astype(np.float32)
        with self.stage("nn_encode"):
            latent = self._session(entry["encoder"]).run(None, {"input": x})[0][0]
        if latent.shape != (k, lh, lw):
            raise MissingModelError(f"encoder of {self.model}/{key} gave {latent.shape}, its manifest says "
                                    f"{(k, lh, lw)}")
        return key, latent

    @staticmethod
    def _code(latent: np.ndarray, step: float) -> bytes:
        count = symbol_count(step)
        symbols = np.clip(np.rint(latent / step), 0, count - 1).astype(np.uint8)
        return entropy.encode_symbols(symbols, count, version=CODER_VERSION)

    def _search(self, latent: np.ndarray) -> tuple[bytes, float]:
        """The payload and step nearest `kbpi` from below within +10 % (coarser steps, fewer bits).

        The payload's log size is close to linear in the log of the step, so the step is found by false
        position between a step that spends too much and one within the target (Illinois: a side kept
        twice has its weight halved), each probe a kernel encode: on the held-out photos at 30-60 Kbits,
        3.6 probes per sample where a bisection took 5.5-7.8, and nearer the target (1.6-3.4 % off on
        average against 2.6-5.3 %)."""
        target = self.kbpi * 1000 / 8  # bytes
        limit = target * (1 + KBPI_TOLERANCE)
        fine = self._code(latent, MIN_STEP)
        if len(fine) <= limit:
            return self._finish(fine, MIN_STEP)
        coarse = self._code(latent, MAX_STEP)
        if len(coarse) > limit:
            return self._finish(coarse, MAX_STEP)
        best = (MAX_STEP, coarse)
        # (log step, log of the size over the target) on each side of the target: `over` spends more
        # than it, `under` no more (the coarsest step already within +10 % of it: nothing is nearer)
        over, under = [math.log(MIN_STEP), math.log(len(fine) / target)], [math.log(MAX_STEP),
                                                                           math.log(len(coarse) / target)]
        kept = None
        for _ in range(SEARCH_PROBES if under[1] <= 0 else 0):
            if abs(len(best[1]) - target) <= target * KBPI_TOLERANCE / 2 or under[0] - over[0] < 1e-3:
                break
            guess = over[0] - over[1] * (under[0] - over[0]) / (under[1] - over[1])
            step = math.exp(min(max(guess, over[0] + 1e-4), under[0] - 1e-4))
            payload = self._code(latent, step)
            if len(payload) <= limit and abs(len(payload) - target) < abs(len(best[1]) - target):
                best = (step, payload)
            point = [math.log(step), math.log(len(payload) / target)]
            if point[1] > 0:
                over, other = point, "under"
            else:
                under, other = point, "over"
            if kept == other:  # the same side kept twice: halve its weight (Illinois)
                (under if other == "under" else over)[1] /= 2
            kept = other
        return self._finish(best[1], best[0])

    def _finish(self, payload: bytes, step: float) -> tuple[bytes, float]:
        got = len(payload) * 8 / 1000
        if abs(got - self.kbpi) > self.kbpi * KBPI_TOLERANCE:
            side = "cannot be spent even at the finest step" if got < self.kbpi else "is below the coarsest step's"
            warnings.warn(RateWarning(f"learned-codec target {self.kbpi:g} kbits {side}: {got:.1f} kbits"),
                          stacklevel=4)
        return payload, step

    def encode(self, sample):
        key, latent = self.latent(sample)
        with self.stage("entropy_encode"):
            if self.kbpi is not None:
                payload, step = self._search(latent)
            else:
                payload, step = self._code(latent, self.step), self.step
        return payload, {"layer": key, "latent": list(latent.shape), "step": step}

    def validate(self, shape, info):
        if len(shape) != 3:
            raise CorruptStreamError(f"learned-codec samples are (C, H, W), got {tuple(shape)}")
        key, entry = self._entry(tuple(shape))
        if info.get("layer") != key:
            raise CorruptStreamError(f"sample was coded for layer {info.get('layer')!r}, the model serves {key!r}")
        if side_ints(info, "latent", 3) != list(self._latent_shape(shape, entry)):
            raise CorruptStreamError(f"latent {info.get('latent')} does not fit {tuple(shape)} "
                                     f"(stride {entry['stride']}, {entry['latent_channels']} maps)")
        step = side_numbers(info, "step")
        if not MIN_STEP - 1e-9 <= step <= MAX_STEP:
            raise CorruptStreamError(f"step {step!r} is outside [1/15, 1/2]")

    def decode(self, payload, shape, info):
        key, entry = self._entry(tuple(shape))
        step = float(info["step"])
        with self.stage("entropy_decode"):
            symbols = entropy.decode_symbols(payload, tuple(info["latent"]), symbol_count(step),
                                             version=CODER_VERSION)
        latent = np.minimum(symbols.astype(np.float32) * np.float32(step), np.float32(1.0))[None]
        with self.stage("nn_decode"):
            x = self._session(entry["decoder"]).run(None, {"input": latent})[0][0]
        return np.ascontiguousarray(x[:, : shape[1], : shape[2]], dtype=np.float32)
