"""The learned codec: rate-aware training smoke test, the step as rate control, Kbpi targets, model checks."""

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.codecs.learned import MAX_STEP, MIN_STEP, Learned, available_models, symbol_count
from featcodec.errors import InvalidInputError, MissingModelError
from featcodec.video import RateWarning

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "reference_demo.h5"


@pytest.fixture(scope="module")
def tiny_learned(tmp_path_factory):
    """An auto-tiler trained here in seconds on a tiny dump, then its CR16 exit trained for bits."""
    pytest.importorskip("torch")
    from featcodec.train.autotiler import TrainingConfig, train_autotiler
    from featcodec.train.learned import RateConfig, train_learned

    root = tmp_path_factory.mktemp("learned")
    rng = np.random.default_rng(0)
    maps = np.cumsum(np.maximum(rng.normal(0, 1, (8, 8, 24, 24)), 0), axis=-1).astype(np.float32)
    with h5py.File(root / "dump.h5", "w") as f:
        f.create_dataset("small", data=maps).attrs["layer"] = "small:0"
    models = root / "models"
    train_autotiler(str(root / "dump.h5"), ["small"], str(models / "tinytiler"), name="tinytiler",
                    config=TrainingConfig(batch=2, crop=16, width=8, valid_fraction=0.25, steps=8, task_steps=0),
                    log=lambda line: None)
    mp = pytest.MonkeyPatch()
    mp.setenv("FEATCODEC_MODELS", str(models))
    config = RateConfig(base="tinytiler", ratio=16, lam=0.01, steps=6, every=3, batch=2, crop=16, width=8,
                        valid_fraction=0.25)
    manifest = train_learned(str(root / "dump.h5"), "small", str(models / "tinyrate"), name="tinyrate",
                             config=config, log=lambda line: None)
    yield models, manifest, maps
    mp.undo()


def test_training_writes_a_manifest_the_codec_reads(tiny_learned):
    models, manifest, _ = tiny_learned
    assert manifest["kind"] == "learned" and available_models()["tinyrate"] == models / "tinyrate"
    entry = manifest["layers"]["small"]
    assert entry["stride"] == 4 and entry["latent_channels"] == 8 and entry["start"] == "tinytiler small CR16"
    training = manifest["training"]["small"]
    assert training["steps_run"] == 6 and training["lam"] == 0.01 and len(training["history"]) == 3
    assert training["validation"]["best"]["loss"] <= training["validation"]["start"]["loss"]
    for name, record in manifest["files"].items():
        assert (models / "tinyrate" / name).stat().st_size == record["bytes"]
    assert any(line.startswith("tinyrate (codec learned") for line in Learned.describe_models())


def test_training_resumes_from_its_checkpoint(tiny_learned, tmp_path):
    from featcodec.train.learned import RateConfig, train_learned

    models, manifest, _ = tiny_learned
    copy = tmp_path / "tinyrate"
    shutil.copytree(models / "tinyrate", copy)
    lines = []
    config = RateConfig(base="tinytiler", ratio=16, lam=0.01, steps=9, every=3, batch=2, crop=16, width=8,
                        valid_fraction=0.25)
    again = train_learned(str(models.parent / "dump.h5"), "small", str(copy), name="tinyrate", config=config,
                          log=lines.append)
    assert any("resumed from small_learned.pt at step 6" in line for line in lines)
    assert again["training"]["small"]["steps_run"] == 9


def test_the_step_is_the_rate_control(tiny_learned):
    _, _, maps = tiny_learned
    x = maps[:2]
    sizes = []
    for step in (MIN_STEP, 1 / 7, 1 / 3, MAX_STEP):
        blob = featcodec.encode(x, "learned", model="tinyrate", step=step)
        header = featcodec.info(blob)
        assert [s["step"] for s in header["samples"]] == [step, step]
        assert header["models"][0]["name"].startswith("tinyrate/small_")
        decoded = featcodec.decode(blob)
        assert decoded.shape == x.shape and np.isfinite(decoded).all()
        sizes.append(header["payload_bytes"])
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]
    assert (symbol_count(MIN_STEP), symbol_count(MAX_STEP)) == (16, 3)


def test_a_kbpi_target_is_met_within_ten_percent(tiny_learned):
    _, _, maps = tiny_learned
    x = maps[:1]
    fine = featcodec.info(featcodec.encode(x, "learned", model="tinyrate", step=MIN_STEP))["payload_bytes"]
    coarse = featcodec.info(featcodec.encode(x, "learned", model="tinyrate", step=MAX_STEP))["payload_bytes"]
    target = (fine + coarse) / 2 * 8 / 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error", RateWarning)
        header = featcodec.info(featcodec.encode(x, "learned", model="tinyrate", kbpi=target))
    got = header["payload_bytes"] * 8 / 1000
    assert abs(got - target) <= 0.1 * target and MIN_STEP < header["samples"][0]["step"] < MAX_STEP
    with pytest.warns(RateWarning, match="cannot be spent even at the finest step"):
        featcodec.encode(x, "learned", model="tinyrate", kbpi=fine * 8 / 1000 * 3)


def test_a_changed_model_file_is_refused(tiny_learned, tmp_path, monkeypatch):
    models, manifest, maps = tiny_learned
    blob = featcodec.encode(maps[:1], "learned", model="tinyrate")
    copy = tmp_path / "models" / "tinyrate"
    shutil.copytree(models / "tinyrate", copy, ignore=shutil.ignore_patterns(".checkpoints"))
    changed = json.loads((copy / "manifest.json").read_text())
    decoder = changed["layers"]["small"]["decoder"]
    changed["files"][decoder]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(changed))
    monkeypatch.setenv("FEATCODEC_MODELS", str(tmp_path / "models"))
    with pytest.raises(MissingModelError, match="differs from the one the file was encoded with"):
        featcodec.decode(blob)


def test_bad_parameters_and_inputs_are_refused(tiny_learned):
    _, _, maps = tiny_learned
    for step in (0.01, 0.9, "x", True):
        with pytest.raises(InvalidInputError, match="--step"):
            featcodec.get_codec("learned", step=step)
    with pytest.raises(InvalidInputError, match="--kbpi"):
        featcodec.get_codec("learned", kbpi=-3)
    with pytest.raises(InvalidInputError, match="serves no tensor"):
        featcodec.encode(np.ones((1, 5, 8, 8), np.float32), "learned", model="tinyrate")
    with pytest.raises(MissingModelError, match="no learned-codec model 'nope'"):
        featcodec.encode(maps[:1], "learned", model="nope")


def test_channel_prior_bits_follow_the_histogram():
    torch = pytest.importorskip("torch")
    from featcodec.train.learned import ChannelPrior

    prior = ChannelPrior(2)
    y = torch.rand(64, 2, 8, 8)
    y[:, 1] = 0.5 + 0.01 * (y[:, 1] - 0.5)  # channel 1 almost constant
    prior.fit(y)
    step = torch.full((64, 1, 1, 1), 1 / 15)
    bits = prior.bits(y, step)
    assert 3.5 < float(bits[:, 0].mean().detach()) < 4.5  # uniform over 16 cells: about 4 bits
    assert float(bits[:, 1].mean().detach()) < 0.5
    y.requires_grad_(True)
    prior.bits(y, step).sum().backward()
    assert float(y.grad.abs().sum()) > 0  # the rate reaches the encoder


@pytest.mark.parametrize("model", ["centernet_mbv3_light", "centernet_mbv3"])
def test_the_shipped_models_code_the_reference_layer(model):
    """The default (light encoder) and the model older files name: both ship."""
    assert model in available_models()
    with h5py.File(DEMO) as f:
        x = f["S2"][:1]
    blob = featcodec.encode(x, "learned", kbpi=60, model=model)
    kbits = featcodec.info(blob)["payload_bytes"] * 8 / 1000
    assert abs(kbits - 60) <= 6
    assert featcodec.decode(blob).shape == x.shape
    assert featcodec.info(blob)["codec"]["model"] == model


def test_the_light_encoder_is_the_cheaper_one():
    light, exit_ = (json.loads((available_models()[m] / "manifest.json").read_text())
                    for m in ("centernet_mbv3_light", "centernet_mbv3"))
    assert light["layers"]["S2"]["encoder_kind"] == "light (distilled)"
    assert light["files"]["s2_enc.onnx"]["bytes"] < exit_["files"]["s2_enc.onnx"]["bytes"] / 10


def test_a_light_encoder_is_distilled_then_trained(tiny_learned, tmp_path, monkeypatch):
    from featcodec.train.learned import RateConfig, train_learned

    models, _, maps = tiny_learned
    lines = []
    config = RateConfig(base="tinytiler", ratio=16, lam=0.01, steps=3, every=3, batch=2, crop=16, width=8,
                        valid_fraction=0.25, encoder="light", distill_minutes=0.005)
    manifest = train_learned(str(models.parent / "dump.h5"), "small", str(tmp_path / "light"), name="light",
                             config=config, log=lines.append)
    record = manifest["training"]["small"]
    assert record["distilled"]["steps"] >= 1 and record["encoder"] == "light"
    assert manifest["layers"]["small"]["encoder_kind"] == "light (distilled)"
    assert any("distilled in" in line for line in lines)
    # smaller than the auto-tiler's cascade it replaces, and a working codec
    tiler = json.loads((models / "tinytiler" / "manifest.json").read_text())
    cascade = sum(tiler["files"][f]["bytes"] for f in tiler["layers"]["small"]["exits"]["16"]["encoder"])
    assert manifest["files"]["small_enc.onnx"]["bytes"] < cascade
    folder = tmp_path / "models"
    shutil.copytree(tmp_path / "light", folder / "light", ignore=shutil.ignore_patterns(".checkpoints"))
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    assert featcodec.decode(featcodec.encode(maps[:1], "learned", model="light")).shape == maps[:1].shape

    # and training goes on from it (a new loss, more minutes): no distillation, the same codec at step 0
    monkeypatch.setenv("FEATCODEC_MODELS", os.pathsep.join([str(folder), str(models)]))
    again = RateConfig(base="tinytiler", ratio=16, lam=0.01, steps=0, batch=2, crop=16, width=8,
                       valid_fraction=0.25, encoder="light", start="light")
    manifest = train_learned(str(models.parent / "dump.h5"), "small", str(folder / "more"), name="more",
                             config=again, log=lambda line: None)
    assert manifest["training"]["small"]["distilled"] == {"from": "light"}
    np.testing.assert_allclose(Learned(model="more").latent(maps[0])[1], Learned(model="light").latent(maps[0])[1],
                               atol=1e-5)
    with pytest.raises(InvalidInputError, match="has a light encoder: train it with --encoder light"):
        train_learned(str(models.parent / "dump.h5"), "small", str(tmp_path / "exit"), name="exit",
                      config=RateConfig(base="tinytiler", ratio=16, steps=0, width=8, valid_fraction=0.25,
                                        start="light"), log=lambda line: None)


def test_training_can_start_from_a_learned_model(tiny_learned, tmp_path, monkeypatch):
    """--from-learned: the learned model's encoder and decoder are the start (no step run: the same codec)."""
    from featcodec.train.learned import RateConfig, train_learned

    models, _, maps = tiny_learned
    config = RateConfig(base="tinytiler", ratio=16, lam=0.01, steps=0, every=3, batch=2, crop=16, width=8,
                        valid_fraction=0.25, start="tinyrate")
    manifest = train_learned(str(models.parent / "dump.h5"), "small", str(tmp_path / "again"), name="again",
                             config=config, log=lambda line: None)
    assert manifest["layers"]["small"]["start"] == "tinytiler small CR16, through learned tinyrate"
    with pytest.raises(InvalidInputError, match="no learned model 'nothing'"):
        train_learned(str(models.parent / "dump.h5"), "small", str(tmp_path / "none"), name="none",
                      config=RateConfig(base="tinytiler", ratio=16, steps=0, width=8, valid_fraction=0.25,
                                        start="nothing"), log=lambda line: None)
    folder = tmp_path / "models"
    shutil.copytree(tmp_path / "again", folder / "again", ignore=shutil.ignore_patterns(".checkpoints"))
    shutil.copytree(models / "tinyrate", folder / "tinyrate", ignore=shutil.ignore_patterns(".checkpoints"))
    monkeypatch.setenv("FEATCODEC_MODELS", str(folder))
    for part in ("latent", "decoded"):
        original, restarted = Learned(model="tinyrate"), Learned(model="again")
        if part == "latent":
            np.testing.assert_allclose(restarted.latent(maps[0])[1], original.latent(maps[0])[1], atol=1e-5)
        else:
            payload, info = original.encode(maps[0])
            np.testing.assert_allclose(restarted.decode(payload, maps[0].shape, info),
                                       original.decode(payload, maps[0].shape, info), rtol=1e-4, atol=1e-4)
