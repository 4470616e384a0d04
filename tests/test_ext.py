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
