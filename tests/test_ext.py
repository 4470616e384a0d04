"""featcodec codecs inside numcodecs and Zarr v3 (featcodec/ext), registered by entry point."""

import json
import subprocess
import sys

import numpy as np
import pytest

import featcodec
from featcodec.registry import BUILTIN_CODECS
from tests.common import relu_activations

zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")


@pytest.mark.parametrize("codec_id", sorted(BUILTIN_CODECS))
def test_numcodecs_registry_and_config_round_trip(codec_id):
    codec = numcodecs.get_codec({"id": f"featcodec.{codec_id}"})
    config = codec.get_config()
    assert config["id"] == f"featcodec.{codec_id}"
    assert json.loads(json.dumps(config)) == config
    again = numcodecs.get_codec(dict(config))
    assert again == codec and again.get_config() == config


@pytest.mark.parametrize("codec_id,params", [("raw", {}), ("uniform", {"levels": 8}), ("lightweight", {"levels": 4}),
                                             ("tiling", {"preset": "ultrafast", "lossless": True})])
def test_numcodecs_encode_decode(codec_id, params):
    x = relu_activations((2, 3, 16, 16))
    codec = numcodecs.get_codec({"id": f"featcodec.{codec_id}", **params})
    encoded = codec.encode(x)
    np.testing.assert_array_equal(codec.decode(encoded), featcodec.decode(featcodec.encode(x, codec_id, **params)))
    out = np.empty_like(x)
    codec.decode(encoded, out=out)
    assert np.isfinite(out).all()


# numcodecs' own round-trip check (tests/common.py of numcodecs): the array, then bytes, bytearray and
# array.array of its memory, decoded from each kind of buffer and into `out` (an array and a bytearray).
# Per codec: the parameters and the decimal places its error stays within (None: exact). The codecs
# with networks are far from their input at any rate, so for them every kind of buffer must give the
# very decoding the array gives.
NUMCODECS_CONTRACT = {
    "raw": ({}, None),
    "uniform": ({"levels": 256, "clip": [0.0, 4.0]}, 1),
    "lightweight": ({"levels": 16}, 0),
    "fpc": ({"preset": "ultrafast", "lossless": True}, 1),
    "tiling": ({"preset": "ultrafast", "lossless": True}, 1),
    "autotiler": ({"preset": "ultrafast", "cr": 4, "lossless": True}, "same"),
    "learned": ({"step": 1 / 15}, "same"),
}


def check_every_buffer_decodes_alike(x, codec):
    """numcodecs' check_encode_decode, with the array's own decoding in place of the array."""
    import array

    expected = codec.decode(codec.encode(x))
    memory = x.tobytes()
    for buf in (memory, bytearray(memory), array.array("b", memory)):
        np.testing.assert_array_equal(codec.decode(codec.encode(buf)).reshape(x.shape), expected)
    blob = bytes(codec.encode(x))
    for buf in (bytearray(blob), array.array("b", blob), np.frombuffer(blob, "u1")):
        np.testing.assert_array_equal(codec.decode(buf), expected)
    out = np.empty_like(x)
    codec.decode(blob, out=out)
    np.testing.assert_array_equal(out, expected)
    out = bytearray(x.nbytes)
    codec.decode(blob, out=out)
    np.testing.assert_array_equal(np.frombuffer(out, x.dtype).reshape(x.shape), expected)


def test_every_codec_meets_the_numcodecs_contract_test():
    assert sorted(NUMCODECS_CONTRACT) == sorted(BUILTIN_CODECS)


@pytest.mark.parametrize("codec_id", sorted(NUMCODECS_CONTRACT))
def test_numcodecs_contract(codec_id):
    from numcodecs.tests.common import check_encode_decode

    from tests.test_codecs import MODEL_SHAPES, make_input

    params, precision = NUMCODECS_CONTRACT[codec_id]
    if precision == "same":  # a trained layer's real activations; raw memory needs its shape
        x = make_input(codec_id, MODEL_SHAPES[codec_id][0])
        check_every_buffer_decodes_alike(x, numcodecs.get_codec({"id": f"featcodec.{codec_id}", **params,
                                                                 "buffer_shape": list(x.shape)}))
        return
    x = relu_activations((2, 3, 8, 8))
    codec = numcodecs.get_codec({"id": f"featcodec.{codec_id}", **params})
    for array in (x, x[0], x[0, 0], x.ravel()):  # 4-, 3-, 2- and 1-D chunks
        check_encode_decode(np.ascontiguousarray(array), codec, precision=precision)


def test_numcodecs_buffers_of_other_dtypes_and_memory_orders():
    from numcodecs.tests.common import check_encode_decode

    x = relu_activations((6, 40)).astype(np.float64)
    check_encode_decode(x, numcodecs.get_codec({"id": "featcodec.raw", "buffer_dtype": "float64"}))
    codec = numcodecs.get_codec({"id": "featcodec.raw"})
    fortran = np.asfortranarray(x.astype(np.float32))
    out = np.empty_like(fortran)
    codec.decode(codec.encode(fortran), out=out)  # by values, whatever the memory order
    np.testing.assert_array_equal(out, fortran)
    assert codec.get_config() == {"id": "featcodec.raw", "dtype": "float32", "zstd": 0}  # defaults stay out


@pytest.mark.parametrize("config,buf,message", [
    ({}, bytes(6), "not a whole number of float32"),
    ({"buffer_shape": [2, 2]}, bytes(12), "does not fill shape"),
    ({}, "text", "as a buffer"),
])
def test_numcodecs_refuses_buffers_that_do_not_fit(config, buf, message):
    codec = numcodecs.get_codec({"id": "featcodec.raw", **config})
    with pytest.raises(featcodec.InvalidInputError, match=message):
        codec.encode(buf)
    blob = codec.encode(np.ones((1, 2, 2), np.float32))
    with pytest.raises(featcodec.InvalidInputError, match="out holds"):
        codec.decode(blob, out=bytearray(15))
    with pytest.raises(featcodec.InvalidInputError, match="out holds"):
        codec.decode(blob, out=np.empty(5, np.float32))


@pytest.mark.parametrize("config", [{"buffer_dtype": "int16"}, {"buffer_dtype": "nonsense"}, {"buffer_shape": [0, 3]},
                                    {"buffer_shape": "3"}])
def test_numcodecs_refuses_bad_buffer_settings(config):
    with pytest.raises(featcodec.InvalidInputError, match="buffer_"):
        numcodecs.get_codec({"id": "featcodec.raw", **config})


def test_unknown_parameter_is_refused():
    with pytest.raises(featcodec.InvalidInputError, match="takes no parameter"):
        numcodecs.get_codec({"id": "featcodec.raw", "levels": 3})


def test_zarr3_array_reads_back_in_a_fresh_process_with_only_import_zarr(tmp_path):
    from featcodec.ext.zarr import Lightweight

    x = relu_activations((4, 8, 16, 16))
    path = tmp_path / "acts.zarr"
    array = zarr.create_array(str(path), shape=x.shape, chunks=(1, 8, 16, 16), dtype="float32",
                              serializer=Lightweight(levels=4), compressors=None)
    array[:] = x
    metadata = json.loads((path / "zarr.json").read_text())
    assert metadata["codecs"][0]["name"] == "featcodec.lightweight"
    assert metadata["codecs"][0]["configuration"]["levels"] == 4
    reader = subprocess.run([sys.executable, "-c", f"import sys, zarr; sys.stdout.buffer.write("
                             f"zarr.open_array({str(path)!r})[:].tobytes())"], capture_output=True, check=True)
    decoded = np.frombuffer(reader.stdout, np.float32).reshape(x.shape)
    expected = np.stack([featcodec.decode(featcodec.encode(x[i : i + 1], "lightweight", levels=4))[0]
                         for i in range(len(x))])
    np.testing.assert_array_equal(decoded, expected)  # one chunk per sample, coded alone
    assert np.all(decoded[x == 0] == 0)
