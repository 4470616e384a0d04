"""Reading and writing arrays: ``.npy``, HDF5 (``file.h5`` or ``file.h5:/group/name``), ``-``.

Outputs are written atomically (temporary file in the same folder, then rename) and an
existing file is never replaced unless ``force`` is set.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError

NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass
class Tensor:
    """One array read from an input, with where it came from."""

    name: str
    array: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def split_hdf5_spec(spec: str) -> tuple[str, str | None]:
    """``"a.h5:/g/x:0"`` → ``("a.h5", "/g/x:0")``; dataset names may themselves hold ':'."""
    lowered = spec.lower()
    for suffix in HDF5_SUFFIXES:
        at = lowered.find(suffix + ":")
        if at >= 0:
            return spec[: at + len(suffix)], spec[at + len(suffix) + 1 :] or None
    return spec, None


def is_hdf5_path(path: str) -> bool:
    return path.lower().endswith(HDF5_SUFFIXES)


def _h5py():
    import h5py  # imported lazily: plain .npy use should not pay for it

    return h5py


def read_tensors(spec: str, stdin=None) -> list[Tensor]:
    """Every tensor of an input: one for ``.npy``, one per dataset for HDF5.

    `spec` is a path, ``path.h5:/dataset`` or ``-`` for standard input (``.npy`` or HDF5
    bytes, told apart by their magic).
    """
    if spec == "-":
        data = (stdin or sys.stdin.buffer).read()
        if data.startswith(HDF5_MAGIC):
            return _read_hdf5(io.BytesIO(data), None, "<stdin>")
        if data.startswith(NPY_MAGIC):
            return [Tensor("stdin", load_npy(io.BytesIO(data), "<stdin>"))]
        raise InvalidInputError("standard input is neither .npy nor HDF5 data")
    path, dataset = split_hdf5_spec(spec)
    if not os.path.exists(path):
        raise InvalidInputError(f"no such file: {path}")
    if os.path.isdir(path):
        raise InvalidInputError(f"{path} is a directory (use `featcodec convert` for many files)")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(HDF5_MAGIC):
        return _read_hdf5(path, dataset, path)
    if dataset is not None:
        raise InvalidInputError(f"{path} is not an HDF5 file, so it has no dataset {dataset!r}")
    if magic.startswith(NPY_MAGIC):
        return [Tensor(Path(path).stem, load_npy(path, path))]
    raise InvalidInputError(f"{path}: unrecognised format (expected .npy or HDF5)")


def read_tensor(spec: str, stdin=None) -> Tensor:
    """The single tensor of an input; an HDF5 file with several datasets must name one."""
    tensors = read_tensors(spec, stdin)
    if len(tensors) != 1:
        names = ", ".join(t.name for t in tensors[:8]) + (", …" if len(tensors) > 8 else "")
        raise InvalidInputError(
            f"{spec} holds {len(tensors)} datasets ({names}): name one as FILE.h5:/DATASET, "
            "or convert them all with `featcodec convert`"
        )
    return tensors[0]


MAX_NPY_HEADER = 65535  # what a version 1.0 header can say; featcodec's arrays need far less


def iter_npy(source, label: str = "<stdin>") -> Iterator[np.ndarray]:
    """Arrays of a stream of concatenated ``.npy`` files (a pipe: each is yielded once its bytes have
    arrived, so a producer can send one sample at a time). Object arrays are refused."""
    from .container import _read_exact

    index = 0
    while True:
        magic = _read_exact(source.read, 8)
        if not magic:
            return
        where = f"{label} (array {index})"
        if len(magic) < 8 or not magic.startswith(NPY_MAGIC):
            raise InvalidInputError(f"{where}: not a .npy array (concatenated .npy files expected)")
        size_bytes = 2 if magic[6] == 1 else 4
        raw_size = _read_exact(source.read, size_bytes)
        header_size = int.from_bytes(raw_size, "little") if len(raw_size) == size_bytes else -1
        if not 0 <= header_size <= MAX_NPY_HEADER:
            raise InvalidInputError(f"{where}: truncated or implausible .npy header")
        header = _read_exact(source.read, header_size)
        try:  # parsed as a version 1.0 header whatever the version said (the text is the same)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                io.BytesIO(len(header).to_bytes(2, "little") + bytes(header)))
        except (ValueError, TypeError, SyntaxError) as err:
            raise InvalidInputError(f"{where}: bad .npy header: {err}") from None
        if dtype.hasobject:
            raise InvalidInputError(f"{where}: object arrays are refused (featcodec never unpickles)")
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        body = _read_exact(source.read, count)
        if len(body) < count:
            raise InvalidInputError(f"{where}: truncated after {len(body)} of {count} bytes")
        array = np.frombuffer(body, dtype)
        yield array.reshape(shape, order="F" if fortran else "C")
        index += 1


def load_npy(source, label: str) -> np.ndarray:
    try:
        return np.load(source, allow_pickle=False, mmap_mode="r" if isinstance(source, str) else None)
    except ValueError as err:
        if "pickle" in str(err) or "object" in str(err):
            raise InvalidInputError(f"{label}: object arrays are refused (featcodec never unpickles)") from err
        raise InvalidInputError(f"{label}: not a valid .npy file: {err}") from err
    except (OSError, EOFError) as err:
        raise InvalidInputError(f"{label}: cannot read .npy: {err}") from err


def _read_hdf5(source, dataset: str | None, label: str) -> list[Tensor]:
    h5py = _h5py()
    try:
        with h5py.File(source, "r") as f:
            if dataset is not None:
                node = f.get(dataset)
                if isinstance(node, h5py.Group) and node.attrs.get("featcodec_role") == "split":
                    # a multi-tensor split point as `dump` stores it: its tensors, in order
                    return [_tensor_from_dataset(node[name]) for name in sorted(node, key=int)]
                if not isinstance(node, h5py.Dataset):
                    available = ", ".join(_dataset_names(f)[:8]) or "none"
                    raise InvalidInputError(f"{label} has no dataset {dataset!r} (datasets: {available})")
                return [_tensor_from_dataset(node)]
            tensors = [_tensor_from_dataset(f[name]) for name in activation_datasets(f)]
    except OSError as err:
        raise InvalidInputError(f"{label}: cannot read HDF5: {err}") from err
    if not tensors:
        raise InvalidInputError(f"{label} holds no dataset")
    return tensors


def iter_hdf5_samples(spec: str) -> tuple[dict[str, Any], Iterator[np.ndarray]]:
    """A dataset of an HDF5 file (``FILE.h5:/DATASET``, or a file holding one) read sample by sample:
    its attributes and an iterator over its first axis (a 3-D dataset is one sample)."""
    path, dataset = split_hdf5_spec(spec)
    if not os.path.exists(path):
        raise InvalidInputError(f"no such file: {path}")
    try:
        handle = _h5py().File(path, "r")
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot read HDF5: {err}") from err
    names = [dataset] if dataset is not None else activation_datasets(handle)
    node = handle.get(names[0]) if len(names) == 1 else None
    if not isinstance(node, _h5py().Dataset) or node.dtype.kind not in "fiub":
        handle.close()
        raise InvalidInputError(f"{spec}: name one numeric dataset as FILE.h5:/DATASET (datasets: "
                                f"{', '.join(names[:8]) or 'none'})")
    attrs = hdf5_attrs(node)

    def samples():
        try:
            if node.ndim == 4:
                for i in range(node.shape[0]):
                    yield node[i]
            else:
                yield node[()]
        finally:
            handle.close()

    return attrs, samples()


def _dataset_names(h5file) -> list[str]:
    h5py = _h5py()
    names: list[str] = []
    h5file.visititems(lambda name, node: names.append("/" + name) if isinstance(node, h5py.Dataset) else None)
    return names


def activation_datasets(h5file) -> list[str]:
    """The activation datasets of an open HDF5 file ("/group/name", file order), without the reference
    outputs and metadata that `featcodec dump` stores beside them."""
    return [name for name in _dataset_names(h5file) if "featcodec_role" not in h5file[name].attrs]


def open_bitstream(spec: str, stdin=None):
    """A binary reader of a .fcb file, or standard input for ``-``."""
    if spec == "-":
        return stdin or sys.stdin.buffer
    if os.path.isdir(spec):
        raise InvalidInputError(f"{spec} is a directory, not a .fcb file")
    try:
        return open(spec, "rb")  # noqa: SIM115 (the caller reads and closes it)
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {spec}") from None


def read_bitstream(spec: str, stdin=None) -> bytes:
    """The bytes of a .fcb file, or of standard input for ``-``."""
    if spec == "-":
        return open_bitstream(spec, stdin).read()
    with open_bitstream(spec) as f:
        return f.read()


def _tensor_from_dataset(node) -> Tensor:
    if node.dtype.kind not in "fiub":
        raise InvalidInputError(f"dataset {node.name} has dtype {node.dtype}, not a numeric array")
    return Tensor(node.name, node[()], hdf5_attrs(node))


def hdf5_attrs(node) -> dict[str, Any]:
    """An HDF5 node's attributes as plain Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in node.attrs.items()}


def to_nchw(array: np.ndarray, layout: str = "nchw", label: str = "input") -> np.ndarray:
    """Check an activation tensor and return it as float (N, C, H, W) or (C, H, W) in NCHW order.

    Refuses what featcodec cannot code faithfully: non-float dtypes, fewer or more than
    3-4 dimensions, empty arrays and NaN/Inf.
    """
    array = np.asanyarray(array)
    if array.dtype.name not in FLOAT_DTYPES:
        raise InvalidInputError(
            f"{label}: dtype {array.dtype} is not supported; featcodec codes float16/float32/float64 activations"
        )
    if array.ndim not in (3, 4):
        raise InvalidInputError(
            f"{label}: shape {array.shape} has {array.ndim} dimension(s); expected (N,C,H,W) or (C,H,W)"
        )
    if array.size == 0:
        raise InvalidInputError(f"{label}: shape {array.shape} is empty")
    if layout == "nhwc":
        array = np.moveaxis(array, -1, -3)
    elif layout != "nchw":
        raise InvalidInputError(f"unknown layout {layout!r}: use nchw or nhwc")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{label}: holds NaN or Inf values, which no codec can represent")
    return array


def from_nchw(array: np.ndarray, layout: str) -> np.ndarray:
    """Undo `to_nchw`'s transposition for channel-last tensors."""
    return np.ascontiguousarray(np.moveaxis(array, -3, -1)) if layout == "nhwc" else array


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], force: bool = False) -> None:
    """Call ``write(tmp_path)`` then move the temporary file onto `path` in one step.

    Without `force` an existing `path` is an error, checked again at the final link so a
    file that appears meanwhile is not clobbered either. A failed write leaves nothing behind.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not force:
        raise InvalidInputError(f"{path} exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidInputError(f"cannot write {path}: folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".featcodec-", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: no clobbering
            except FileExistsError:
                raise InvalidInputError(f"{path} exists; pass --force to overwrite it") from None
            except OSError:
                os.replace(tmp, path)  # file systems without hard links
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes, force: bool = False, stdout=None) -> None:
    """Write `data` to `path` atomically, or to standard output when `path` is ``-``."""
    if path == "-":
        out = stdout or sys.stdout.buffer
        out.write(data)
        out.flush()
        return

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write, force)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_array(path: str, array: np.ndarray, force: bool = False, dataset: str = "features",
                attrs: dict[str, Any] | None = None, stdout=None) -> None:
    """Write one array as ``.npy`` (or to ``-``) or, for an HDF5 suffix, as one dataset."""
    file_path, spec_dataset = split_hdf5_spec(path)
    if path != "-" and is_hdf5_path(file_path):
        write_hdf5(file_path, {spec_dataset or dataset: (array, attrs or {})}, force)
    else:
        write_bytes(path, npy_bytes(array), force, stdout)


def write_hdf5(path: str, datasets: dict[str, tuple[np.ndarray, dict[str, Any]]], force: bool = False) -> None:
    """Write datasets (name → (array, attributes)) to a new HDF5 file; names may hold groups."""
    h5py = _h5py()

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for name, (array, attrs) in datasets.items():
                node = f.create_dataset(name, data=array)
                for key, value in attrs.items():
                    node.attrs[key] = value

    atomic_write(path, write, force)
