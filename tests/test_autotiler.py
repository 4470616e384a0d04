"""Auto-tiler: training smoke test, ONNX export, the real compression ratio, model checks."""

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.codecs.autotiler import available_models, describe_models, exit_layout
from featcodec.errors import InvalidInputError, MissingModelError
from featcodec.video import RateWarning

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "reference_demo.h5"
REFERENCE = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model trained here, in seconds, on a tiny synthetic dump (skipped without torch)."""
    pytest.importorskip("torch")
    from featcodec.train.autotiler import train_autotiler

    root = tmp_path_factory.mktemp("autotiler")
    rng = np.random.default_rng(0)
    smooth = lambda c: np.cumsum(np.maximum(rng.normal(0, 1, (6, c, 32, 32)), 0), axis=-1).astype(np.float32)  # noqa: E731
    with h5py.File(root / "dump.h5", "w") as f:
        f.create_dataset("small", data=smooth(8)).attrs["layer"] = "small:0"
        f.create_dataset("large", data=smooth(16) - 3).attrs["layer"] = "large:0"
    config = _tiny_config(steps=8, task_steps=0)
    manifest = train_autotiler(str(root / "dump.h5"), ["small", "large"], str(root / "models" / "tiny"), name="tiny",
                               config=config, log=lambda line: None)
    return root / "models", manifest


def _tiny_config(**params):
    """A training configuration small enough for a test: 16 x 16 crops, width 8, batches of 2."""
    from featcodec.train.autotiler import TrainingConfig

    return TrainingConfig(batch=2, crop=16, width=8, valid_fraction=0.2, **params)


def _model_copy(tiny_model, to: Path) -> Path:
    """A copy of the tiny model's folder at `to` (without its checkpoints), for a test to change."""
    shutil.copytree(tiny_model[0] / "tiny", to, ignore=shutil.ignore_patterns(".checkpoints"))
    return to


def _contents(folder: Path, names) -> dict:
    """File name → bytes, to show files were kept byte for byte."""
    return {f: (folder / f).read_bytes() for f in names}


def test_exit_layout_holds_the_real_ratio():
    for channels in (24, 72, 128, 3, 256):
        for ratio in (4, 16):
            steps, latent = exit_layout(channels, ratio)
            assert latent * (128 // 2 ** steps) ** 2 * ratio == channels * 128 * 128
    assert exit_layout(24, 8) == (2, 48)
    with pytest.raises(InvalidInputError, match="does not divide 3 channels"):
        exit_layout(3, 5)


def test_training_exports_loadable_onnx(tiny_model):
    import onnxruntime

    folder, manifest = tiny_model
    assert manifest["format"] == 2 and set(manifest["layers"]) == {"small", "large"}
    large = manifest["layers"]["large"]
    assert large["nonnegative"] is False and manifest["layers"]["small"]["nonnegative"] is True
    assert {r: (e["stride"], e["latent_channels"], e["ratio"]) for r, e in large["exits"].items()} == \
        {"4": (2, 16, 4.0), "16": (4, 16, 16.0)}
    assert large["exits"]["16"]["encoder"] == ["large_enc4.onnx", "large_enc16.onnx"]  # the cascade
    assert [p["name"] for p in manifest["training"]["phases"]] == [
        "small CR4 MSE", "small CR16 MSE", "large CR4 MSE", "large CR16 MSE"]
    for filename, record in manifest["files"].items():
        session = onnxruntime.InferenceSession(str(folder / "tiny" / filename))
        assert session.get_inputs()[0].name == "input"
        assert len(record["sha256"]) == 64
    # ReLU layers decode through a final ReLU: exact zeros stay zeros, nothing goes negative.
    dec = onnxruntime.InferenceSession(str(folder / "tiny" / "small_dec4.onnx"))
    out = dec.run(None, {"input": np.random.default_rng(0).random((1, 8, 6, 6), np.float32)})[0]
    assert out.shape == (1, 8, 12, 12) and out.min() >= 0


def test_training_resumes_from_checkpoints(tiny_model, tmp_path):
    from featcodec.train.autotiler import train_autotiler

    folder, manifest = tiny_model
    copy = tmp_path / "tiny"
    shutil.copytree(folder / "tiny", copy)
    lines = []
    again = train_autotiler(str(folder.parent / "dump.h5"), ["small", "large"], str(copy), name="tiny",
                            config=_tiny_config(steps=8, task_steps=0), log=lines.append)
    assert sum("resumed" in line for line in lines) == 4
    assert again["files"] == manifest["files"]  # same weights, same ONNX bytes


def test_extend_adds_an_exit_and_keeps_the_others(tiny_model, tmp_path, monkeypatch):
    """--extend loads a model's exits from its ONNX files, keeps them byte for byte, and trains only
    the missing ratio, cascaded on the existing CR4 encoder."""
    from featcodec.train.autotiler import train_autotiler

    folder, manifest = tiny_model
    copy = _model_copy(tiny_model, tmp_path / "models" / "tiny")
    before = _contents(copy, manifest["files"])
    lines = []
    extended = train_autotiler(str(folder.parent / "dump.h5"), ["small"], str(copy), name="tiny",
                               config=_tiny_config(ratios=(4, 64), steps=8, task_steps=0), log=lines.append,
                               extend=True)
    assert any("small CR4: kept from the existing model" in line for line in lines)
    assert _contents(copy, manifest["files"]) == before
    small = extended["layers"]["small"]["exits"]
    assert sorted(small, key=int) == ["4", "16", "64"]  # CR16, not asked for, stays
    assert small["64"]["encoder"] == ["small_enc4.onnx", "small_enc64.onnx"]
    assert set(extended["layers"]["large"]["exits"]) == {"4", "16"}
    assert [p["name"] for p in extended["training"]["extensions"][0]["phases"]] == ["small CR64 MSE"]
    monkeypatch.setenv("FEATCODEC_MODELS", str(copy.parent))
    x = np.random.default_rng(1).random((1, 8, 32, 32)).astype(np.float32)
    header = featcodec.info(featcodec.encode(x, "autotiler", model="tiny", cr=64, lossless=True))
    assert header["samples"][0]["latent"] == [8, 4, 4] and header["samples"][0]["ratio"] == 64.0


def test_compatibility_autoencoders_share_the_core(tiny_model, tmp_path, monkeypatch):
    """The paper's compatibility autoencoders: a larger layer is mapped onto the core layer's
    auto-tiler, whose files are shared (kept byte for byte); each core exit gives the larger layer
    an exit at the core's ratio times the size ratio, coded and decoded through the chain."""
    from featcodec.train.autotiler import train_compatibility

    folder, manifest = tiny_model
    copy = _model_copy(tiny_model, tmp_path / "models" / "tiny")
    before = _contents(copy, manifest["files"])
    config = _tiny_config(steps=8, task_steps=0)
    lines = []
    extended = train_compatibility(str(folder.parent / "dump.h5"), ["large"], str(copy), core="small", name="tiny",
                                   config=config, log=lines.append)
    assert _contents(copy, manifest["files"]) == before  # the core is untouched
    large = extended["layers"]["large"]
    assert sorted(large["exits"], key=int) == ["4", "8", "16", "32"]  # 16 channels onto 8: twice the core's ratio
    eight = large["exits"]["8"]
    assert eight["encoder"] == ["large_compat_enc.onnx", "small_enc4.onnx"]
    assert eight["decoder"] == ["small_dec4.onnx", "large_compat_dec8.onnx"]
    assert large["exits"]["32"]["encoder"] == ["large_compat_enc.onnx", "small_enc4.onnx", "small_enc16.onnx"]
    assert (eight["ratio"], eight["core"]) == (8.0, "small CR4") and "shared core" in large["structure"]
    assert [p["name"] for p in extended["training"]["extensions"][0]["phases"]] == [
        "large CR8 (compatibility, small CR4) MSE", "large CR32 (compatibility, small CR16) MSE"]
    monkeypatch.setenv("FEATCODEC_MODELS", str(copy.parent))
    x = np.random.default_rng(1).normal(0, 1, (1, 16, 32, 32)).astype(np.float32) - 3
    for cr, latent in ((8, [8, 16, 16]), (32, [8, 8, 8])):
        blob = featcodec.encode(x, "autotiler", model="tiny", cr=cr, lossless=True)
        sample = featcodec.info(blob)["samples"][0]
        assert sample["latent"] == latent and sample["ratio"] == cr and sample["layer"] == "large"
        assert featcodec.decode(blob).shape == x.shape
    listing = "\n".join(describe_models()).split("\ntiny (codec autotiler")[1].split("\ncenternet")[0]
    assert "CR8: real ratio 8.00x through small CR4's shared core" in listing
    assert listing.count("shared with other layers") == 2  # the core, and the layer mapped onto it
    # A layer the model had no exit for gets an entry of its own, compatibility exits only.
    alone = _model_copy(tiny_model, tmp_path / "alone" / "tiny")
    trimmed = json.loads((alone / "manifest.json").read_text())
    del trimmed["layers"]["large"]
    (alone / "manifest.json").write_text(json.dumps(trimmed))
    only = train_compatibility(str(folder.parent / "dump.h5"), ["large"], str(alone), core="small", name="tiny",
                               config=_tiny_config(ratios=(16,), steps=8, task_steps=0),
                               log=lines.append)["layers"]["large"]
    assert (only["shape"], only["nonnegative"], sorted(only["exits"])) == ([16, 32, 32], False, ["32"])
    assert only["structure"].startswith("compatibility autoencoders onto small's shared core at CR32")
    monkeypatch.setenv("FEATCODEC_MODELS", str(alone.parent))
    blob = featcodec.encode(x, "autotiler", model="tiny", cr=32, lossless=True)
    assert featcodec.info(blob)["samples"][0]["layer"] == "large" and featcodec.decode(blob).shape == x.shape
    # Retraining the shared compatibility encoder for one exit would leave the other reading the old one.
    with pytest.raises(ValueError, match="compatibility exits CR32 share the encoder"):
        train_compatibility(str(folder.parent / "dump.h5"), ["large"], str(copy), core="small", name="tiny",
                            config=_tiny_config(ratios=(4,), steps=2, task_steps=0), log=lines.append)
    # A core the model lacks, and a layer no larger than the core, are refused.
    with pytest.raises(ValueError, match="no layer nope"):
        train_compatibility(str(folder.parent / "dump.h5"), ["large"], str(copy), core="nope", name="tiny",
                            config=config, log=lines.append)
    with pytest.raises(ValueError, match="not larger than the core"):
        train_compatibility(str(folder.parent / "dump.h5"), ["small"], str(copy), core="large", name="tiny",
                            config=config, log=lines.append)


def test_finetune_decoders_keeps_the_encoders(tiny_model, tmp_path):
    """Decoder fine-tuning leaves every encoder byte for byte (frames coded before still decode,
    cascaded exits still fit) and replaces a decoder only when validation improved; the manifest's
    hashes stay those of the files."""
    import hashlib

    from featcodec.train.autotiler import finetune_decoders

    folder, manifest = tiny_model
    copy = _model_copy(tiny_model, tmp_path / "tiny")
    encoders = _contents(copy, [f for f in manifest["files"] if "_enc" in f])
    lines = []
    tuned = finetune_decoders(str(folder.parent / "dump.h5"), ["small"], str(copy), name="tiny",
                              config=_tiny_config(ratios=(4,), task_steps=30, task_weight=0), log=lines.append)
    assert _contents(copy, encoders) == encoders
    record = tuned["training"]["extensions"][-1]
    assert record["decoders_only"] and [p["name"] for p in record["phases"]] == ["small CR4 decoder MSE"]
    assert record["replaced"] in ([], ["small_dec4.onnx"])
    assert any(("replaced" if record["replaced"] else "kept") in line for line in lines)
    for f, entry in tuned["files"].items():
        assert hashlib.sha256((copy / f).read_bytes()).hexdigest() == entry["sha256"]
    with pytest.raises(ValueError, match="no CR64 exit"):
        finetune_decoders(str(folder.parent / "dump.h5"), ["small"], str(copy), name="tiny",
                          config=_tiny_config(ratios=(4, 64), task_steps=2, task_weight=0), log=lines.append)


def test_finetune_on_hevc_coded_latents(tiny_model, tmp_path):
    """--hevc-rates: a cascaded exit's decoder alone (CR16 without CR4's) trains on latents x265
    really coded, the encoders untouched, and the record says so."""
    from featcodec.train.autotiler import finetune_decoders

    folder, manifest = tiny_model
    copy = _model_copy(tiny_model, tmp_path / "tiny")
    encoders = _contents(copy, [f for f in manifest["files"] if "_enc" in f])
    lines = []
    tuned = finetune_decoders(str(folder.parent / "dump.h5"), ["large"], str(copy), name="tiny",
                              config=_tiny_config(ratios=(16,), task_steps=6, task_weight=0, hevc_rates=(1.0, None)),
                              log=lines.append)
    assert _contents(copy, encoders) == encoders
    record = tuned["training"]["extensions"][-1]
    assert list(record["hevc_rates"]) == [1.0, None]  # (a tuple until the manifest is read back)
    assert [p["name"] for p in record["phases"]] == ["large CR16 decoder MSE on HEVC-coded latents"]
    assert record["replaced"] in ([], ["large_dec16.onnx"])
    assert any(line.startswith("  coded 10 training and 1 validation latents at 1, lossless Kbpi") for line in lines)


def test_coded_latents_crops_line_up():
    """A latent crop and its target crop cover the same part of the map (stride apart)."""
    pytest.importorskip("torch")
    from featcodec.train.autotiler import CodedLatents

    h = w = 32
    targets = np.broadcast_to(np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w), (3, 1, h, w)).copy()
    targets += np.arange(3, dtype=np.float32)[:, None, None, None] * 10_000
    stride = 4
    latents = np.repeat(targets[:, :, ::stride, ::stride], 2, axis=0)  # two copies per map
    pairs = CodedLatents(latents, targets, latents[:2], targets[:2], stride)
    inputs, crops = pairs.batch(np.random.default_rng(1), 16, 16)
    assert inputs.shape == (16, 1, 4, 4) and crops.shape == (16, 1, 16, 16)
    assert np.array_equal(crops[:, :, ::stride, ::stride].numpy(), inputs.numpy())
    valid_inputs, valid_targets = pairs.validation(8)
    assert len(valid_inputs) == len(valid_targets) == 2


def test_small_maps_validate_on_more_of_them(monkeypatch):
    """Early stopping reads 8 large maps but hundreds of a classifier's small ones, and a validation
    weighs every map the same however they are batched."""
    torch = pytest.importorskip("torch")
    from featcodec.train import autotiler
    from featcodec.train.autotiler import LayerData, Normalise, _validate, validation_maps

    def data(c, h, w, n=400):
        maps = np.zeros((n, c, h, w), np.float32)
        return LayerData("x", "x", None, maps[:-n // 2], maps[-n // 2:], np.zeros(c, np.float32),
                         np.ones(c, np.float32), True, n, (c, h, w))

    assert validation_maps(data(72, 128, 128, 4)) == autotiler.VALID_MAPS
    assert validation_maps(data(64, 8, 8)) == autotiler.VALID_VALUES // (64 * 8 * 8) > 200
    targets = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 4, 4).contiguous()
    norm = Normalise(np.zeros(1), np.ones(1))
    per_map = torch.arange(5, dtype=torch.float32) ** 2  # each map's MSE against zeros
    for batch_values in (16, 32, 48, 10_000):  # 1 (→ 2), 2, 3 and all 5 maps per pass
        monkeypatch.setattr(autotiler, "VALID_BATCH_VALUES", batch_values)
        loss, nmse = _validate(lambda x: torch.zeros_like(x), norm, None, (targets, targets))
        assert loss == nmse == pytest.approx(float(per_map.mean()))


def test_early_stopping_waits_for_the_learning_rate_to_come_down():
    """A phase whose validation never improves runs half its steps before patience may end it."""
    torch = pytest.importorskip("torch")
    from featcodec.train.autotiler import LayerData, Normalise, train_phase

    maps = np.ones((6, 1, 8, 8), np.float32)
    data = LayerData("x", "x", None, maps[:4], maps[4:], np.zeros(1, np.float32), np.ones(1, np.float32), True, 6,
                     (1, 8, 8))
    module = torch.nn.Linear(1, 1)
    flat = lambda x: x * 0 + 0 * module.weight.sum()  # noqa: E731  (a loss that never changes)
    result = train_phase("flat", [module], flat, data, Normalise(np.zeros(1), np.ones(1)), steps=40, lr=1e-3,
                         batch=2, crop=8, seed=0, patience=2, every=1)
    assert result.steps == 20



def test_learning_rate_anneals_over_the_steps_or_the_time_whichever_ends_first():
    """A phase its time ends has annealed by then, not only one its steps end."""
    pytest.importorskip("torch")
    from featcodec.train.autotiler import _annealed

    assert _annealed(1.0, 0, 100, 0.0, None) == pytest.approx(1.0)
    assert _annealed(1.0, 50, 100, 0.0, None) == pytest.approx(0.525)  # half way: (1 + 1/20) / 2
    assert _annealed(1.0, 100, 100, 0.0, None) == pytest.approx(0.05)
    # 10 % of the steps, but 90 % of two minutes: the time sets the rate
    assert _annealed(1.0, 10, 100, 108.0, 2.0) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(0.9 * np.pi)))
    assert _annealed(1.0, 10, 100, 500.0, 2.0) == pytest.approx(0.05)  # past the time: the floor
    assert _annealed(1.0, 90, 100, 1.0, 2.0) == _annealed(1.0, 90, 100, 0.0, None)  # steps ahead of the time

def test_a_layer_can_have_its_own_phase_length(tiny_model, tmp_path):
    """--layer-minutes: the layer named runs its phases for its own time (here, one step each),
    the others for --minutes-per-phase (here, none: their steps); the manifest records both."""
    from featcodec.train.autotiler import train_autotiler

    folder, _ = tiny_model
    manifest = train_autotiler(str(folder.parent / "dump.h5"), ["small", "large"], str(tmp_path / "tiny"),
                               name="tiny", config=_tiny_config(steps=8, task_steps=0, layer_minutes={"small": 1e-6}),
                               log=lambda line: None)
    steps = {p["name"]: p["steps"] for p in manifest["training"]["phases"]}
    assert steps == {"small CR4 MSE": 1, "small CR16 MSE": 1, "large CR4 MSE": 8, "large CR16 MSE": 8}
    assert manifest["training"]["layer_minutes"] == {"small": 1e-6}


def test_load_onnx_weights_refuses_another_module(tiny_model):
    from featcodec.train.autotiler import Encoder, load_onnx_weights

    folder, _ = tiny_model
    with pytest.raises(ValueError, match="holds no weight"):
        load_onnx_weights(Encoder(8, 8, 1, 16), folder / "tiny" / "small_enc4.onnx")  # other width


def test_codec_codes_the_real_ratio(tiny_model, monkeypatch):
    folder, _ = tiny_model
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    assert "tiny" in available_models()
    x = np.random.default_rng(1).normal(0, 1, (2, 16, 20, 28)).astype(np.float32)
    for cr, latent, frame in ((4, [16, 10, 14], [40, 56]), (16, [16, 5, 7], [20, 28])):
        blob = featcodec.encode(x, "autotiler", cr=cr, model="tiny", qp=10, preset="ultrafast")
        sample = featcodec.info(blob)["samples"][0]
        assert sample["latent"] == latent and sample["map"] == frame and sample["layer"] == "large"
        assert np.prod(frame) * cr == x[0].size and sample["ratio"] == cr
        models = {m["name"] for m in featcodec.info(blob)["models"]}
        assert models == ({"tiny/large_enc4.onnx", "tiny/large_dec4.onnx"} if cr == 4 else
                          {"tiny/large_enc4.onnx", "tiny/large_enc16.onnx", "tiny/large_dec16.onnx"})
        y = featcodec.decode(blob)
        assert y.shape == x.shape and np.isfinite(y).all()
    # A size the stride does not divide is padded: the ratio reached is a little lower, and recorded.
    odd = featcodec.encode(x[:, :, :18, :26], "autotiler", cr=4, model="tiny", qp=10, preset="ultrafast")
    assert featcodec.info(odd)["samples"][0]["ratio"] == pytest.approx(16 * 18 * 26 / (16 * 9 * 13))
    assert featcodec.decode(odd).shape == (2, 16, 18, 26)


def test_ratio_not_on_offer_lists_those_that_are(tiny_model, monkeypatch, cli):
    folder, _ = tiny_model
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    x = np.ones((1, 16, 8, 8), np.float32)
    with pytest.raises(InvalidInputError, match="offers no CR8 for layer large; ratios on offer: 4, 16"):
        featcodec.encode(x, "autotiler", cr=8, model="tiny")
    with pytest.raises(InvalidInputError, match="integer compression ratio"):
        featcodec.get_codec("autotiler", cr=1)
    out = cli("models", check=True).stdout.decode()
    assert "tiny (codec autotiler" in out and "large large:0 (16, 32, 32): CR4, CR16; dedicated" in out
    assert "CR16: real ratio 16.00x, 16 latent maps of 8x8 tiled 4x4 into one 32x32 frame" in out


def test_tampered_model_refused(tiny_model, monkeypatch, tmp_path):
    folder, _ = tiny_model
    copy = tmp_path / "models"
    shutil.copytree(folder, copy)
    monkeypatch.setenv("FEATCODEC_MODELS", str(copy))
    x = np.ones((1, 8, 8, 8), np.float32)
    blob = featcodec.encode(x, "autotiler", model="tiny", qp=20, preset="ultrafast")
    manifest_path = copy / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["small_dec4.onnx"]["sha256"] = "0" * 64  # as if the model had been retrained
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MissingModelError, match="differs from the one the file was encoded with"):
        featcodec.decode(blob)
    shutil.copytree(folder, tmp_path / "intact")
    monkeypatch.setenv("FEATCODEC_MODELS", str(tmp_path / "intact"))
    with open(tmp_path / "intact" / "tiny" / "small_dec4.onnx", "ab") as f:
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


def test_unreachable_rate_is_said_and_the_real_rate_recorded(cli, tmp_path):
    x = np.random.default_rng(0).random((1, 4, 8, 8), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blob = featcodec.encode(x, "tiling", kbpi=500, preset="ultrafast")
    assert any(issubclass(w.category, RateWarning) and "not reachable" in str(w.message) for w in caught)
    kbits = featcodec.info(blob)["samples"][0]["kbits"]
    assert kbits < 250  # what was really spent, far from the target
    np.save(tmp_path / "x.npy", x)
    result = cli("encode", tmp_path / "x.npy", "-m", "tiling", "--kbpi", "500", "--preset", "ultrafast")
    assert result.returncode == 0
    assert result.stderr.decode().startswith("Warning: HEVC target 500 kbits not reachable within 10 %: at CRF 0")


def test_torch_tail_matches_onnxruntime():
    pytest.importorskip("torch")
    from featcodec.train.tail import check_against_onnxruntime

    with h5py.File(DEMO) as f:
        for layer in ("S1", "S4"):
            x = np.ascontiguousarray(f[layer][:1], np.float32)
            # box maps reach a few hundred pixels: 1e-2 absolute is float32 rounding
            assert check_against_onnxruntime(str(REFERENCE), layer, ["tower_0/keypoints", "tower_0/wh"], x) < 1e-2


def test_train_cli_bad_inputs(cli, tmp_path):
    pytest.importorskip("torch")
    result = cli("train", tmp_path / "missing.h5", "--layer", "S1", "-o", tmp_path / "m")
    assert result.returncode != 0 and result.stderr.decode().startswith("Error: no such file")
    result = cli("train", DEMO, "--layer", "S2", "--core", "S1", "--extend", "-o", tmp_path / "m")
    assert result.returncode != 0 and "give one of --extend, --core and --finetune-decoders" in result.stderr.decode()
    result = cli("train", DEMO, "--layer", "S2", "--hevc-rates", "60", "-o", tmp_path / "m")
    assert result.returncode != 0 and "--hevc-rates goes with --finetune-decoders" in result.stderr.decode()
    result = cli("train", DEMO, "--layer", "S2", "--encoder", "light", "-o", tmp_path / "m")
    assert result.returncode != 0 and "--from-learned and --encoder go with --rate-lambda" in result.stderr.decode()
    for bad in ("60,fast", "0", "inf"):
        result = cli("train", DEMO, "--layer", "S2", "--finetune-decoders", "--hevc-rates", bad, "-o", tmp_path / "m")
        assert result.returncode != 0 and "--hevc-rates" in result.stderr.decode()
    for bad, message in (("S1", "not LAYER=MINUTES"), ("S1=0", "minutes must be positive"),
                         ("S4=5", "S4 is not one of the --layer given")):
        result = cli("train", DEMO, "--layer", "S1", "--layer-minutes", bad, "-o", tmp_path / "m")
        assert result.returncode != 0 and message in result.stderr.decode()
    result = cli("train", DEMO, "--layer", "S7", "-o", tmp_path / "m")
    assert result.stderr.decode().startswith("Error: ") and "no (N, C, H, W) dataset 'S7'" in result.stderr.decode()
