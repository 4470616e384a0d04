"""The tail of an ONNX network as a frozen torch module, for losses taken through the task.

Training a codec on MSE alone treats every channel and position alike; the network does not.
`OnnxTail` runs the ONNX graph from the split tensor(s) to chosen outputs with torch operators,
so a loss on the network's own outputs sends gradients back into the codec's decoder. It covers
the operators of convolutional classifiers and detectors (convolutions and their transposes,
batch norm, the ReLU family, pooling, Gemm/MatMul, Softmax, nearest and linear Resize, Slice,
Split, Concat, and the shape arithmetic exporters leave behind, which it folds with numpy) and
refuses any other by name. `check_against_onnxruntime` is how a tail is trusted: same input, both
runtimes, max |Δ|; `featcodec train` runs it before it trains.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..errors import InvalidInputError
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


def _ints(value) -> list[int]:
    return [int(v) for v in np.asarray(value).ravel()]


def _axes(attrs, args, index: int, ndim: int) -> list[int] | None:
    """Axes given as an attribute (old opsets) or as input `index` (new ones), made non-negative."""
    axes = attrs.get("axes")
    if axes is None and len(args) > index and args[index] is not None:
        axes = _ints(args[index])
    return None if axes is None else [a % ndim for a in axes]


def _pool_padding(x, attrs, fill: float):
    """(input, symmetric padding) for a pooling node: asymmetric pads are applied up front."""
    pads = attrs.get("pads", [0, 0, 0, 0])
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise ValueError(f"OnnxTail does not support auto_pad={attrs['auto_pad']!r}")
    kernel = attrs["kernel_shape"]
    if pads[0] != pads[2] or pads[1] != pads[3] or pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        return F.pad(x, (pads[1], pads[3], pads[0], pads[2]), value=fill), (0, 0)
    return x, (pads[0], pads[1])


def _resize(x, attrs, args):
    mode = attrs.get("mode", b"nearest").decode()
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
    scales = args[2] if len(args) > 2 and args[2] is not None and np.asarray(args[2]).size else None
    sizes = args[3] if len(args) > 3 and args[3] is not None and np.asarray(args[3]).size else None
    if sizes is not None:
        out = _ints(sizes)[2:]
    elif scales is not None:
        s = np.asarray(scales, np.float64).ravel()
        out = [int(np.floor(n * f)) for n, f in zip(x.shape[2:], s[2:])]
    else:
        raise ValueError("OnnxTail: Resize needs scales or sizes")
    integer = all(o % n == 0 and o // n == out[0] // x.shape[2] for o, n in zip(out, x.shape[2:]))
    if mode == "nearest":
        rounding = attrs.get("nearest_mode", b"round_prefer_floor").decode()
        if transform == "asymmetric" and rounding == "floor":
            return F.interpolate(x, size=out, mode="nearest")
        if transform in ("half_pixel", "pytorch_half_pixel") and integer and rounding.startswith("round"):
            # integer up-scaling: (i + 0.5) / s - 0.5 never ties, and rounds to torch's floor(i / s)
            return F.interpolate(x, size=out, mode="nearest")
    elif mode == "linear":
        if transform in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=out, mode="bilinear", align_corners=False)
        if transform == "align_corners":
            return F.interpolate(x, size=out, mode="bilinear", align_corners=True)
        if transform == "asymmetric" and integer:
            return _upsample_asymmetric_linear(x, out[0] // x.shape[2])
    raise ValueError(f"OnnxTail does not support Resize mode={mode} coordinate_transformation_mode={transform}")


def _slice(data, args):
    starts, ends = _ints(args[1]), _ints(args[2])
    ndim = len(data.shape)
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        n = data.shape[axis % ndim]
        if step < 0:
            raise ValueError("OnnxTail does not support Slice with negative steps")
        start, end = (max(0, min(n, v + n if v < 0 else v)) for v in (start, end))
        index[axis % ndim] = slice(start, end, step)
    return data[tuple(index)]


# Shape arithmetic on constants (numpy), the ops exporters put between Shape and Reshape/Resize.
_NUMPY_OPS = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b if a.dtype.kind in "iu" else a / b,
}


class OnnxTail(torch.nn.Module):
    """`model` (an onnx ModelProto cut to the split tensors) evaluated with torch, weights frozen.

    Call it with one tensor per graph input, in the graph's order (`input_names`); it returns one
    tensor per name of `outputs` (default: the graph's outputs).
    """

    SUPPORTED = {
        "Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
        "HardSigmoid", "HardSwish", "Tanh", "Elu", "Softplus", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf",
        "Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Reshape", "Flatten",
        "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "GlobalAveragePool",
        "GlobalMaxPool", "MaxPool", "AveragePool", "Resize", "Gemm", "MatMul", "Softmax", "LogSoftmax",
        "ReduceMean", "ReduceSum", "ReduceMax", "Pad", "Constant", "Shape", "Gather", "Cast",
    }

    def __init__(self, model, outputs: list[str] | None = None):
        super().__init__()
        graph = model.graph
        unsupported = {n.op_type for n in graph.node} - self.SUPPORTED
        if unsupported:
            raise ValueError(f"OnnxTail cannot run operators {sorted(unsupported)}")
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in self.constants]
        self.input_name = self.input_names[0]
        # a graph exported for batch 1 may bake the 1 into its reshapes: such a tail runs per sample
        self.one_at_a_time = any(i.type.tensor_type.shape.dim[:1] and i.type.tensor_type.shape.dim[0].dim_value == 1
                                 for i in graph.input if i.name in self.input_names)
        self.output_names = outputs or [o.name for o in graph.output]
        self._tensors = {}
        for k, (name, value) in enumerate(self.constants.items()):
            if value.dtype.kind == "f" and value.ndim >= 1 and value.size > 1:
                self.register_buffer(f"w{k}", torch.from_numpy(np.array(value, np.float32)))
                self._tensors[name] = f"w{k}"
        self.nodes = []
        for n in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Constant":
                self.constants[n.output[0]] = (numpy_helper.to_array(attrs["value"]) if "value" in attrs else
                                               np.asarray(next(v for v in attrs.values())))
                continue
            self.nodes.append((n.op_type, list(n.input), list(n.output), attrs))

    def _value(self, env, name):
        if name in env:
            return env[name]
        if name in self._tensors:
            return getattr(self, self._tensors[name])
        return self.constants[name]

    def forward(self, *xs):
        if len(xs) != len(self.input_names):
            raise ValueError(f"the tail takes {len(self.input_names)} tensors ({', '.join(self.input_names)}), "
                             f"got {len(xs)}")
        if self.one_at_a_time and len(xs[0]) > 1:
            runs = [self.forward(*(x[i : i + 1] for x in xs)) for i in range(len(xs[0]))]
            return [torch.cat(parts) for parts in zip(*runs)]
        env = dict(zip(self.input_names, xs))
        for op, inputs, outputs, attrs in self.nodes:
            args = [self._value(env, i) if i else None for i in inputs]
            result = self._run(op, args, attrs, len(outputs))
            for name, value in zip(outputs, result if isinstance(result, (list, tuple)) else [result]):
                env[name] = value
        return [env[name] for name in self.output_names]

    @staticmethod
    def _tensor(v):
        return torch.from_numpy(np.array(v, np.float32)) if isinstance(v, np.ndarray | np.generic) else v

    def _run(self, op, args, attrs, n_outputs):  # noqa: C901 - one branch per operator reads best flat
        if all(a is None or isinstance(a, np.ndarray | np.generic) for a in args):
            folded = self._fold(op, args, attrs)
            if folded is not None:
                return folded
        t = self._tensor
        x = t(args[0])
        if op == "Conv":
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
                raise ValueError(f"OnnxTail does not support Conv auto_pad={attrs['auto_pad']!r}")
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                x, padding = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), 0
            else:
                padding = (pads[0], pads[1])
            return F.conv2d(x, t(args[1]), t(args[2]) if len(args) > 2 else None,
                            stride=tuple(attrs.get("strides", [1, 1])), padding=padding,
                            dilation=tuple(attrs.get("dilations", [1, 1])), groups=attrs.get("group", 1))
        if op == "ConvTranspose":
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3] or "output_shape" in attrs:
                raise ValueError("OnnxTail supports ConvTranspose with symmetric pads only")
            return F.conv_transpose2d(x, t(args[1]), t(args[2]) if len(args) > 2 else None,
                                      stride=tuple(attrs.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                                      output_padding=tuple(attrs.get("output_padding", [0, 0])),
                                      groups=attrs.get("group", 1), dilation=tuple(attrs.get("dilations", [1, 1])))
        if op == "BatchNormalization":
            scale, bias, mean, var = (t(a) for a in args[1:5])
            shape = (1, -1) + (1,) * (x.dim() - 2)
            inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
            return (x - mean.view(shape)) * inv.view(shape) + bias.view(shape)
        unary = {
            "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
            "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Identity": lambda v: v,
            "Dropout": lambda v: v, "Softplus": F.softplus, "HardSwish": F.hardswish,
            "LeakyRelu": lambda v: F.leaky_relu(v, attrs.get("alpha", 0.01)),
            "Elu": lambda v: F.elu(v, attrs.get("alpha", 1.0)),
            "HardSigmoid": lambda v: torch.clamp(attrs.get("alpha", 0.2) * v + attrs.get("beta", 0.5), 0, 1),
            "GlobalAveragePool": lambda v: v.mean(dim=tuple(range(2, v.dim())), keepdim=True),
            "GlobalMaxPool": lambda v: v.amax(dim=tuple(range(2, v.dim())), keepdim=True),
        }
        if op in unary:
            return unary[op](x)
        if op == "PRelu":
            slope = t(args[1])
            if slope.dim() == 1 and x.dim() > 2 and slope.numel() == x.shape[1]:
                slope = slope.view(1, -1, *([1] * (x.dim() - 2)))
            return torch.where(x >= 0, x, x * slope)
        if op == "Clip":
            bounds = [float(np.asarray(args[i]).ravel()[0]) if len(args) > i and args[i] is not None else None
                      for i in (1, 2)]
            return torch.clamp(x, attrs.get("min", bounds[0]), attrs.get("max", bounds[1]))
        if op in ("Max", "Min"):
            for other in args[1:]:
                x = (torch.maximum if op == "Max" else torch.minimum)(x, t(other))
            return x
        if op in ("Add", "Sub", "Mul", "Div", "Pow"):
            return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}[op](
                x, t(args[1]))
        if op == "Reshape":
            shape = _ints(args[1])
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return x.reshape(shape)
        if op == "Flatten":
            axis = attrs.get("axis", 1) % x.dim()
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op == "Transpose":
            return x.permute(*attrs.get("perm", list(range(x.dim()))[::-1]))
        if op == "Concat":
            return torch.cat([t(a) for a in args], dim=attrs["axis"])
        if op == "Split":
            axis = attrs.get("axis", 0) % x.dim()
            sizes = attrs.get("split") or (_ints(args[1]) if len(args) > 1 and args[1] is not None else None)
            if sizes is None:
                sizes = [x.shape[axis] // n_outputs] * n_outputs
            return list(torch.split(x, sizes, dim=axis))
        if op == "Slice":
            return _slice(x, args)
        if op == "Squeeze":
            axes = _axes(attrs, args, 1, x.dim())
            return x.squeeze() if axes is None else x.squeeze(tuple(axes))
        if op == "Unsqueeze":
            axes = _axes(attrs, args, 1, x.dim() + len(_ints(args[1]) if len(args) > 1 else attrs["axes"]))
            for a in sorted(axes):
                x = x.unsqueeze(a)
            return x
        if op == "MaxPool":
            if n_outputs > 1:
                raise ValueError("OnnxTail does not support MaxPool's Indices output")
            x, padding = _pool_padding(x, attrs, float("-inf"))
            return F.max_pool2d(x, attrs["kernel_shape"], attrs.get("strides", [1, 1]), padding,
                                dilation=attrs.get("dilations", [1, 1]), ceil_mode=bool(attrs.get("ceil_mode", 0)))
        if op == "AveragePool":
            include = bool(attrs.get("count_include_pad", 0))
            pads = attrs.get("pads", [0, 0, 0, 0])
            if (pads[0] != pads[2] or pads[1] != pads[3]) and not include:
                raise ValueError("OnnxTail supports AveragePool with asymmetric pads only when they count")
            x, padding = _pool_padding(x, attrs, 0.0)
            return F.avg_pool2d(x, attrs["kernel_shape"], attrs.get("strides", [1, 1]), padding,
                                ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include)
        if op == "Resize":
            return _resize(x, attrs, args)
        if op == "Gemm":
            a, b = x, t(args[1])
            a = a.t() if attrs.get("transA", 0) else a
            b = b.t() if attrs.get("transB", 0) else b
            y = attrs.get("alpha", 1.0) * (a @ b)
            return y + attrs.get("beta", 1.0) * t(args[2]) if len(args) > 2 and args[2] is not None else y
        if op == "MatMul":
            return x @ t(args[1])
        if op in ("Softmax", "LogSoftmax"):
            axis = attrs.get("axis", -1)
            return (F.softmax if op == "Softmax" else F.log_softmax)(x, dim=axis)
        if op in ("ReduceMean", "ReduceSum", "ReduceMax"):
            axes = _axes(attrs, args, 1, x.dim()) or list(range(x.dim()))
            keep = bool(attrs.get("keepdims", 1))
            if op == "ReduceMax":
                return x.amax(dim=tuple(axes), keepdim=keep)
            return (x.mean if op == "ReduceMean" else x.sum)(dim=tuple(axes), keepdim=keep)
        if op == "Pad":
            if attrs.get("mode", b"constant") != b"constant":
                raise ValueError(f"OnnxTail supports only constant Pad, got {attrs['mode']!r}")
            pads = attrs.get("pads") or _ints(args[1])
            value = float(np.asarray(args[2]).ravel()[0]) if len(args) > 2 and args[2] is not None else 0.0
            half = len(pads) // 2
            torch_pads = []
            for d in reversed(range(half)):
                torch_pads += [pads[d], pads[d + half]]
            return F.pad(x, torch_pads, value=value)
        if op == "Shape":
            return np.asarray(x.shape, np.int64)
        if op == "Cast":
            return x
        if op == "Gather":
            index = torch.as_tensor(np.asarray(args[1], np.int64))
            return torch.index_select(x, attrs.get("axis", 0), index.ravel()).reshape(
                *x.shape[: attrs.get("axis", 0)], *index.shape, *x.shape[attrs.get("axis", 0) + 1 :])
        raise ValueError(f"OnnxTail cannot run operator {op}")

    @staticmethod
    def _fold(op, args, attrs):
        """`op` on numpy constants (shape arithmetic), or None to run it in torch."""
        if op in _NUMPY_OPS:
            return _NUMPY_OPS[op](np.asarray(args[0]), np.asarray(args[1]))
        if op == "Concat":
            return np.concatenate([np.atleast_1d(a) for a in args], axis=attrs["axis"])
        if op == "Gather":
            return np.take(args[0], np.asarray(args[1], np.int64), axis=attrs.get("axis", 0))
        if op == "Unsqueeze":
            axes = attrs.get("axes") or _ints(args[1])
            return np.expand_dims(args[0], tuple(axes))
        if op == "Squeeze":
            axes = attrs.get("axes") or (_ints(args[1]) if len(args) > 1 and args[1] is not None else None)
            return np.squeeze(args[0], None if axes is None else tuple(axes))
        if op == "Cast":
            return np.asarray(args[0]).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op == "Slice":
            return _slice(np.asarray(args[0]), args)
        if op in ("Identity", "Reshape"):
            return args[0] if op == "Identity" else np.reshape(args[0], _ints(args[1]))
        return None


def load_tail(model_path: str, layers: str | list[str], outputs: list[str] | None = None) -> OnnxTail:
    """The tail of `model_path` from `layers` (tensor names or a manifest alias) to `outputs`
    (default: the network's outputs), frozen."""
    from ..onnxmodel import Manifest, extract, load_model

    model = load_model(model_path)
    tensors = Manifest.for_model(model_path).resolve_layers(layers)
    outputs = outputs or [o.name for o in model.graph.output]
    try:
        tail = OnnxTail(extract(model, tensors, outputs), outputs)
    except ValueError as err:
        raise InvalidInputError(f"{model_path}: {err}") from err
    tail.eval()
    for p in tail.parameters():
        p.requires_grad_(False)
    return tail


def check_against_onnxruntime(model_path: str, layers: str | list[str], outputs: list[str] | None,
                              xs: np.ndarray | list[np.ndarray], tail: OnnxTail | None = None) -> float:
    """Max |Δ| between the torch tail (`tail`, or `load_tail`'s) and onnxruntime on the same
    activations, relative to the largest |output| (1.0 caps it)."""
    from ..onnxmodel import Manifest, extract, load_model, session

    tensors = Manifest.for_model(model_path).resolve_layers(layers)
    tail = tail or load_tail(model_path, tensors, outputs)
    xs = [xs] if isinstance(xs, np.ndarray) else list(xs)
    feeds = dict(zip(tensors, xs))
    run = session(extract(load_model(model_path), tensors, tail.output_names)).run
    if tail.one_at_a_time:  # the graph takes batches of 1 only
        runs = [run(tail.output_names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(len(xs[0]))]
        reference = [np.concatenate(parts) for parts in zip(*runs)]
    else:
        reference = run(tail.output_names, feeds)
    with torch.no_grad():
        ours = tail(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in tail.input_names))
    return max(float(np.max(np.abs(r - o.numpy())) / max(1.0, float(np.max(np.abs(r)))))
               for r, o in zip(reference, ours))
