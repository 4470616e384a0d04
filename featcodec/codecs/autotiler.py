"""``autotiler``: an autoencoder tiles the channels into ONE map, which HEVC codes directly.

The method of Park, Kim & Ko ("Auto-Tiler", Sensors 2021). ``cr`` is the real element ratio,
as in the paper: for a (C, H, W) layer at ``cr=N`` the bottleneck holds C·H·W/N values, laid
out as K latent maps of (H/s, W/s) (`exit_layout`: CR4 is K = C at s = 2, CR16 K = C at
s = 4) that the codec tiles into one frame (the tiling codec's grid) for HEVC. A trained model
(``models/autotiler/<name>/manifest.json`` plus ONNX files, see `featcodec.train.autotiler`)
serves some layers at some ratios; asking for another is an error that lists those on offer. An
exit's encoder and decoder are chains of ONNX files: a cascade (CR16 on CR4's encoder), or a
compatibility network around another layer's shared exit (the manifest names that ``core``).
The header records the layer, the map and latent sizes and the ratio reached (padding a map
that the stride does not divide costs a few per cent), and every ONNX file with its sha256;
decoding refuses a file whose hash differs. Networks run with onnxruntime; torch is never
imported.

Models are looked for in ``$FEATCODEC_MODELS`` (folders separated by ``os.pathsep``), the
``models/autotiler`` folder of the featcodec source tree, and ``./models/autotiler``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .. import video
from ..errors import CorruptStreamError, InvalidInputError, MissingModelError
from .base import Param, side_ints
from .video_base import HEVC_PARAMS, KBPI_BASES, VideoCodec

DEFAULT_MODEL = "centernet_mbv3"
MANIFEST_FORMAT = 2


SMALL_MAP = 28  # maps this small (a classifier's 7×7 to 28×28) lose channels, not positions


def exit_layout(channels: int, ratio: int, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(stride-2 steps, latent channels K) of the bottleneck for `channels` at element ratio `ratio`.

    The fewest steps s with 4^s ≥ ratio, then K = C·4^s / ratio, which must be a whole number; on a
    map of `size` no larger than SMALL_MAP on a side, no step at all (K = C / ratio) where it divides.

    >>> exit_layout(72, 4), exit_layout(72, 16), exit_layout(24, 8), exit_layout(512, 16, (7, 7))
    ((1, 72), (2, 72), (2, 48), (0, 32))
    """
    if not isinstance(ratio, int) or ratio < 1:
        raise InvalidInputError(f"compression ratio must be a positive integer, got {ratio!r}")
    if size is not None and min(size) <= SMALL_MAP and channels % ratio == 0:
        return 0, channels // ratio
    steps = math.ceil(math.log(ratio, 4) - 1e-9) if ratio > 1 else 0
    latent, rest = divmod(channels * 4 ** steps, ratio)
    if rest or latent < 1:
        raise InvalidInputError(f"CR{ratio} does not divide {channels} channels into whole latent maps "
                                f"({channels}·4^{steps}/{ratio} = {channels * 4 ** steps / ratio:g})")
    return steps, latent


def latent_to_frame(latent: np.ndarray, bitdepth: int = 8) -> np.ndarray:
    """The integer frame HEVC codes: K latent maps in [0, 1] at `bitdepth` bits, tiled in the
    tiling codec's grid (`frame_to_latent` is its inverse, up to rounding)."""
    top = (1 << bitdepth) - 1
    integers = np.clip(np.rint(latent * top), 0, top).astype(np.uint16 if bitdepth > 8 else np.uint8)
    rows, cols, _ = video.tile_grid(len(latent))
    return video.tile(integers, rows, cols)


def frame_to_latent(frame: np.ndarray, latent_shape: tuple[int, int, int], bitdepth: int = 8) -> np.ndarray:
    """(K, h, w) float32 latent maps in [0, 1] from a decoded frame (what the decoder network reads)."""
    k, lh, lw = latent_shape
    rows, cols, _ = video.tile_grid(k)
    return video.untile(frame, rows, cols, k, lh, lw).astype(np.float32) / np.float32((1 << bitdepth) - 1)


def model_folders(kind: str = "autotiler") -> list[Path]:
    """Folders holding trained models of `kind` (one sub-folder per model), searched in this order."""
    folders = [Path(p) for p in os.environ.get("FEATCODEC_MODELS", "").split(os.pathsep) if p]
    folders.append(Path(__file__).resolve().parents[2] / "models" / kind)
    folders.append(Path.cwd() / "models" / kind)
    return folders


def available_models() -> dict[str, Path]:
    """Model name → folder, for every auto-tiler manifest of this format found (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in model_folders():
        if folder.is_dir():
            for manifest in sorted(folder.glob("*/manifest.json")):
                try:
                    content = json.loads(manifest.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if content.get("kind") == "autotiler" and content.get("format") == MANIFEST_FORMAT:
                    found.setdefault(content.get("name", manifest.parent.name), manifest.parent)
    return found


def _offered(entry: dict) -> list[int]:
    return sorted(int(r) for r in entry["exits"])


def training_seconds(manifest: dict) -> float:
    """Seconds of training phases a model's manifest records, over its first run and every extension."""
    training = manifest.get("training", {})
    return training.get("seconds", 0) + sum(e.get("seconds", 0) for e in training.get("extensions", []))


def describe_models() -> list[str]:
    """What `featcodec models` prints: per model, each layer it serves, the ratios on offer and
    how they are built, with the size of the files each exit needs."""
    lines = []
    for name, folder in sorted(available_models().items()):
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
        total = sum(f["bytes"] for f in files.values())
        training = manifest.get("training", {})
        seconds = training_seconds(manifest)
        lines.append(f"{name} (codec autotiler, {folder}): {len(files)} ONNX files, {total / 1e6:.2f} MB"
                     + (f"; trained in {seconds / 60:.0f} min on {training.get('dump')}" if seconds else ""))
        for layer, entry in manifest["layers"].items():
            c, h, w = entry["shape"]
            lines.append(f"  {layer} {entry['tensor']} {tuple(entry['shape'])}: "
                         f"{', '.join(f'CR{r}' for r in _offered(entry))}; {entry.get('structure', '')}")
            for ratio in _offered(entry):
                ex = entry["exits"][str(ratio)]
                stride, k = ex["stride"], ex["latent_channels"]
                rows, cols, _ = video.tile_grid(k)
                enc = sum(files[f]["bytes"] for f in ex["encoder"])
                dec = sum(files[f]["bytes"] for f in ex["decoder"])
                via = f" through {ex['core']}'s shared core" if ex.get("core") else ""
                lines.append(f"    CR{ratio}: real ratio {ex['ratio']:.2f}x{via}, {k} latent maps of "
                             f"{-(-h // stride)}x{-(-w // stride)} tiled {rows}x{cols} into one "
                             f"{rows * -(-h // stride)}x{cols * -(-w // stride)} frame; encoder "
                             f"{' + '.join(ex['encoder'])} ({enc / 1e3:.0f} kB), decoder "
                             f"{' + '.join(ex['decoder'])} ({dec / 1e3:.0f} kB)")
            shared = _storage(manifest, layer)
            if shared[1]:
                lines.append(f"    storage: {shared[0] / 1e6:.2f} MB used by this layer alone, "
                             f"{shared[1] / 1e6:.2f} MB shared with other layers "
                             "(a core and its compatibility autoencoders)")
    return lines


def _storage(manifest: dict, layer: str) -> tuple[int, int]:
    """Bytes of the files `layer`'s exits need that no other layer's exit uses, and of those it
    shares (a compatibility autoencoder's core)."""
    def used(key):
        return {f for ex in manifest["layers"][key]["exits"].values() for f in (*ex["encoder"], *ex["decoder"])}

    mine = used(layer)
    others = set().union(*(used(k) for k in manifest["layers"] if k != layer))
    size = lambda names: sum(manifest["files"][f]["bytes"] for f in names)  # noqa: E731
    return size(mine - others), size(mine & others)


class AutoTiler(VideoCodec):
    """Auto-tiler encoder (onnxruntime) → latent maps tiled into one frame → HEVC → decoder.

    Parameters: ``cr`` (the element ratio: the bottleneck holds C·H·W/cr values; `featcodec
    models` lists those on offer), ``model`` (a model name), ``layer`` (which of the model's
    layers; default: the one whose shape matches), and the HEVC rate options of `VideoCodec`
    (``qp``, ``kbpi``, ``lossless``, ``bitdepth``, ``preset``).
    """

    codec_id = "autotiler"
    params = (
        Param("cr", int, "Compression ratio: the map holds C·H·W/N values (see `featcodec models`)."),
        Param("model", str, "Model name (see `featcodec models`)."),
        Param("layer", str, "Which of the model's layers (default: the one of the input's shape).", cli=False),
        *(p for p in HEVC_PARAMS if p.name != "norm"),  # latents are in [0, 1] already
    )
    rate_points = {
        "paper": [("default", {}), ("cr16", {"cr": 16})]
        + [(f"cr{cr},kbpi={k}", {"cr": cr, "kbpi": k}) for cr in (4, 16) for k in KBPI_BASES]
        + [(f"cr{cr},lossless", {"cr": cr, "lossless": True}) for cr in (4, 16)]
        # low rates: the models that offer CR64 (S4 of the reference model); others are skipped
        + [(f"cr64,kbpi={k}", {"cr": 64, "kbpi": k}) for k in KBPI_BASES[:3]]
        + [("cr64,lossless", {"cr": 64, "lossless": True})]
        # the compatibility exits (S2 of the reference model, through S1's shared core)
        + [(f"cr{cr},kbpi={k}", {"cr": cr, "kbpi": k}) for cr in (12, 48) for k in KBPI_BASES]
        + [(f"cr{cr},lossless", {"cr": cr, "lossless": True}) for cr in (12, 48)],
        "quick": [("default", {}), ("cr16", {"cr": 16})],
    }

    def __init__(self, cr: int = 4, model: str = DEFAULT_MODEL, layer: str | None = None, qp: int | None = None,
                 kbpi: float | None = None, lossless: bool = False, bitdepth: int = 8, preset: str = "medium",
                 gop: int = 1):
        super().__init__(qp=qp, kbpi=kbpi, lossless=lossless, bitdepth=bitdepth, norm="tensor", preset=preset,
                         gop=gop)
        if isinstance(cr, bool) or not isinstance(cr, int) or cr < 2:
            raise InvalidInputError(f"autotiler --cr must be an integer compression ratio ≥ 2, got {cr!r}")
        self.cr = cr
        self.model = model
        self.layer = layer
        self._folder: Path | None = None
        self._manifest = None
        self._sessions: dict[str, object] = {}
        self._layers_coded: set[str] = set()

    # --- models ---------------------------------------------------------------------------

    @classmethod
    def describe_models(cls) -> list[str]:
        lines = describe_models()
        if not lines:
            folders = ", ".join(str(f) for f in model_folders())
            raise MissingModelError(f"no auto-tiler model found (looked in {folders}; set FEATCODEC_MODELS)")
        return lines

    @classmethod
    def side_info_rows(cls, infos):
        """The real element ratio and the bottleneck map each sample records."""
        coded = [s for s in infos if isinstance(s.get("ratio"), (int, float)) and isinstance(s.get("map"), list)]
        if not coded:  # `info` reads files before any validation: show only what is well formed
            return []
        ratios = sorted({round(float(s["ratio"]), 3) for s in coded})
        maps = sorted({"x".join(str(v) for v in s["map"]) for s in coded})
        latent = coded[0].get("latent")
        return [("bottleneck", f"element ratio {', '.join(f'{r:g}' for r in ratios)}: {latent[0]} latent maps tiled "
                               f"into one {', '.join(maps)} frame" if isinstance(latent, list) and latent
                 else f"ratio {ratios}")]

    @property
    def folder(self) -> Path:
        if self._folder is None:  # found once: the search reads every manifest on disk
            models = available_models()
            if self.model not in models:
                known = ", ".join(sorted(models)) or "none found"
                raise MissingModelError(f"no auto-tiler model {self.model!r} (available: {known}; "
                                        "see `featcodec models`)")
            self._folder = models[self.model]
        return self._folder

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = json.loads((self.folder / "manifest.json").read_text())
        return self._manifest

    def _entry(self, shape: tuple[int, int, int]) -> tuple[str, dict, dict]:
        """(layer key, layer entry, exit entry) serving a sample of `shape` at this codec's ratio."""
        layers = self.manifest["layers"]
        if self.layer is not None:
            matches = [k for k, v in layers.items() if self.layer in (k, v["tensor"])]
        else:
            matches = [k for k, v in layers.items() if tuple(v["shape"]) == tuple(shape)]
            if not matches:  # fully convolutional: another spatial size of a known channel count
                matches = [k for k, v in layers.items() if v["shape"][0] == shape[0]]
        served = "; ".join(f"{k} {tuple(v['shape'])} at {', '.join(f'CR{r}' for r in _offered(v))}"
                           for k, v in layers.items())
        if len(matches) != 1 or layers[matches[0]]["shape"][0] != shape[0]:
            what = f"layer {self.layer!r}" if self.layer else f"{shape[0]} channels"
            hint = "; name one with --layer" if len(matches) > 1 else ""
            raise InvalidInputError(f"auto-tiler model {self.model!r} serves no tensor of shape {tuple(shape)} "
                                    f"({what}{hint}); it serves {served}")
        key = matches[0]
        entry = layers[key]
        exit_entry = entry["exits"].get(str(self.cr))
        if exit_entry is None:
            raise InvalidInputError(f"auto-tiler model {self.model!r} offers no CR{self.cr} for layer {key}; "
                                    f"ratios on offer: {', '.join(str(r) for r in _offered(entry))}")
        return key, entry, exit_entry

    def _session(self, filename: str):
        if filename not in self._sessions:
            from ..onnxmodel import session, sha256_file

            path = self.folder / filename
            record = self.manifest["files"].get(filename)
            if not path.exists() or record is None:
                raise MissingModelError(f"auto-tiler model file {path} is missing")
            if sha256_file(path) != record["sha256"]:
                raise MissingModelError(f"{path} does not match the sha256 in its manifest")
            self._sessions[filename] = session(str(path), self.threads)
        return self._sessions[filename]

    def _run(self, files: list[str], x: np.ndarray) -> np.ndarray:
        for filename in files:
            x = self._session(filename).run(None, {"input": x})[0]
        return x

    def models(self) -> list[dict[str, str]]:
        """Every ONNX file of the encoder and decoder paths used so far (decoding checks them all)."""
        layers = self.manifest["layers"] if self._layers_coded else {}
        used = {f for key in self._layers_coded for side in ("encoder", "decoder")
                for f in layers[key]["exits"][str(self.cr)][side]}
        files = self.manifest["files"] if used else {}
        return [{"name": f"{self.model}/{f}", "sha256": files[f]["sha256"]} for f in sorted(used)]

    def verify_models(self, records: list[dict]) -> None:
        """Refuse to decode with model files whose sha256 differs from what the encoder used."""
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
    def _latent_shape(shape, exit_entry) -> tuple[int, int, int]:
        stride, k = int(exit_entry["stride"]), int(exit_entry["latent_channels"])
        return k, -(-shape[1] // stride), -(-shape[2] // stride)

    def latent_frame(self, sample: np.ndarray) -> tuple[np.ndarray, dict]:
        """The network's half of `encode`: the (H', W') integer frame of tiled latent maps that HEVC
        codes, and the side information that describes it."""
        key, _, exit_entry = self._entry(sample.shape)
        self._layers_coded.add(key)
        k, lh, lw = self._latent_shape(sample.shape, exit_entry)
        stride = int(exit_entry["stride"])
        with self.stage("normalise"):
            pad = ((0, 0), (0, lh * stride - sample.shape[1]), (0, lw * stride - sample.shape[2]))
            x = np.pad(sample, pad, mode="edge")[None].astype(np.float32)
        with self.stage("nn_encode"):
            latent = self._run(exit_entry["encoder"], x)[0]
        if latent.shape != (k, lh, lw):
            raise MissingModelError(f"encoder of {self.model}/{key} CR{self.cr} gave {latent.shape}, "
                                    f"its manifest says {(k, lh, lw)}")
        with self.stage("normalise"):
            frame = latent_to_frame(latent, self.bitdepth)
        ratio = sample.size / latent.size
        return frame, {"layer": key, "latent": [k, lh, lw], "map": list(frame.shape), "ratio": ratio}

    def to_frames(self, sample):
        frame, info = self.latent_frame(sample)
        return frame[None], info

    def validate(self, shape, info):
        side_ints(info, "frame", 3)  # latents are in [0, 1]: no range to check
        key, _, exit_entry = self._entry(tuple(shape))
        if info.get("layer") != key:
            raise CorruptStreamError(f"sample was coded for layer {info.get('layer')!r}, the model serves {key!r}")
        k, lh, lw = self._latent_shape(shape, exit_entry)
        rows, cols, _ = video.tile_grid(k)
        if info.get("latent") != [k, lh, lw] or info.get("map") != [rows * lh, cols * lw]:
            raise CorruptStreamError(f"latent {info.get('latent')} / map {info.get('map')} do not fit CR{self.cr} "
                                     f"of {tuple(shape)} ({k} maps of {lh}x{lw} in a {rows}x{cols} grid)")

    def frame_dims(self, shape, info):
        _, _, exit_entry = self._entry(tuple(shape))
        k, lh, lw = self._latent_shape(shape, exit_entry)
        rows, cols, _ = video.tile_grid(k)
        return 1, rows * lh, cols * lw

    def from_frames(self, frames, shape, info):
        _, _, exit_entry = self._entry(tuple(shape))
        with self.stage("denormalise"):
            latent = frame_to_latent(frames[0], self._latent_shape(shape, exit_entry), self.bitdepth)[None]
        with self.stage("nn_decode"):
            x = self._run(exit_entry["decoder"], latent)[0]
        return np.ascontiguousarray(x[:, : shape[1], : shape[2]], dtype=np.float32)
