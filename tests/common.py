"""Checks every codec goes through (numcodecs-style helpers)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

import numpy as np

import featcodec
from featcodec.codecs.base import Codec
from featcodec.registry import codec_from_config

GOLDEN = Path(__file__).parent / "data" / "golden"

HEADER_FIELDS = ("featcodec", "codec", "layer", "shape", "batched", "dtype", "layout", "samples", "models",
                 "payload_bytes", "bits_per_element", "compression_ratio")


def relu_activations(shape, seed=0, sparsity=0.45, dtype=np.float32) -> np.ndarray:
    """Activation-like data: Gaussian pre-activations through a ReLU, so ~`sparsity` exact zeros."""
    rng = np.random.default_rng(seed)
    shift = -NormalDist().inv_cdf(sparsity)  # P(x < 0) = sparsity for x ~ N(shift, 1)
    return np.maximum(rng.normal(shift, 1.0, shape), 0).astype(dtype)


def check_encode_decode(codec: Codec, array: np.ndarray, *, layer: str = "test/layer:0") -> np.ndarray:
    """Round trip `array` through `codec` in a container; return the decoded array."""
    blob = featcodec.encode(array, codec, layer=layer)
    decoded = featcodec.decode(blob)
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype
    assert np.isfinite(decoded).all()
    header = featcodec.info(blob)
    for key in HEADER_FIELDS:
        assert key in header, key
    assert header["layer"] == layer
    assert header["codec"] == codec.get_config()
    assert header["dtype"] == array.dtype.name
    if codec.is_lossless and array.dtype != np.float64:
        np.testing.assert_array_equal(decoded, array)
    # Any single sample decodes alone to the same values.
    if array.ndim == 4:
        last = featcodec.decode(blob, sample=array.shape[0] - 1)
        np.testing.assert_array_equal(last, decoded[-1])
    # Determinism: same input, same bytes.
    assert featcodec.encode(array, codec, layer=layer) == blob
    return decoded


def check_config(codec: Codec) -> None:
    config = codec.get_config()
    assert json.loads(json.dumps(config)) == config, "config must survive JSON"
    rebuilt = codec_from_config(json.loads(json.dumps(config)))
    assert rebuilt == codec
    assert repr(rebuilt) == repr(codec)


def check_backwards_compatibility(name: str) -> None:
    """Decode a golden file written by an earlier version and compare with its expected output."""
    blob = (GOLDEN / f"{name}.fcb").read_bytes()
    expected = np.load(GOLDEN / f"{name}.expected.npy")
    decoded = featcodec.decode(blob)
    assert decoded.dtype == expected.dtype
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-6)
