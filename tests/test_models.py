"""split, dump and the task metric: on a tiny model built here and on the reference detector."""

import json
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from featcodec.errors import InvalidInputError
from featcodec.onnxmodel import check_cut, session, split_model, verify_split
from featcodec.task import TaskModel, average_precision, detection_agreement, top1_agreement

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
IMAGES = ROOT / "examples" / "images"


def tiny_model(path=None):
    """x → Relu → a → (Mul 2) → b → Add(b, x) → y: 'a' and 'b' do not cut (skip from x); Add output only."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mul", ["a", "two"], ["b"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Add", ["b", "s"], ["c"]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    if path:
        onnx.save(model, path)
    return model


def test_split_tiny_model():
    model = tiny_model()
    head, tail = split_model(model, "c")
    assert [o.name for o in head.graph.output] == ["c"]
    assert [i.name for i in tail.graph.input] == ["c"]
    assert verify_split(model, head, tail) == 0.0


@pytest.mark.parametrize("tensor,message", [("a", "does not cut"), ("b", "does not cut"), ("nope", "no tensor"),
                                            ("y", "input or output")])
def test_split_refuses_non_cuts(tensor, message):
    with pytest.raises(InvalidInputError, match=message):
        check_cut(tiny_model(), tensor)


def test_split_cli(cli, tmp_path):
    tiny_model(tmp_path / "tiny.onnx")
    cli("split", tmp_path / "tiny.onnx", "--at", "c", "-o", tmp_path / "h.onnx", tmp_path / "t.onnx", check=True)
    assert session(str(tmp_path / "t.onnx")).get_inputs()[0].name == "c"
    result = cli("split", tmp_path / "tiny.onnx", "--at", "a", "-o", tmp_path / "h2.onnx", tmp_path / "t2.onnx")
    assert result.returncode != 0 and result.stderr.decode().startswith("Error: ")
    assert b"does not cut" in result.stderr and not (tmp_path / "h2.onnx").exists()
    result = cli("split", tmp_path / "tiny.onnx", "--at", "zzz", "-o", tmp_path / "h3.onnx", tmp_path / "t3.onnx")
    assert b"Error: model has no tensor 'zzz'" in result.stderr


@pytest.mark.parametrize("alias", ["S0", "S1", "S2", "S3", "S4"])
def test_reference_split_points(alias):
    manifest = json.loads((REFERENCE.parent / "manifest.json").read_text())
    model = onnx.load(str(REFERENCE))
    head, tail = split_model(model, manifest["split_points"][alias])
    assert verify_split(model, head, tail) <= 1e-4


def test_reference_non_cut_refused():
    model = onnx.load(str(REFERENCE))
    with pytest.raises(InvalidInputError, match="does not cut"):
        check_cut(model, "tower_0/MobilenetV3/expanded_conv_5/expand/Relu:0")  # skip into the head


@pytest.fixture(scope="module")
def reference_dump(tmp_path_factory):
    from featcodec.dump import dump

    out = tmp_path_factory.mktemp("dump") / "acts.h5"
    images = [str(IMAGES / "darknet_dog.jpg"), str(IMAGES / "skimage_coffee.jpg"), str(IMAGES / "opencv_home.jpg")]
    summary = dump(str(REFERENCE), ["S2", "S4"], images, str(out), batch_size=2)
    assert summary.images == 3
    return out


def test_dump_shapes_and_attributes(reference_dump):
    with h5py.File(reference_dump) as f:
        assert f["S2"].shape == (3, 72, 128, 128) and f["S4"].shape == (3, 128, 128, 128)
        assert f["S2"].dtype == np.float32
        attrs = f["S4"].attrs
        assert attrs["layer"] == "tower_0/CenternetHead/mul:0"
        assert attrs["model_sha256"] == "19092dfbf8c52e7eddb59ad7476aa99064ce8ef379ab9152ea8af83a6f01e775"
        assert json.loads(attrs["images"]) == ["darknet_dog.jpg", "skimage_coffee.jpg", "opencv_home.jpg"]
        assert json.loads(attrs["preprocessing"])["resize"] == "letterbox"
        assert f["reference/tower_0/detections"].shape == (3, 100, 6)
        assert (f["S4"][()] >= 0).all() and (f["S2"][()] == 0).mean() > 0.1
        # The dog photo holds a dog (COCO-80 index 16) with a confident score.
        dets = f["reference/tower_0/detections"][0]
        assert 16 in dets[dets[:, 4] > 0.3, 5].astype(int)


def test_dump_cli_bad_image(cli, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = cli("dump", REFERENCE, tmp_path / "broken.jpg", "--layer", "S4", "-o", tmp_path / "x.h5")
    assert result.stderr.decode().startswith("Error: cannot read image") and result.returncode != 0
    result = cli("dump", REFERENCE, IMAGES / "darknet_dog.jpg", "--layer", "nope:0", "-o", tmp_path / "x.h5")
    assert b"Error: model has no tensor 'nope:0'" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_task_metric_identical_and_noisy(reference_dump):
    with h5py.File(reference_dump) as f:
        x = f["S4"][()]
    task = TaskModel(str(REFERENCE), "S4")
    reference = task.run(x)
    assert task.agreement(x, x, reference) == 1.0
    rng = np.random.default_rng(0)
    mild = task.agreement(x, x + rng.normal(0, 0.05, x.shape).astype(np.float32), reference)
    strong = task.agreement(x, x + rng.normal(0, 0.5, x.shape).astype(np.float32), reference)
    assert strong < mild <= 1.0
    assert strong < 0.9


def test_average_precision_hand_made():
    # Two truths; predictions hit, miss, hit in score order: P = 1, 1/2, 2/3 at recalls .5, .5, 1.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert ap == pytest.approx(expected)


def test_detection_agreement_edge_cases():
    dets = np.zeros((1, 3, 6), np.float32)
    dets[0, 0] = [10, 10, 50, 50, 0.9, 3]
    assert detection_agreement(dets, dets) == 1.0
    shifted = dets.copy()
    shifted[0, 0, :4] += 30  # IoU well below 0.5
    assert detection_agreement(dets, shifted) == 0.0
    empty = np.zeros((1, 3, 6), np.float32)
    assert detection_agreement(empty, empty) == 1.0
    assert detection_agreement(empty, dets) == 0.0
    assert top1_agreement(np.eye(3), np.eye(3)[[0, 2, 1]]) == pytest.approx(1 / 3)


def test_dump_augmentations_keep_images_together(tmp_path):
    from featcodec.dump import augment, dump

    image = (np.arange(16 * 24 * 3) % 251).astype(np.uint8).reshape(16, 24, 3)
    np.testing.assert_array_equal(augment(image, "flip"), image[:, ::-1])
    np.testing.assert_array_equal(augment(image, "zoom"), image[2:14, 3:21])
    assert augment(image, "shrink").shape == (10, 16, 3)
    # random crops: the same name gives the same window again (remote inference remakes them), another a new one
    crops = [augment(image, f"crop{k}") for k in range(4)]
    np.testing.assert_array_equal(crops[0], augment(image, "crop0"))
    assert len({c.tobytes() for c in crops}) == 4
    assert all(6 <= c.shape[0] <= 15 and 8 <= c.shape[1] <= 22 for c in crops)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(image, "cropped")
    images = [str(IMAGES / "darknet_dog.jpg"), str(IMAGES / "skimage_coffee.jpg")]
    dump(str(REFERENCE), ["S4"], images, str(tmp_path / "aug.h5"), augmentations=("flip",), compression="none")
    with h5py.File(tmp_path / "aug.h5") as f:
        assert json.loads(f["S4"].attrs["images"]) == ["darknet_dog.jpg", "darknet_dog.jpg#flip",
                                                       "skimage_coffee.jpg", "skimage_coffee.jpg#flip"]
        s4 = f["S4"][()]
    # A mirrored photo gives (nearly) mirrored deep features, not the same ones.
    assert not np.allclose(s4[0], s4[1])
    assert np.corrcoef(s4[0].ravel(), s4[1][..., ::-1].ravel())[0, 1] > 0.8
