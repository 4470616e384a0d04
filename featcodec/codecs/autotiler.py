"""``autotiler``: an autoencoder tiles the channels into ONE map, which HEVC codes directly.

The method of Park, Kim & Ko ("Auto-Tiler", Sensors 2021). A trained model
(``models/autotiler/<name>/manifest.json`` plus ONNX files, see `featcodec.train.autotiler`) has
a core auto-tiler for the smallest split layer and compatibility autoencoders for the others.
``cr=4`` or ``cr=16`` names the exit, as in the paper: the map is (1, 2H, 2W) or (1, H, W) for a
(C, H, W) layer, so the real ratio is C/4 or C, and is recorded per sample with the layer, the
map size and the rate used. The header lists every ONNX file with its sha256; decoding refuses
a file whose hash differs. Networks run with onnxruntime; torch is never imported.

Models are looked for in ``$FEATCODEC_MODELS`` (folders separated by ``os.pathsep``), the
``models/autotiler`` folder of the featcodec source tree, and ``./models/autotiler``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError, MissingModelError
from .video_base import VideoCodec

DEFAULT_MODEL = "centernet_mbv3"


def model_folders() -> list[Path]:
    folders = [Path(p) for p in os.environ.get("FEATCODEC_MODELS", "").split(os.pathsep) if p]
    folders.append(Path(__file__).resolve().parents[2] / "models" / "autotiler")
    folders.append(Path.cwd() / "models" / "autotiler")
    return folders


def available_models() -> dict[str, Path]:
    """Model name → folder, for every manifest found (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in model_folders():
        if folder.is_dir():
            for manifest in sorted(folder.glob("*/manifest.json")):
                try:
                    name = json.loads(manifest.read_text()).get("name", manifest.parent.name)
                except (OSError, json.JSONDecodeError):
                    continue
                found.setdefault(name, manifest.parent)
    return found


def describe_models() -> list[str]:
    """One line per model and layer it serves: what `featcodec models` prints."""
    lines = []
    for name, folder in sorted(available_models().items()):
        manifest = json.loads((folder / "manifest.json").read_text())
        for layer, entry in manifest["layers"].items():
            ratios = ", ".join(f"{k.upper()} {v:g}x" for k, v in entry["compression_ratio"].items())
            lines.append(f"{name}: {layer} {entry['tensor']} {tuple(entry['shape'])} ({ratios})")
    return lines


class AutoTiler(VideoCodec):
    """Auto-tiler encoder (onnxruntime) → one map → HEVC → auto-tiler decoder.

    Parameters: ``cr`` (4 or 16, the exit), ``model`` (a model name, see `featcodec models`),
    ``layer`` (which of the model's layers; default: the one whose channel count matches), and
    the HEVC rate options of `VideoCodec` (``qp``, ``kbpi``, ``lossless``, ``bitdepth``, ``preset``).
    """

    codec_id = "autotiler"

    def __init__(self, cr: int = 4, model: str = DEFAULT_MODEL, layer: str | None = None, qp: int | None = None,
                 kbpi: float | None = None, lossless: bool = False, bitdepth: int = 8, preset: str = "medium"):
        super().__init__(qp=qp, kbpi=kbpi, lossless=lossless, bitdepth=bitdepth, norm="tensor", preset=preset)
        if cr not in (4, 16):
            raise InvalidInputError(f"autotiler --cr must be 4 or 16 (the model's exits), got {cr!r}")
        self.cr = cr
        self.model = model
        self.layer = layer
        self._folder: Path | None = None
        self._manifest = None
        self._sessions: dict[str, object] = {}
        self._layers_coded: set[str] = set()

    # --- models ---------------------------------------------------------------------------

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

    def _entry(self, shape: tuple[int, int, int]) -> tuple[str, dict]:
        layers = self.manifest["layers"]
        if self.layer is not None:
            matches = [k for k, v in layers.items() if self.layer in (k, v["tensor"])]
        else:
            matches = [k for k, v in layers.items() if v["shape"][0] == shape[0]]
        if len(matches) != 1 or layers[matches[0]]["shape"][0] != shape[0]:
            served = "; ".join(describe_models()) or "none"
            what = f"layer {self.layer!r}" if self.layer else f"{shape[0]} channels"
            raise InvalidInputError(f"auto-tiler model {self.model!r} serves no tensor of shape {tuple(shape)} "
                                    f"({what}); available: {served}")
        return matches[0], layers[matches[0]]

    def _session(self, filename: str):
        if filename not in self._sessions:
            from ..onnxmodel import session, sha256_file

            path = self.folder / filename
            record = self.manifest["files"].get(filename)
            if not path.exists() or record is None:
                raise MissingModelError(f"auto-tiler model file {path} is missing")
            if sha256_file(path) != record["sha256"]:
                raise MissingModelError(f"{path} does not match the sha256 in its manifest")
            self._sessions[filename] = session(str(path))
        return self._sessions[filename]

    def _run(self, files: list[str], x: np.ndarray) -> np.ndarray:
        for filename in files:
            x = self._session(filename).run(None, {"input": x})[0]
        return x

    def models(self) -> list[dict[str, str]]:
        """Every ONNX file of the encoder and decoder paths used so far (decoding checks them all)."""
        if not self._layers_coded:
            return []
        exit_name = f"cr{self.cr}"
        layers = self.manifest["layers"]
        used = {f for key in self._layers_coded for side in ("encoder", "decoder")
                for f in layers[key][side][exit_name]}
        files = self.manifest["files"]
        return [{"name": f"{self.model}/{f}", "sha256": files[f]["sha256"]} for f in sorted(used)]

    def verify_models(self, records: list[dict]) -> None:
        """Refuse to decode with model files whose sha256 differs from what the encoder used."""
        files = self.manifest["files"]
        for record in records:
            name = str(record.get("name", "")).split("/", 1)[-1]
            if name not in files:
                raise MissingModelError(f"the file needs model file {record.get('name')}, not in model {self.model!r}")
            if files[name]["sha256"] != record.get("sha256"):
                have, wanted = files[name]["sha256"][:12], str(record.get("sha256"))[:12]
                raise MissingModelError(f"model file {record.get('name')} differs from the one the file was encoded "
                                        f"with (sha256 {have}… ≠ {wanted}…)")

    # --- coding ---------------------------------------------------------------------------

    def encode(self, sample):
        key, entry = self._entry(sample.shape)
        self._layers_coded.add(key)
        exit_name = f"cr{self.cr}"
        norm = entry["normalisation"]
        with self.stage("normalise"):
            mean = np.asarray(norm["mean"], np.float32)[:, None, None]
            std = np.asarray(norm["std"], np.float32)[:, None, None]
            x = ((sample - mean) / std)[None].astype(np.float32)
        with self.stage("nn_encode"):
            bottleneck = self._run(entry["encoder"][exit_name], x)[0, 0]
        with self.stage("normalise"):
            top = (1 << self.bitdepth) - 1
            frame = np.clip(np.rint(bottleneck * top), 0, top).astype(np.uint16 if self.bitdepth > 8 else np.uint8)
        stream, video_info = self._code_frames(frame[None])
        ratio = sample.size / bottleneck.size
        return stream, {**video_info, "layer": key, "map": list(bottleneck.shape), "autoencoder_cr": ratio}

    def decode(self, payload, shape, info):
        key, entry = self._entry(tuple(shape))
        if info.get("layer") != key:
            raise CorruptStreamError(f"sample was coded for layer {info.get('layer')!r}, the model serves {key!r}")
        try:
            height, width = (int(v) for v in info["map"])
        except (KeyError, TypeError, ValueError):
            raise CorruptStreamError("auto-tiler side information lacks the map size") from None
        expected = (2 * shape[1], 2 * shape[2]) if self.cr == 4 else (shape[1], shape[2])
        if (height, width) != expected:
            raise CorruptStreamError(f"map size {height}x{width} does not fit CR{self.cr} of {tuple(shape)}")
        frame = self._decode_frames(payload, info, 1, height, width)[0]
        with self.stage("denormalise"):
            bottleneck = frame.astype(np.float32)[None, None] / np.float32((1 << self.bitdepth) - 1)
        with self.stage("nn_decode"):
            x = self._run(entry["decoder"][f"cr{self.cr}"], bottleneck)[0]
        with self.stage("denormalise"):
            norm = entry["normalisation"]
            return (x * np.asarray(norm["std"], np.float32)[:, None, None]
                    + np.asarray(norm["mean"], np.float32)[:, None, None]).astype(np.float32)
