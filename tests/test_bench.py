"""featcodec bench: sweeps, JSON keys, checks, summaries."""

import json

import h5py
import numpy as np
import pytest

from featcodec import metrics
from featcodec.bench import RATE_SETS, evaluate_checks, run_bench
from featcodec.errors import InvalidInputError
from featcodec.registry import codec_class, codec_ids, get_codec
from tests.common import relu_activations

RESULT_KEYS = {"tensor", "layer", "shape", "method", "point", "params", "bits_per_element", "kbpi",
               "compression_ratio", "mse", "psnr", "snr", "ssim", "agreement", "encode_ms", "decode_ms", "stages_ms",
               "encode_passes"}


@pytest.fixture(scope="module")
def tiny_dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("small", data=relu_activations((2, 6, 24, 24))).attrs["layer"] = "small:0"
    return path


@pytest.fixture(scope="module")
def report(tiny_dump):
    return run_bench([str(tiny_dump)], codec_ids(), rates="quick")


def test_every_codec_has_rate_points():
    # Each codec declares its own points (bench holds no list of codec names).
    for rates in RATE_SETS:
        for codec_id in codec_ids():
            points = codec_class(codec_id).points(rates)
            assert points[0] == ("default", {}), codec_id
            assert len({label for label, _ in points}) == len(points), codec_id
            for _, params in points:
                get_codec(codec_id, **params)  # every point is a valid parameter set


def test_bench_runs_every_codec(report):
    # The learned codecs' models serve the reference layers only: a 6-channel tensor is skipped, with why.
    assert {r["method"] for r in report["results"]} == set(codec_ids()) - {"autotiler", "learned"}
    assert {s["method"] for s in report["skipped"]} == {"autotiler", "learned"}
    assert all("serves no tensor" in s["reason"] for s in report["skipped"])
    for row in report["results"]:
        assert set(row) == RESULT_KEYS
        assert row["bits_per_element"] > 0 and row["encode_ms"] > 0 and row["decode_ms"] > 0
        assert 0 < row["ssim"] <= 1.0 + 1e-9
        assert row["agreement"] is None  # no network recorded for this dump
    assert {"featcodec", "numpy", "onnxruntime", "cpu", "threads"} <= set(report["environment"])
    tiling = [r for r in report["results"] if r["method"] == "tiling"][0]
    assert {"normalise", "video_encode", "video_decode", "denormalise"} <= set(tiling["stages_ms"])
    passes = {r["method"]: r["encode_passes"] for r in report["results"] if r["point"] == "default"}
    assert passes["tiling"] == passes["fpc"] == 1 and passes["lightweight"] is None  # a QP: one encode
    json.dumps(report)  # JSON-ready


def test_bench_cli_json_csv_and_checks(cli, tiny_dump, tmp_path):
    out = tmp_path / "r.json"
    result = cli("bench", tiny_dump, "-m", "raw,uniform", "--rates", "quick", "--json", out, "--csv",
                 tmp_path / "r.csv", "--check", "raw@float16.bpe<=16.01", "--check", "uniform.ssim>=0.5")
    assert result.returncode == 0, result.stderr.decode()
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")  # what JavaScript's and Go's parsers do

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert {"environment", "settings", "results", "summary", "checks"} <= set(data)
    assert all(c["passed"] for c in data["checks"])
    lossless = [r for r in data["results"] if r["method"] == "raw" and r["point"] == "default"]
    assert lossless and all(r["psnr"] is None and r["mse"] == 0 for r in lossless)
    again = cli("bench", "--from-json", out, "--check", "raw.psnr>=100")  # null reads back as infinite
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "r.csv").read_text().startswith("tensor,layer,method,point,bits_per_element")
    failing = cli("bench", tiny_dump, "-m", "raw", "--rates", "quick", "--check", "raw.bpe<=8")
    assert failing.returncode != 0
    assert failing.stderr.decode().strip().splitlines()[-1].startswith("Error: check failed: raw.bpe<=8")


def test_checks_parse_and_fail(report):
    from featcodec.bench import PointResult

    results = [PointResult(**r) for r in report["results"]]
    assert evaluate_checks(["raw.bits_per_element==32"], results)[0]["passed"]
    assert not evaluate_checks(["raw.bpe<1"], results)[0]["passed"]
    for bad in ("raw.bpe<<1", "nope.bpe<1", "raw@nopoint.bpe<1", "raw.speed<1"):
        with pytest.raises(InvalidInputError):
            evaluate_checks([bad], results)


def test_effective_cr_on_hand_made_curve():
    crs = [2, 10, 40, 100, 300]
    agreement = [1.0, 0.98, 0.9, 0.86, 0.5]
    assert metrics.effective_cr_range(crs, agreement) == (2, 100)
    assert metrics.effective_cr_range(crs, [0.1] * 5) is None
    assert metrics.rate_at([0.1, 0.2, 0.4], [0.5, 0.9, 1.0], 0.95) == pytest.approx(0.3)


def test_bd_rate_of_a_shifted_curve():
    rates = np.array([0.1, 0.2, 0.4, 0.8])
    quality = np.array([30.0, 33.0, 36.0, 39.0])
    assert metrics.bd_rate(rates, quality, rates / 2, quality) == pytest.approx(-50.0, abs=1e-6)
    assert metrics.bd_rate(rates, quality, rates, quality + 100) is None  # no overlap
    # A dominated point (more rate, less quality) does not bend the curve.
    assert metrics.bd_rate(rates, quality, np.r_[rates / 2, 5.0], np.r_[quality, 31.0]) == pytest.approx(-50.0)
    assert metrics.pareto([0.3, 0.1, 0.2], [0.9, 0.5, 0.4])[0].tolist() == [0.1, 0.3]


def test_ssim_properties():
    x = relu_activations((3, 20, 20))
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    noisy = x + np.random.default_rng(0).normal(0, 0.3, x.shape)
    noisier = x + np.random.default_rng(0).normal(0, 1.0, x.shape)
    assert metrics.ssim(x, noisier) < metrics.ssim(x, noisy) < 1.0
