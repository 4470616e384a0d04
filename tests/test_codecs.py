"""Every registered codec goes through the same round-trip, config and golden checks."""

from pathlib import Path

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.container import Bitstream
from featcodec.registry import codec_ids, get_codec
from tests.common import check_config, check_encode_decode, relu_activations

# Parameter sets per codec id. A newly registered codec must add itself here
# (test_every_codec_has_cases fails otherwise), and then gets every generic test.
CODEC_CASES = {
    "raw": [{}, {"dtype": "float16"}, {"zstd": 3}, {"dtype": "float16", "zstd": 19}],
    "uniform": [{}, {"levels": 2, "clip": [0.0, 1.5]}, {"levels": 16, "clip": [0.0, 1.5], "zstd": 0}],
    "lightweight": [
        {},
        {"levels": 2},
        {"levels": 8, "quantizer": "ecsq", "lam": 0.01},
        {"levels": 3, "clip": "model"},
        {"levels": 5, "activation": "leaky:0.1", "clip": [-0.5, 2.0]},
        {"table": {"thresholds": [0.25, 0.75], "levels": [0.0, 0.5, 1.0]}},
        {"levels": 6, "fast": True},
    ],
    "fpc": [{"preset": "ultrafast"}, {"lossless": True, "preset": "ultrafast"},
            {"qp": 30, "bitdepth": 10, "norm": "channel", "preset": "ultrafast"}],
    "tiling": [{}, {"lossless": True, "norm": "channel", "preset": "ultrafast"}, {"qp": 40, "bitdepth": 10}],
    "autotiler": [{"preset": "ultrafast"}, {"cr": 16, "qp": 30, "preset": "ultrafast"},
                  {"cr": 4, "lossless": True, "bitdepth": 10, "preset": "ultrafast"}],
    "learned": [{}, {"step": 1 / 3}, {"step": 1 / 15}, {"kbpi": 4}],
}
# Codecs with trained models serve only the layers they were trained for: they get real
# activations of those layers (cropped; the networks are fully convolutional).
MODEL_SHAPES = {"autotiler": [(1, 24, 32, 48), (2, 72, 16, 16), (1, 128, 24, 24)],
                "learned": [(2, 72, 16, 16), (1, 72, 24, 40)]}
DEMO = Path(__file__).resolve().parents[1] / "examples" / "reference_demo.h5"
CASES = [(cid, params) for cid, plist in CODEC_CASES.items() for params in plist]
SHAPES = [(1, 1, 1, 1), (2, 3, 13, 17), (4, 256, 52, 52), (3, 13, 13)]
SHAPE_CASES = [(cid, params, shape) for cid, params in CASES for shape in MODEL_SHAPES.get(cid, SHAPES)]


def make_input(codec_id, shape, seed=0, dtype=np.float32):
    """Activation-like data of `shape`; real activations for codecs bound to trained layers."""
    if codec_id not in MODEL_SHAPES:
        return relu_activations(shape, seed=seed, dtype=dtype)
    layer = {24: "S1", 72: "S2", 128: "S4"}[shape[1]]
    with h5py.File(DEMO) as f:
        data = f[layer][: shape[0], :, 40 : 40 + shape[2], 50 : 50 + shape[3]]
    return np.ascontiguousarray(data, dtype=dtype)


def test_every_codec_has_cases():
    assert sorted(CODEC_CASES) == codec_ids()


@pytest.mark.parametrize("codec_id,params,shape", SHAPE_CASES, ids=[f"{c}-{p}-{s}" for c, p, s in SHAPE_CASES])
def test_round_trip(codec_id, params, shape):
    codec = get_codec(codec_id, **params)
    array = make_input(codec_id, shape, seed=len(shape))
    decoded = check_encode_decode(codec, array)
    # Lossy or not, the reconstruction must carry information about the input.
    if array.size > 100:
        error = np.sqrt(np.mean((decoded - array) ** 2))
        assert error < array.std()  # better than predicting a constant


@pytest.mark.parametrize("codec_id,params", CASES, ids=[f"{c}-{p}" for c, p in CASES])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtype_kept(codec_id, params, dtype):
    shape = MODEL_SHAPES.get(codec_id, [(2, 4, 8, 8)])[0]
    array = make_input(codec_id, shape, dtype=dtype)
    check_encode_decode(get_codec(codec_id, **params), array)


@pytest.mark.parametrize("codec_id,params", CASES, ids=[f"{c}-{p}" for c, p in CASES])
def test_config(codec_id, params):
    check_config(get_codec(codec_id, **params))


@pytest.mark.parametrize("codec_id,params", CASES, ids=[f"{c}-{p}" for c, p in CASES])
def test_constant_and_signed_input(codec_id, params):
    codec = get_codec(codec_id, **params)
    channels = MODEL_SHAPES[codec_id][0][1] if codec_id in MODEL_SHAPES else 2
    check_encode_decode(codec, np.full((1, channels, 4, 4), 3.25, np.float32))
    signed = np.random.default_rng(1).normal(0, 5, (1, channels + (codec_id not in MODEL_SHAPES), 9, 9))
    signed = signed.astype(np.float32)
    check_encode_decode(codec, signed)


def test_uniform_decodes_relu_zero_exactly_and_respects_cells():
    x = relu_activations((1, 8, 16, 16))
    codec = get_codec("uniform", levels=4, clip=[0.0, 1.5])
    y = featcodec.decode(featcodec.encode(x, codec))
    assert np.all(y[x == 0] == 0)
    levels = np.linspace(0, 1.5, 4).astype(np.float32)
    assert np.isin(y, levels).all()
    # Each element decodes to the nearest level of its clipped value.
    nearest = levels[np.abs(np.clip(x, 0, 1.5)[..., None] - levels).argmin(-1)]
    np.testing.assert_array_equal(y, nearest)


def test_unknown_codec_lists_available():
    with pytest.raises(featcodec.UnknownCodecError, match="available: .*raw"):
        get_codec("nope")


def test_unknown_parameter_is_refused():
    with pytest.raises(featcodec.InvalidInputError, match="takes no parameter levels"):
        get_codec("raw", levels=3)


@pytest.mark.parametrize("params", [{"levels": 1}, {"levels": 300}, {"clip": [2, 1]}, {"zstd": 99}])
def test_bad_uniform_parameters(params):
    with pytest.raises(featcodec.InvalidInputError):
        get_codec("uniform", **params)


@pytest.mark.parametrize("name", [f"lightweight{kind}_v{version}" for version in (4, 5, 6, 7)
                                  for kind in ("", "_signed", "_blocks", "_partners")] + ["lightweight_binary_v7"])
def test_lightweight_encoder_is_pinned_by_golden_bytes(name):
    """The kernel's integer arithmetic is the same on every machine: re-encoding a golden file's
    values must give its payloads byte for byte (a change is a new coder version, never an accident)."""
    from featcodec.codecs.lightweight import symbol_order
    from featcodec.entropy import encode_values
    from tests.common import GOLDEN

    blob = (GOLDEN / f"{name}.fcb").read_bytes()
    stream = Bitstream.parse(blob)
    expected = np.load(GOLDEN / f"{name}.expected.npy")
    config = stream.header["codec"]
    for i, values in enumerate(expected.reshape(-1, *expected.shape[-3:])):
        table = config.get("table") or stream.header["samples"][i]
        payload = encode_values(values, table["thresholds"], symbol_order(table), len(table["levels"]),
                                table.get("parents"), table["coder"])
        assert payload == stream.payload(i)


@pytest.mark.parametrize("declared", [1 << 40, 20 << 30])
def test_zstd_frame_declaring_a_huge_size_is_corrupt_not_an_allocation(declared):
    """A crafted frame (valid CRCs around it) declares a content size of 1 TB / 20 GB: refused
    without allocating it (python-zstandard's one-shot decompress would try)."""
    import struct

    from featcodec.lossless import zstd_decompress

    # magic, header: 8-byte content size + single segment, then one raw last block of 1 byte
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", declared) + b"\x09\x00\x00" + b"\x00"
    with pytest.raises(featcodec.CorruptStreamError):
        zstd_decompress(frame, 64)
    x = relu_activations((1, 2, 4, 4))
    stream = Bitstream.parse(featcodec.encode(x, "uniform", levels=4))
    from featcodec.container import pack

    with pytest.raises(featcodec.CorruptStreamError):
        featcodec.decode(pack(stream.header, [frame]))


def test_zstd_payload_longer_than_declared_is_corrupt():
    from featcodec.lossless import zstd_compress, zstd_decompress

    frame = zstd_compress(b"\x01" * 100, 3)
    assert zstd_decompress(frame, 100) == b"\x01" * 100
    for expected in (99, 101):
        with pytest.raises(featcodec.CorruptStreamError):
            zstd_decompress(frame, expected)
