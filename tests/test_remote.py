"""Remote inference, the anchor: image codecs, the dump's images made again, the bench's summary."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from featcodec import remote
from featcodec.bench import PointResult, beats_image, evaluate_checks, summarise
from featcodec.dump import dump
from featcodec.errors import InvalidInputError
from featcodec.onnxmodel import Manifest, finish_input, preprocess, resize_for_input

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.jpg"))[:2]


def _picture(height=37, width=50):
    """A smooth colour picture with an edge (odd sides: 4:2:0 needs padding)."""
    y, x = np.mgrid[:height, :width]
    rgb = np.stack([x * 5, y * 6, (x + y) * 3], -1) % 256
    rgb[:, width // 2 :] = 255 - rgb[:, width // 2 :]
    return rgb.astype(np.uint8)


@pytest.mark.parametrize("codec,fine,coarse", [("x265", 12, 44), ("jpeg", 95, 10)])
def test_image_codecs_round_trip_at_every_size(codec, fine, coarse):
    rgb = _picture()
    good, good_bytes, _, _ = remote.code_image(codec, fine, rgb)
    poor, poor_bytes, _, _ = remote.code_image(codec, coarse, rgb)
    assert good.shape == poor.shape == rgb.shape and good.dtype == np.uint8
    def psnr(a):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - rgb) ** 2))

    assert psnr(good) > 30 and psnr(good) > psnr(poor) + 3
    assert poor_bytes < good_bytes


def test_unknown_image_codec_is_refused():
    with pytest.raises(InvalidInputError, match="unknown image codec 'webp'"):
        remote.image_points(("webp",))


def test_the_device_sends_the_image_before_the_letterbox_padding():
    spec = Manifest.for_model(MODEL).preprocessing
    rgb = _picture(300, 400)
    resized = resize_for_input(rgb, spec)
    assert resized.shape == (384, 512, 3)  # the longer side fitted, the padding not sent
    np.testing.assert_array_equal(finish_input(resized, spec), preprocess(rgb, spec))
    stretch = {**spec, "resize": "stretch", "size": [64, 48]}
    assert resize_for_input(rgb, stretch).shape == (64, 48, 3)


@pytest.fixture(scope="module")
def photo_dump(tmp_path_factory):
    """Two bundled photos and a mirrored variant of each, S4 of the reference detector."""
    path = tmp_path_factory.mktemp("remote") / "photos.h5"
    dump(str(MODEL), ["S4"], [str(p) for p in IMAGES], str(path), augmentations=("flip",), compression="lzf")
    return path


def test_the_dumps_images_are_made_again_as_the_network_saw_them(photo_dump):
    with h5py.File(photo_dump) as f:
        assert [s.decode() for s in f["sources"][()]] == [str(p) for p in IMAGES for _ in range(2)]
        reference = f["reference/tower_0/detections"][()]
    images = remote.dump_images(str(photo_dump))
    assert len(images) == 4 and np.array_equal(images[1], images[0][:, ::-1])
    network = remote.WholeNetwork(str(MODEL))
    (again,) = network.run([resize_for_input(rgb, network.spec) for rgb in images])
    np.testing.assert_allclose(again, reference, atol=1e-3)


def test_random_crops_are_made_again_from_their_names(tmp_path):
    from featcodec.dump import augment

    path = tmp_path / "crops.h5"
    dump(str(MODEL), ["S4"], [str(IMAGES[0])], str(path), random_crops=2, compression="lzf")
    with h5py.File(path) as f:
        assert [n.decode() for n in f["images"][()]] == [IMAGES[0].name + k for k in ("", "#crop0", "#crop1")]
        reference = f["reference/tower_0/detections"][()]
    images = remote.dump_images(str(path))
    np.testing.assert_array_equal(images[2], augment(images[0], "crop1"))
    network = remote.WholeNetwork(str(MODEL))
    (again,) = network.run([resize_for_input(rgb, network.spec) for rgb in images])
    np.testing.assert_allclose(again, reference, atol=1e-3)
    with h5py.File(path, "a") as f:
        f["images"][1] = IMAGES[0].name + "#cropx"  # a name no featcodec dump writes
    with pytest.raises(InvalidInputError, match="unknown augmentation 'cropx'"):
        remote.dump_images(str(path))


def test_remote_inference_rates_and_agreement(photo_dump):
    points = remote.remote_inference(str(photo_dump), str(MODEL), codecs=("jpeg",))
    assert [p.point for p in points] == [f"q={q}" for q in remote.JPEG_QUALITIES]
    rates = [p.kbpi for p in points]
    assert rates == sorted(rates) and rates[0] > 1
    assert all(0 <= p.agreement <= 1 and p.samples == 4 for p in points)
    assert points[-1].agreement > points[0].agreement and points[-1].psnr > points[0].psnr + 10


def test_images_found_through_folders_when_the_recorded_paths_are_gone(photo_dump, tmp_path):
    moved = tmp_path / "moved.h5"
    shutil.copy(photo_dump, moved)
    with h5py.File(moved, "a") as f:
        del f["sources"]
    with pytest.raises(InvalidInputError, match="pass --images DIR"):
        remote.dump_images(str(moved))
    assert len(remote.dump_images(str(moved), [str(IMAGES[0].parent)])) == 4


def _point(method, kbpi, agreement, point):
    return PointResult(tensor="/S2", layer="S2", shape=[1, 72, 8, 8], method=method, point=point, params={},
                       bits_per_element=kbpi / 100, kbpi=kbpi, compression_ratio=1.0, mse=0.0, psnr=30.0, snr=0.0,
                       ssim=1.0, agreement=agreement, encode_ms=1.0, decode_ms=1.0)


IMAGE_ROWS = [{"codec": "x265", "point": f"crf={c}", "kbpi": k, "agreement": a, "tensors": ["/S2"]}
              for c, k, a in ((44, 50, 0.7), (40, 80, 0.8), (36, 120, 0.9), (32, 200, 0.95))]


def test_summary_takes_bd_rate_against_remote_inference():
    half = [_point("learned", k / 2, a, f"p{i}") for i, (k, a) in enumerate([(50, 0.7), (80, 0.8), (120, 0.9),
                                                                          (200, 0.95)])]
    double = [_point("tiling", k * 2, a, f"p{i}") for i, (k, a) in enumerate([(50, 0.7), (80, 0.8), (120, 0.9)])]
    summary = {row["method"]: row for row in summarise(half + double, remote=IMAGE_ROWS)}
    assert summary["learned"]["bd_rate_vs_remote"] == pytest.approx(-50, abs=0.01)
    assert summary["tiling"]["bd_rate_vs_remote"] == pytest.approx(100, abs=0.01)
    assert summary["learned"]["image_ratio_at_0.9"] == pytest.approx(0.5)
    assert summary["learned"]["image_kbpi_at_0.8"] == pytest.approx(80)
    assert summary["tiling"]["kbpi_at_0.95"] is None and summary["tiling"]["image_ratio_at_0.95"] is None
    lines = beats_image(list(summary.values()))
    assert summary["learned"]["bd_range_vs_remote"] == (0.7, 0.95)
    assert summary["tiling"]["bd_range_vs_remote"] == (0.7, 0.9)
    assert lines == ["/S2: best codec learned needs fewer bits than sending the image (x265) over agreement "
                     "0.70-0.95: BD-rate -50.0 %; Kbpi against the image's at agreement 0.8: 0.50x, 0.9: 0.50x, "
                     "0.95: 0.50x"]
    # the anchor of another dump's tensors is not this tensor's
    other = [{**row, "tensors": ["/S4"]} for row in IMAGE_ROWS]
    assert "bd_rate_vs_remote" not in summarise(half, remote=other)[0]


def test_checks_gate_on_the_summary():
    results = [_point("learned", k / 2, a, f"p{i}") for i, (k, a) in enumerate([(50, 0.7), (120, 0.9)])]
    summary = summarise(results, remote=IMAGE_ROWS)
    outcome = evaluate_checks(["learned.bd_rate_vs_remote<=0", "learned.image_ratio_at_0.9<0.4",
                               "learned@p1.agreement>=0.9"], results, summary)
    assert [c["passed"] for c in outcome] == [True, False, True]
    with pytest.raises(InvalidInputError, match="no summary of tiling"):
        evaluate_checks(["tiling.bd_rate_vs_remote<=0"], results, summary)


def test_bench_cli_draws_the_anchor(cli, photo_dump, tmp_path):
    out = tmp_path / "r.json"
    result = cli("bench", f"{photo_dump}:/S4", "-m", "uniform", "--json", out,
                 "--check", "uniform.bd_rate_vs_remote<=100000")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(out.read_text())
    x265 = [r for r in report["remote"] if r["codec"] == "x265"]
    assert [r["point"] for r in x265] == [f"crf={c}" for c in remote.X265_CRFS] and x265[0]["tensors"] == ["/S4"]
    assert "than sending the image (x265)" in result.stdout.decode()
    assert report["summary"][0]["bd_rate_vs_remote"] is not None
    quiet = cli("bench", f"{photo_dump}:/S4", "-m", "raw", "--rates", "quick", "--no-remote", "--json",
                tmp_path / "q.json")
    assert quiet.returncode == 0 and json.loads((tmp_path / "q.json").read_text())["remote"] == []
