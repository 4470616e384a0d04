"""The command line, through a real subprocess."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.common import relu_activations

DEMO = Path(__file__).resolve().parents[1] / "examples" / "reference_demo.h5"


@pytest.fixture
def acts(tmp_path):
    x = relu_activations((2, 8, 12, 12))
    np.save(tmp_path / "acts.npy", x)
    return tmp_path / "acts.npy", x


def test_version_and_help(cli):
    out = cli("--version", check=True).stdout.decode()
    assert "featcodec" in out and "0." in out
    from featcodec.cli import cli as group

    assert set(group.commands) == {"encode", "decode", "info", "codecs", "models", "calibrate", "split", "dump",
                                   "manifest", "bench", "convert", "train"}
    for command in group.commands:
        text = cli(command, "--help", check=True).stdout.decode()
        assert "Usage:" in text and len(text.splitlines()) > 4, command


def test_encode_decode_default_names(cli, acts, tmp_path):
    path, x = acts
    result = cli("encode", path, "-m", "raw", check=True)
    assert b"bits/element" in result.stderr
    assert (tmp_path / "acts.fcb").exists()
    cli("decode", tmp_path / "acts.fcb", "-o", tmp_path / "back.npy", check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), x)


def test_pipe(cli, acts):
    path, x = acts
    encoded = cli("encode", "-", "-m", "raw", "--zstd", "3", input=path.read_bytes(), check=True).stdout
    decoded = cli("decode", "-", input=encoded, check=True).stdout
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(decoded)), x)


def test_force(cli, acts, tmp_path):
    path, _ = acts
    cli("encode", path, "-m", "raw", check=True)
    before = (tmp_path / "acts.fcb").read_bytes()
    result = cli("encode", path, "-m", "uniform")
    assert result.returncode != 0 and b"--force" in result.stderr
    assert (tmp_path / "acts.fcb").read_bytes() == before
    cli("encode", path, "-m", "uniform", "--force", check=True)
    assert (tmp_path / "acts.fcb").read_bytes() != before


def test_hdf5_in_and_out(cli, tmp_path):
    x = relu_activations((3, 4, 6, 6))
    with h5py.File(tmp_path / "dump.h5", "w") as f:
        f.create_dataset("/layers/s4", data=x).attrs["layer"] = "tower_0/CenternetHead/mul:0"
        f.create_dataset("/layers/s2", data=x[:, :2])
    cli("encode", f"{tmp_path}/dump.h5:/layers/s4", "-m", "uniform", "--levels", "8", check=True)
    fcb = tmp_path / "dump.layers_s4.fcb"
    header = json.loads(cli("info", fcb, "--json", check=True).stdout)
    assert header["layer"] == "tower_0/CenternetHead/mul:0"
    assert header["codec"]["levels"] == 8
    cli("decode", fcb, "-o", tmp_path / "out.h5", check=True)
    with h5py.File(tmp_path / "out.h5") as f:
        restored = f["/layers/s4"]
        assert restored.shape == x.shape and restored.attrs["layer"] == "tower_0/CenternetHead/mul:0"


def test_info_plain(cli, acts, tmp_path):
    path, _ = acts
    cli("encode", path, "-m", "uniform", "--layer", "conv:0", check=True)
    out = cli("info", tmp_path / "acts.fcb", check=True).stdout.decode()
    assert "layer: conv:0" in out and "bits/element" in out and '"id": "uniform"' in out


def _assert_error(result, fragment):
    err = result.stderr.decode()
    assert result.returncode != 0
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "array,fragment",
    [
        (np.zeros(7, np.float32), "expected (N,C,H,W)"),
        (np.array([[[np.nan, 1.0]]], np.float32), "NaN or Inf"),
        (np.array([[[np.inf, 1.0]]], np.float32), "NaN or Inf"),
        (np.zeros((1, 2, 2, 2), np.int8), "dtype int8"),
    ],
)
def test_bad_arrays(cli, tmp_path, array, fragment):
    np.save(tmp_path / "bad.npy", array)
    _assert_error(cli("encode", tmp_path / "bad.npy", "-m", "raw"), fragment)
    assert not (tmp_path / "bad.fcb").exists()


def test_bad_inputs(cli, acts, tmp_path):
    path, _ = acts
    _assert_error(cli("encode", tmp_path / "missing.npy", "-m", "raw"), "no such file")
    _assert_error(cli("encode", path, "-m", "nope"), "unknown codec 'nope'")
    _assert_error(cli("encode", path, "-m", "raw", "--levels", "3"), "takes no --levels")
    _assert_error(cli("decode", tmp_path / "missing.fcb"), "no such file")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = np.zeros((1, 1, 2, 2), np.float32)
    _assert_error(cli("encode", f"{tmp_path}/d.h5:/y", "-m", "raw"), "no dataset '/y'")
    _assert_error(cli("encode", path, "-m", "uniform", "--clip", "a,b"), "LO,HI")


def test_corrupt_and_truncated_bitstreams(cli, acts, tmp_path):
    path, _ = acts
    cli("encode", path, "-m", "raw", check=True)
    data = (tmp_path / "acts.fcb").read_bytes()
    (tmp_path / "cut.fcb").write_bytes(data[: len(data) // 2])
    _assert_error(cli("decode", tmp_path / "cut.fcb"), "truncated")
    flipped = bytearray(data)
    flipped[-10] ^= 4
    (tmp_path / "flip.fcb").write_bytes(bytes(flipped))
    _assert_error(cli("decode", tmp_path / "flip.fcb"), "CRC mismatch")
    _assert_error(cli("info", path), "bad magic")
    assert not (tmp_path / "cut.npy").exists() and not (tmp_path / "flip.npy").exists()


def test_nhwc_cli(cli, tmp_path):
    x = relu_activations((1, 6, 7, 5))
    np.save(tmp_path / "nhwc.npy", x)
    cli("encode", tmp_path / "nhwc.npy", "-m", "raw", "--layout", "nhwc", check=True)
    _assert_error(cli("decode", tmp_path / "nhwc.fcb"), "exists; pass --force")
    np.testing.assert_array_equal(np.load(tmp_path / "nhwc.npy"), x)  # input untouched
    cli("decode", tmp_path / "nhwc.fcb", "-o", tmp_path / "back.npy", check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), x)


def test_calibrate_then_encode_with_config(cli, tmp_path):
    x = relu_activations((4, 6, 16, 16))
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "new.npy", x[:2] * 1.1)
    cli("calibrate", tmp_path / "train.npy", "-m", "lightweight", "--levels", "5", "-o", tmp_path / "c.json",
        check=True)
    config = json.loads((tmp_path / "c.json").read_text())
    assert config["id"] == "lightweight" and len(config["table"]["levels"]) == 5
    cli("encode", tmp_path / "new.npy", "--config", tmp_path / "c.json", check=True)
    header = json.loads(cli("info", tmp_path / "new.fcb", "--json", check=True).stdout)
    assert header["codec"] == config and header["samples"] == [{}, {}]
    _assert_error(cli("encode", tmp_path / "new.npy", "--config", tmp_path / "c.json", "-m", "raw", "-f"),
                  "--config already fixes the codec")
    _assert_error(cli("encode", tmp_path / "new.npy", "-m", "raw", "--calibrate", "-f"), "no calibration step")
    cli("encode", tmp_path / "new.npy", "-m", "lightweight", "--calibrate", "-o", tmp_path / "self.fcb", check=True)
    assert json.loads(cli("info", tmp_path / "self.fcb", "--json", check=True).stdout)["codec"]["table"]


def test_models_command_lists_shipped_autotiler(cli):
    out = cli("models", check=True).stdout.decode()
    assert out.startswith("centernet_mbv3 (codec autotiler")
    for layer in ("S1 tower_0/MobilenetV3/expanded_conv_2/add:0 (24, 128, 128): CR4, CR16",
                  "S2 tower_0/MobilenetV3/expanded_conv_3/expand/Relu:0 (72, 128, 128): CR4, CR12, CR16, CR48",
                  "S4 tower_0/CenternetHead/mul:0 (128, 128, 128): CR4, CR16"):
        assert layer in out
    assert "CR4: real ratio 4.00x, 128 latent maps of 64x64 tiled 8x16 into one 512x1024 frame" in out
    # S2's compatibility exits through S1's auto-tiler, the shared core
    assert "CR12: real ratio 12.00x through S1 CR4's shared core, 24 latent maps of 64x64" in out
    assert out.count("shared with other layers") == 2  # S2 and S1


def test_headline_command_codes_the_real_ratio(cli, tmp_path):
    """`featcodec encode act.npy -m autotiler --cr 16` on every reference layer: C·H·W/16 values."""
    with h5py.File(DEMO) as f:
        for layer in ("S1", "S2", "S4"):
            np.save(tmp_path / f"{layer}.npy", f[layer][:1])
    for layer in ("S1", "S2", "S4"):
        cli("encode", tmp_path / f"{layer}.npy", "-m", "autotiler", "--cr", "16", "--preset", "ultrafast", check=True)
        header = json.loads(cli("info", tmp_path / f"{layer}.fcb", "--json", check=True).stdout)
        sample = header["samples"][0]
        assert sample["ratio"] == 16 and np.prod(sample["map"]) * 16 == np.prod(header["shape"][1:])
        decoded = cli("decode", tmp_path / f"{layer}.fcb", "-o", tmp_path / f"{layer}.out.npy", check=True)
        assert decoded.returncode == 0 and np.load(tmp_path / f"{layer}.out.npy").shape == tuple(header["shape"])
    result = cli("encode", tmp_path / "S2.npy", "-m", "autotiler", "--cr", "8", "-f")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == ("Error: auto-tiler model 'centernet_mbv3' offers no CR8 for layer S2; "
                                              "ratios on offer: 4, 12, 16, 48")
