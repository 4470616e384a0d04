"""Array input/output: .npy, HDF5, layouts and refusals."""

import io

import h5py
import numpy as np
import pytest

import featcodec
from featcodec.errors import InvalidInputError
from featcodec.io import atomic_write, read_tensor, read_tensors, split_hdf5_spec, to_nchw, write_array


def test_split_hdf5_spec_keeps_colons_in_names():
    assert split_hdf5_spec("a.h5:/tower_0/mul:0") == ("a.h5", "/tower_0/mul:0")
    assert split_hdf5_spec("dir.h5x/a.npy") == ("dir.h5x/a.npy", None)
    assert split_hdf5_spec("a.hdf5") == ("a.hdf5", None)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_npy_round_trip_keeps_dtype(tmp_path, dtype):
    x = np.random.default_rng(0).random((2, 3, 4, 5)).astype(dtype)
    write_array(str(tmp_path / "x.npy"), x)
    t = read_tensor(str(tmp_path / "x.npy"))
    assert t.array.dtype == dtype
    np.testing.assert_array_equal(t.array, x)


def test_object_array_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInputError, match="object arrays are refused"):
        read_tensor(str(tmp_path / "o.npy"))


def test_hdf5_every_dataset_and_one(tmp_path):
    path = tmp_path / "acts.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/S1/acts", data=np.zeros((1, 2, 3, 3), np.float32)).attrs["layer"] = "s1:0"
        f.create_dataset("/S2/acts", data=np.ones((1, 4, 3, 3), np.float32))
    tensors = read_tensors(str(path))
    assert [t.name for t in tensors] == ["/S1/acts", "/S2/acts"]
    assert tensors[0].attrs["layer"] == "s1:0"
    assert read_tensor(f"{path}:/S2/acts").array.shape == (1, 4, 3, 3)
    with pytest.raises(InvalidInputError, match="holds 2 datasets"):
        read_tensor(str(path))
    with pytest.raises(InvalidInputError, match="no dataset '/nope'"):
        read_tensor(f"{path}:/nope")


def test_stdin_detects_format():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((1, 2, 2), np.float32))
    assert read_tensor("-", stdin=io.BytesIO(buffer.getvalue())).array.shape == (1, 2, 2)
    with pytest.raises(InvalidInputError, match="neither"):
        read_tensor("-", stdin=io.BytesIO(b"hello"))


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros(5, np.float32), "expected"),
        (np.zeros((2, 2), np.float32), "expected"),
        (np.zeros((1, 1, 1, 1, 1), np.float32), "expected"),
        (np.zeros((2, 2, 2), np.int8), "dtype int8"),
        (np.array([[[np.nan]]], np.float32), "NaN or Inf"),
        (np.array([[[np.inf]]], np.float64), "NaN or Inf"),
        (np.zeros((0, 2, 2), np.float32), "empty"),
    ],
)
def test_bad_arrays_refused(array, message):
    with pytest.raises(InvalidInputError, match=message):
        to_nchw(array)
    with pytest.raises(InvalidInputError, match=message):
        featcodec.encode(array, "raw")


def test_nhwc_layout_round_trip():
    x = np.random.default_rng(0).random((2, 5, 6, 3)).astype(np.float32)  # N,H,W,C
    blob = featcodec.encode(x, "raw", layout="nhwc")
    assert featcodec.info(blob)["shape"] == [2, 3, 5, 6]
    np.testing.assert_array_equal(featcodec.decode(blob), x)
    np.testing.assert_array_equal(featcodec.decode(blob, sample=1), x[1])


def test_atomic_write_never_clobbers_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(InvalidInputError, match="--force"):
        atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"old"

    def failing(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing, force=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"), force=True)
    assert target.read_bytes() == b"new"
