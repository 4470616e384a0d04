"""The tail of an ONNX network as a frozen torch module, for losses taken through the task.

Training an auto-tiler on MSE alone treats every channel and position alike; the detector does
not. `OnnxTail` runs the ONNX graph from a split tensor to chosen outputs with torch operators,
so a loss on the network's own outputs (heatmaps, box maps) sends gradients back into the
auto-tiler's decoder. It covers the operators of convolutional backbones and heads (Conv, Relu,
Clip, Sigmoid, Add, Mul, Reshape, Transpose, Concat, GlobalAveragePool, Resize) and refuses any
other. `check_against_onnxruntime` is how a tail is trusted: same input, both runtimes, max |Δ|.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from . import require_torch

torch = require_torch()
F = torch.nn.functional


def _upsample_asymmetric_linear(x, scale: int):
    """ONNX Resize, mode=linear, coordinate_transformation_mode=asymmetric, integer scale:
    output i samples input i/scale, clamped at the last row/column."""
    for dim in (2, 3):
        n = x.shape[dim]
        idx = torch.arange(n * scale, device=x.device, dtype=torch.float32) / scale
        lo = idx.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (idx - lo.float()).view(*([1] * dim), -1, *([1] * (3 - dim)))
        x = x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac
    return x


class OnnxTail(torch.nn.Module):
    """`graph` (an onnx ModelProto cut to one input) evaluated with torch, weights frozen."""

    SUPPORTED = {"Conv", "Relu", "Clip", "Sigmoid", "Add", "Mul", "Reshape", "Transpose", "Concat",
                 "GlobalAveragePool", "Resize"}

    def __init__(self, model, outputs: list[str] | None = None):
        super().__init__()
        graph = model.graph
        unsupported = {n.op_type for n in graph.node} - self.SUPPORTED
        if unsupported:
            raise ValueError(f"OnnxTail cannot run operators {sorted(unsupported)}")
        self.input_name = graph.input[0].name
        self.output_names = outputs or [o.name for o in graph.output]
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self._tensors = {}
        for k, (name, value) in enumerate(self.constants.items()):
            if value.dtype.kind == "f" and value.ndim >= 1 and value.size > 1:
                self.register_buffer(f"w{k}", torch.from_numpy(np.array(value, np.float32)))
                self._tensors[name] = f"w{k}"
        self.nodes = [(n.op_type, list(n.input), list(n.output),
                       {a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in graph.node]

    def _value(self, env, name):
        if name in env:
            return env[name]
        if name in self._tensors:
            return getattr(self, self._tensors[name])
        value = self.constants[name]
        return torch.tensor(value.astype(np.float32)) if value.dtype.kind == "f" else value

    def forward(self, x):
        env = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            args = [self._value(env, i) if i else None for i in inputs]
            if op == "Conv":
                pads = attrs.get("pads", [0, 0, 0, 0])
                a = args[0]
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    a = F.pad(a, (pads[1], pads[3], pads[0], pads[2]))
                    padding = 0
                else:
                    padding = (pads[0], pads[1])
                y = F.conv2d(a, args[1], args[2] if len(args) > 2 else None, stride=tuple(attrs.get("strides", [1, 1])),
                             padding=padding, dilation=tuple(attrs.get("dilations", [1, 1])),
                             groups=attrs.get("group", 1))
            elif op == "Relu":
                y = F.relu(args[0])
            elif op == "Clip":
                lo = float(np.asarray(args[1]).ravel()[0]) if len(args) > 1 and args[1] is not None else None
                hi = float(np.asarray(args[2]).ravel()[0]) if len(args) > 2 and args[2] is not None else None
                y = torch.clamp(args[0], lo, hi)
            elif op == "Sigmoid":
                y = torch.sigmoid(args[0])
            elif op in ("Add", "Mul"):
                a, b = (torch.as_tensor(v, dtype=torch.float32) if isinstance(v, np.ndarray) else v for v in args)
                y = a + b if op == "Add" else a * b
            elif op == "Reshape":
                shape = [int(s) for s in np.asarray(args[1]).ravel()]
                shape = [args[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
                y = args[0].reshape(shape)
            elif op == "Transpose":
                y = args[0].permute(*attrs["perm"])
            elif op == "Concat":
                y = torch.cat(args, dim=attrs["axis"])
            elif op == "GlobalAveragePool":
                y = args[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Resize":
                scales = np.asarray(args[2]).ravel() if len(args) > 2 and args[2] is not None else None
                if (attrs.get("mode") != b"linear" or attrs.get("coordinate_transformation_mode") != b"asymmetric"
                        or scales is None or len(scales) != 4 or scales[2] != scales[3] or scales[2] % 1):
                    raise ValueError(f"OnnxTail supports only asymmetric linear integer Resize, got {attrs}")
                y = _upsample_asymmetric_linear(args[0], int(scales[2]))
            env[outputs[0]] = y
        return [env[name] for name in self.output_names]


def load_tail(model_path: str, layer: str, outputs: list[str]) -> OnnxTail:
    """The tail of `model_path` from `layer` (tensor name or manifest alias) to `outputs`."""
    from ..onnxmodel import Manifest, extract, load_model

    tensor = Manifest.for_model(model_path).resolve_layer(layer)
    tail = OnnxTail(extract(load_model(model_path), [tensor], outputs), outputs)
    tail.eval()
    for p in tail.parameters():
        p.requires_grad_(False)
    return tail


def check_against_onnxruntime(model_path: str, layer: str, outputs: list[str], x: np.ndarray) -> float:
    """Max |Δ| between `load_tail` and onnxruntime on the same activations."""
    from ..onnxmodel import Manifest, extract, load_model, session

    tensor = Manifest.for_model(model_path).resolve_layer(layer)
    reference = session(extract(load_model(model_path), [tensor], outputs)).run(outputs, {tensor: x})
    with torch.no_grad():
        ours = load_tail(model_path, layer, outputs)(torch.from_numpy(x))
    return max(float(np.max(np.abs(r - o.numpy()))) for r, o in zip(reference, ours))
