"""Auto-tiler: training smoke test, ONNX export, the codec, model checks."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.codecs.autotiler import available_models
from featcodec.errors import InvalidInputError, MissingModelError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "reference_demo.h5"
SHIPPED = ROOT / "models" / "autotiler" / "centernet_mbv3"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model trained here, in seconds, on a tiny synthetic dump (skipped without torch)."""
    pytest.importorskip("torch")
    from featcodec.train.autotiler import train_autotiler

    root = tmp_path_factory.mktemp("autotiler")
    rng = np.random.default_rng(0)
    smooth = lambda c: np.cumsum(np.maximum(rng.normal(0, 1, (6, c, 24, 24)), 0), axis=-1).astype(np.float32)  # noqa: E731
    with h5py.File(root / "dump.h5", "w") as f:
        f.create_dataset("small", data=smooth(8)).attrs["layer"] = "small:0"
        f.create_dataset("large", data=smooth(16)).attrs["layer"] = "large:0"
    manifest = train_autotiler(str(root / "dump.h5"), ["small", "large"], str(root / "models" / "tiny"), name="tiny",
                               steps=8, batch=2, crop=16, log=lambda line: None)
    return root / "models", manifest


def test_training_exports_loadable_onnx(tiny_model):
    import onnxruntime

    folder, manifest = tiny_model
    assert manifest["core_layer"] == "small" and manifest["core_channels"] == 8
    assert manifest["layers"]["large"]["compression_ratio"] == {"cr4": 4.0, "cr16": 16.0}
    assert len(manifest["training"]["phases"]) == 4
    for filename, record in manifest["files"].items():
        session = onnxruntime.InferenceSession(str(folder / "tiny" / filename))
        assert session.get_inputs()[0].name == "input"
        assert len(record["sha256"]) == 64


def test_codec_with_trained_model(tiny_model, monkeypatch):
    folder, _ = tiny_model
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    assert "tiny" in available_models()
    x = np.maximum(np.random.default_rng(1).normal(0, 1, (2, 16, 20, 28)), 0).astype(np.float32)
    for cr, map_shape in ((4, [40, 56]), (16, [20, 28])):
        blob = featcodec.encode(x, "autotiler", cr=cr, model="tiny", qp=10, preset="ultrafast")
        header = featcodec.info(blob)
        assert header["samples"][0]["map"] == map_shape and header["samples"][0]["layer"] == "large"
        assert {m["name"] for m in header["models"]} >= {"tiny/large_compat_enc.onnx", "tiny/core_enc4.onnx"}
        y = featcodec.decode(blob)
        assert y.shape == x.shape and np.isfinite(y).all()


def test_tampered_model_refused(tiny_model, monkeypatch, tmp_path):
    folder, _ = tiny_model
    copy = tmp_path / "models"
    shutil.copytree(folder, copy)
    monkeypatch.setenv("FEATCODEC_MODELS", str(copy))
    x = np.ones((1, 8, 8, 8), np.float32)
    blob = featcodec.encode(x, "autotiler", model="tiny", qp=20, preset="ultrafast")
    manifest_path = copy / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["core_dec4.onnx"]["sha256"] = "0" * 64  # as if the model had been retrained
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MissingModelError, match="differs from the one the file was encoded with"):
        featcodec.decode(blob)
    shutil.copytree(folder, tmp_path / "intact")
    monkeypatch.setenv("FEATCODEC_MODELS", str(tmp_path / "intact"))
    with open(tmp_path / "intact" / "tiny" / "core_dec4.onnx", "ab") as f:
        f.write(b"\0")  # a damaged file on disk, manifest intact
    with pytest.raises(MissingModelError, match="does not match the sha256 in its manifest"):
        featcodec.decode(blob)


def test_unsupported_shape_and_missing_model(tiny_model, monkeypatch):
    folder, _ = tiny_model
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    with pytest.raises(InvalidInputError, match="serves no tensor of shape"):
        featcodec.encode(np.ones((1, 5, 8, 8), np.float32), "autotiler", model="tiny")
    with pytest.raises(MissingModelError, match="no auto-tiler model 'nope'"):
        featcodec.encode(np.ones((1, 8, 8, 8), np.float32), "autotiler", model="nope")
    with pytest.raises(InvalidInputError, match="--cr must be 4 or 16"):
        featcodec.get_codec("autotiler", cr=8)


def test_train_cli_bad_inputs(cli, tmp_path):
    pytest.importorskip("torch")
    result = cli("train", tmp_path / "missing.h5", "--layer", "S1", "-o", tmp_path / "m")
    assert result.returncode != 0 and result.stderr.decode().startswith("Error: no such file")
    result = cli("train", DEMO, "--layer", "S7", "-o", tmp_path / "m")
    assert result.stderr.decode().startswith("Error: ") and "no (N, C, H, W) dataset 'S7'" in result.stderr.decode()
