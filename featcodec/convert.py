"""``featcodec convert``: batch conversion of dumped feature sets; parallel, resumable, loses nothing.

Sources: a directory tree of ``.npy`` or ``.fcb`` files, a glob, an HDF5 file (every
activation dataset, groups kept) or a Zarr v3 store (``.zarr``: every array, groups kept).
Destination: a directory that mirrors the source tree, an HDF5 file or a Zarr store. What happens
follows from the two:

=================================  ===========  ==================================================
source items                       ``-m`` given  destination
=================================  ===========  ==================================================
arrays (.npy, HDF5, Zarr arrays)   yes          directory of ``.fcb``, or a ``.zarr`` store (encode)
``.fcb``                           yes          directory of ``.fcb`` (transcode)
``.fcb``                           no           directory of ``.npy``, one HDF5 or a ``.zarr`` (decode)
arrays                             no           directory of ``.npy``, one HDF5 or a ``.zarr`` (repack)
=================================  ===========  ==================================================

A Zarr destination holds one array per item, one chunk per sample; encoding puts the codec and
its parameters in the array metadata as the serializer ``featcodec.<id>`` (`featcodec.ext.zarr`),
so ``zarr.open_array`` alone reads it back (featcodec installed); without ``-m`` the arrays are
stored with Zarr's default compression. Each array is written under a temporary name and renamed
into place when complete.

Every output is written atomically; one failing input is reported and the others go on.
HDF5 inputs are streamed sample by sample; an HDF5 destination is assembled from per-item
parts once every item is done, so workers never share a file handle.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .api import decode, encode_samples
from .container import Bitstream
from .errors import FeatcodecError, InvalidInputError
from .io import (
    HDF5_MAGIC,
    activation_datasets,
    atomic_write,
    hdf5_attrs,
    is_hdf5_path,
    load_npy,
    npy_bytes,
    read_bitstream,
    to_nchw,
    write_bytes,
)
from .registry import codec_from_config

TEMP_GLOB = ".featcodec-*.tmp"


@dataclass
class Job:
    """One item to convert: a file, or a dataset of an HDF5 file."""

    source: str  # a path
    dataset: str | None  # HDF5 dataset inside `source`
    relative: str  # where it goes, relative to the destination, without suffix
    kind: str  # 'array' or 'fcb'
    output: str  # the output path (for an HDF5 destination: the part file)
    action: str  # encode | transcode | decode | repack
    codec: dict | None  # codec config for encode / transcode
    verify: bool = False
    layout: str = "nchw"
    threads: int | None = None  # threads for the codec's libraries in this worker (None: theirs)
    store: str = "files"  # where `source` keeps its arrays: files (.npy / .fcb), hdf5 or zarr


@dataclass
class ItemResult:
    relative: str
    status: str  # ok | skipped | failed
    bytes_in: int = 0
    bytes_out: int = 0
    elements: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Summary:
    action: str
    destination: str
    items: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    @property
    def failed(self) -> list[ItemResult]:
        return [i for i in self.items if i.status == "failed"]

    def totals(self) -> dict[str, Any]:
        done = [i for i in self.items if i.status == "ok"]
        bytes_in = sum(i.bytes_in for i in done)
        bytes_out = sum(i.bytes_out for i in done)
        elements = sum(i.elements for i in done)
        return {
            "files": len(self.items), "converted": len(done),
            "skipped": sum(i.status == "skipped" for i in self.items), "failed": len(self.failed),
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "compression_ratio": bytes_in / bytes_out if bytes_out else None,
            "bits_per_element": 8 * bytes_out / elements if elements and self.action in ("encode", "transcode")
            else None,
            "seconds": self.seconds, "mb_per_s": bytes_in / 1e6 / self.seconds if self.seconds else None,
            "files_per_s": len(done) / self.seconds if self.seconds else None, "workers": self.workers,
        }

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "destination": self.destination, "totals": self.totals(),
                "items": [asdict(i) for i in self.items]}


# --- planning -----------------------------------------------------------------------------

def is_zarr_path(path: str) -> bool:
    return os.fspath(path).rstrip("/").endswith(".zarr")


def _zarr():
    try:
        import zarr
    except ImportError as err:
        from .errors import MissingBackendError

        raise MissingBackendError("Zarr stores need zarr 3: pip install 'featcodec[zarr]'") from err
    return zarr


def _sources(src: str) -> tuple[list[tuple[str, str | None, str]], str]:
    """(path, dataset, relative name) for every item of `src`, and their kind."""
    if is_zarr_path(src) and os.path.isdir(src):
        try:
            group = _zarr().open_group(src, mode="r")
            names = sorted(name for name, node in group.members(max_depth=None) if hasattr(node, "shape"))
        except Exception as err:  # zarr raises several kinds for a folder that is not a store
            raise InvalidInputError(f"{src} is not a readable Zarr v3 store: {err}") from None
        if not names:
            raise InvalidInputError(f"{src} holds no arrays")
        return [(src, name, name) for name in names], "zarr"
    if os.path.isfile(src):
        with open(src, "rb") as f:
            is_hdf5 = f.read(8) == HDF5_MAGIC
        if not is_hdf5:
            raise InvalidInputError(f"{src} is a single file: use `featcodec encode` / `decode` for one file")
        import h5py

        with h5py.File(src, "r") as f:
            names = activation_datasets(f)
        return [(src, name, name.lstrip("/")) for name in sorted(names)], "array"
    if os.path.isdir(src):
        base = Path(src)
        files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix in (".npy", ".fcb"))
    else:
        matches = sorted(glob.glob(src, recursive=True))
        if not matches:
            raise InvalidInputError(f"nothing matches {src!r}")
        files = [Path(m) for m in matches if Path(m).suffix in (".npy", ".fcb") and Path(m).is_file()]
        base = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
    if not files:
        raise InvalidInputError(f"no .npy or .fcb files under {src}")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise InvalidInputError(f"{src} mixes .npy and .fcb files: convert them separately")
    kind = "fcb" if kinds == {".fcb"} else "array"
    return [(str(p), None, str(p.relative_to(base).with_suffix(""))) for p in files], kind


def plan(src: str, dst: str, codec: dict | None, *, verify: bool = False,
         layout: str = "nchw") -> tuple[list[Job], str]:
    """The jobs that turn `src` into `dst`, and the action's name."""
    items, kind = _sources(src)
    store = "zarr" if kind == "zarr" else "hdf5" if items[0][1] is not None else "files"
    kind = "array" if kind == "zarr" else kind
    to_hdf5, to_zarr = is_hdf5_path(dst), is_zarr_path(dst)
    if codec is not None:
        if to_hdf5:
            raise InvalidInputError("encoding writes .fcb files: the destination must be a directory or a .zarr store")
        if to_zarr and kind == "fcb":
            raise InvalidInputError("a .zarr destination takes arrays; decode the .fcb files first, or encode "
                                    "them to .fcb files (transcode)")
        action, suffix = ("transcode" if kind == "fcb" else "encode"), ".fcb"
    else:
        action, suffix = ("decode" if kind == "fcb" else "repack"), ".npy"
    if to_zarr:
        suffix = ""  # one array per item, a folder of the store
    if os.path.abspath(dst) == os.path.abspath(src):
        raise InvalidInputError("source and destination are the same")
    parts = Path(dst + ".parts") if to_hdf5 else Path(dst)
    jobs = [Job(path, dataset, rel, kind, str(parts / (rel + suffix)), action, codec, verify, layout, store=store)
            for path, dataset, rel in items]
    return jobs, action


# --- one item (runs in a worker process) ----------------------------------------------------

def _output_is_valid(path: str) -> bool:
    """A finished output: a .fcb whose every CRC passes, or a loadable .npy of the full size."""
    try:
        if os.path.isdir(path):  # an array of a Zarr destination
            array = _zarr().open_array(path, mode="r")
            return array.nchunks_initialized == array.nchunks
        if path.endswith(".fcb"):
            stream = Bitstream.parse(read_bitstream(path))
            for i in range(stream.n_samples):
                stream.payload(i)
            return True
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array.size > 0
    except Exception:  # noqa: BLE001 (whatever the reader says, the output is redone)
        return False


def _open_array(job: Job):
    """The HDF5 dataset or Zarr array an item names, its attributes, and the call that closes it."""
    if job.store == "zarr":
        node = _zarr().open_array(job.source, path=job.dataset, mode="r")
        return node, dict(node.attrs), lambda: None
    import h5py

    handle = h5py.File(job.source, "r")
    node = handle[job.dataset]
    return node, hdf5_attrs(node), handle.close


def _samples(job: Job):
    """(iterator over NCHW samples, NCHW shape, dtype name, attrs), streaming HDF5 datasets and
    Zarr arrays sample by sample."""
    if job.dataset is not None:
        node, attrs, close = _open_array(job)
        probe = to_nchw(node[:1] if node.ndim == 4 else node[...], job.layout, job.dataset)
        shape = (node.shape[0], *probe.shape[1:]) if node.ndim == 4 else probe.shape

        def gen():
            try:
                if node.ndim == 4:
                    for i in range(node.shape[0]):
                        yield to_nchw(node[i : i + 1], job.layout, f"{job.dataset}[{i}]")[0]
                else:
                    yield probe
            finally:
                close()

        return gen(), shape, node.dtype.name, attrs
    raw = load_npy(job.source, job.source)
    array = to_nchw(raw, job.layout, job.source)
    samples = array if array.ndim == 4 else array[None]
    return iter(samples), array.shape, raw.dtype.name, {}


def _write_zarr(job: Job, samples, shape, dtype: str, attrs: dict, codec: dict | None) -> int:
    """Samples → one Zarr array at ``job.output`` (one chunk per sample), written under a temporary
    name and renamed into place; `codec` (a featcodec config) becomes its serializer. Returns the
    bytes it takes on disk."""
    zarr = _zarr()
    serializer = "auto"
    if codec is not None:
        from .ext.zarr import zarr_codec

        serializer = zarr_codec(codec)
    final = Path(job.output)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".featcodec-{final.name}-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    chunks = (1, *shape[1:]) if len(shape) == 4 else tuple(shape)
    array = zarr.create_array(str(tmp), shape=tuple(shape), chunks=chunks, dtype=dtype, serializer=serializer,
                              compressors=None if codec is not None else "auto", zarr_format=3)
    array.attrs.update({k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))})
    if len(shape) == 4:
        for i, sample in enumerate(samples):
            array[i] = sample
    else:
        array[...] = next(samples)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return sum(f.stat().st_size for f in final.rglob("*") if f.is_file())


def _encode(job: Job) -> tuple[int, int, int]:
    """Arrays → .fcb (or a Zarr array), streaming the samples; returns (bytes in, bytes out, elements)."""
    samples, shape, dtype, attrs = _samples(job)
    if _in_zarr(job.output):
        elements = int(np.prod(shape))
        return elements * np.dtype(dtype).itemsize, _write_zarr(job, samples, shape, dtype, attrs, job.codec), \
            elements
    codec = codec_from_config(job.codec)
    codec.threads = job.threads
    blob = encode_samples(samples, codec, shape=shape, dtype=dtype, layout=job.layout, layer=attrs.get("layer"),
                          dataset=job.dataset or job.relative)
    write_bytes(job.output, blob, force=True)
    elements = int(np.prod(shape))
    return elements * np.dtype(dtype).itemsize, len(blob), elements


def _repack(job: Job) -> tuple[int, int, int]:
    """Arrays → .npy (or a Zarr array), streaming the samples."""
    samples, shape, dtype, attrs = _samples(job)
    elements = int(np.prod(shape))
    if _in_zarr(job.output):
        return elements * np.dtype(dtype).itemsize, _write_zarr(job, samples, shape, dtype, attrs, None), elements
    return elements * np.dtype(dtype).itemsize, _write_npy_stream(job.output, samples, shape, dtype), elements


def _in_zarr(output: str) -> bool:
    """Whether an output path lies inside a .zarr destination."""
    return any(is_zarr_path(str(parent)) for parent in Path(output).parents)


def _decode(job: Job) -> tuple[int, int, int]:
    """.fcb → .npy (or a Zarr array)."""
    data = read_bitstream(job.source)
    stream = Bitstream.parse(data)
    array = decode(stream)
    if _in_zarr(job.output):
        nchw = to_nchw(array, "nchw")
        header = stream.header
        attrs = {k: header[k] for k in ("layer", "dataset") if header.get(k)}
        samples = iter(nchw if nchw.ndim == 4 else [nchw])
        return len(data), _write_zarr(job, samples, array.shape, array.dtype.name, attrs, None), int(array.size)
    blob = npy_bytes(array)
    write_bytes(job.output, blob, force=True)
    return len(data), len(blob), int(array.size)


def _transcode(job: Job) -> tuple[int, int, int]:
    """.fcb → .fcb with another codec, keeping layer, dataset, dtype and layout."""
    data = read_bitstream(job.source)
    stream = Bitstream.parse(data)
    header = stream.header
    nchw = to_nchw(decode(stream), header["layout"])
    codec = codec_from_config(job.codec)
    codec.threads = job.threads
    blob = encode_samples(iter(nchw if nchw.ndim == 4 else nchw[None]), codec, shape=nchw.shape,
                          dtype=header["dtype"], layout=header["layout"], layer=header.get("layer"),
                          dataset=header.get("dataset"))
    write_bytes(job.output, blob, force=True)
    return len(data), len(blob), int(nchw.size)


ACTIONS = {"encode": _encode, "repack": _repack, "decode": _decode, "transcode": _transcode}


def convert_item(job: Job, resume: bool = False) -> ItemResult:
    """Convert one item; never raises: a failure comes back as a result with its reason."""
    start = time.perf_counter()
    result = ItemResult(job.relative, "ok")
    try:
        if resume and os.path.exists(job.output) and _output_is_valid(job.output):
            result.status = "skipped"
            return result
        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        result.bytes_in, result.bytes_out, result.elements = ACTIONS[job.action](job)
        if job.verify:
            _verify(job)
    except Exception as err:  # reported per item; the batch goes on
        result.status = "failed"
        result.error = str(err).replace("\n", " ") or type(err).__name__
        if not isinstance(err, (FeatcodecError, OSError)):  # a bug or an unexpected library error: name it
            result.error = f"{type(err).__name__}: {result.error}"
    result.seconds = time.perf_counter() - start
    return result


def _write_npy_stream(path: str, samples, shape, dtype) -> int:
    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        if len(shape) == 4:
            for i, sample in enumerate(samples):
                out[i] = sample
        else:
            out[...] = next(samples)
        out.flush()
        del out

    atomic_write(path, write, force=True)
    return os.path.getsize(path)


def _verify(job: Job) -> None:
    """Decode / reload the output and check shape, dtype and, for lossless codecs, the values."""
    if os.path.isdir(job.output):
        decoded = _zarr().open_array(job.output, mode="r")[...]
        codec = codec_from_config(job.codec) if job.codec else None
    elif job.output.endswith(".fcb"):
        stream = Bitstream.parse(read_bitstream(job.output))
        decoded = decode(stream)
        codec = codec_from_config(stream.header["codec"])
    else:
        decoded, codec = np.load(job.output, allow_pickle=False), None
    if job.kind == "fcb":
        original = decode(read_bitstream(job.source))
    elif job.dataset is not None:
        node, _, close = _open_array(job)
        try:
            original = node[...]
        finally:
            close()
    else:
        original = load_npy(job.source, job.source)
    if decoded.shape != original.shape or decoded.dtype != original.dtype:
        raise FeatcodecError(f"verify: output is {decoded.dtype}{decoded.shape}, "
                             f"input {original.dtype}{original.shape}")
    exact = codec is None or (codec.is_lossless and original.dtype != np.float64)
    if exact and not np.array_equal(decoded, original):
        raise FeatcodecError("verify: a lossless output differs from its input")


# --- the batch ------------------------------------------------------------------------------

def _clean_temporaries(folder: str) -> None:
    """Remove temporary files a killed run left behind (never a finished output)."""
    if os.path.isdir(folder):
        for leftover in Path(folder).rglob(TEMP_GLOB):
            if leftover.is_dir():  # a Zarr array cut short
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def convert(src: str, dst: str, codec: dict | None = None, *, workers: int | None = None, verify: bool = False,
            resume: bool = False, layout: str = "nchw", scheduler: str | None = None, force: bool = False,
            progress=None) -> Summary:
    """Convert every item of `src` into `dst` (see the module docstring); returns the summary."""
    jobs, action = plan(src, dst, codec, verify=verify, layout=layout)
    to_hdf5 = is_hdf5_path(dst)
    if to_hdf5 and os.path.exists(dst) and not force:
        raise InvalidInputError(f"{dst} exists; pass --force to overwrite it")
    if not to_hdf5 and os.path.isfile(dst):
        raise InvalidInputError(f"{dst} is a file; the destination must be a directory or an .h5 file")
    if not to_hdf5 and not resume and not force:
        clashes = [j.output for j in jobs if os.path.exists(j.output)]
        if clashes:
            raise InvalidInputError(f"{clashes[0]} exists ({len(clashes)} outputs do): pass --resume to keep "
                                    "finished outputs or --force to redo them")
    workers = workers or os.cpu_count() or 1
    if workers > 1 and not scheduler:  # workers share the cores: each codec library gets its share
        for job in jobs:
            job.threads = max(1, (os.cpu_count() or 1) // workers)
    parts_root = dst + ".parts" if to_hdf5 else dst
    Path(parts_root).mkdir(parents=True, exist_ok=True)
    _clean_temporaries(parts_root)
    if is_zarr_path(dst):  # the store's groups exist before any worker writes an array into them
        root = _zarr().open_group(dst, mode="a", zarr_format=3)
        for job in jobs:
            parent = str(Path(job.relative).parent)
            if parent != ".":
                root.require_group(parent)
    summary = Summary(action, dst, workers=workers)
    start = time.perf_counter()
    if scheduler:
        summary.items = _run_dask(jobs, scheduler, resume)
    elif workers == 1:
        for i, job in enumerate(jobs):
            summary.items.append(convert_item(job, resume))
            if progress:
                progress(i + 1, len(jobs))
    else:
        summary.items = _run_pool(jobs, workers, resume, progress)
    # every worker of this run is done: a temporary file still there is a killed worker's (its item
    # was redone elsewhere, or is reported failed)
    _clean_temporaries(parts_root)
    if to_hdf5 and not summary.failed:
        _assemble_hdf5(jobs, dst, force)
        shutil.rmtree(parts_root, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_pool(jobs: list[Job], workers: int, resume: bool, progress) -> list[ItemResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[ItemResult | None] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")  # no inherited HDF5 handles or threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(convert_item, job, resume): i for i, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as err:  # a worker died (killed, out of memory)
                results[index] = ItemResult(jobs[index].relative, "failed", error=f"worker failed: {err}")
            if progress:
                progress(done, len(jobs))
    return results  # type: ignore[return-value]


def _run_dask(jobs: list[Job], scheduler: str, resume: bool) -> list[ItemResult]:
    try:
        from dask.distributed import Client
    except ImportError as err:
        from .errors import MissingBackendError

        raise MissingBackendError("--scheduler needs Dask: pip install 'featcodec[dask]'") from err
    with Client(scheduler) as client:
        futures = client.map(convert_item, jobs, resume=resume, pure=False)
        return client.gather(futures)


def _assemble_hdf5(jobs: list[Job], dst: str, force: bool) -> None:
    """Gather the per-item .npy parts into one HDF5 file, sample by sample."""
    import h5py

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for job in jobs:
                part = np.load(job.output, mmap_mode="r", allow_pickle=False)
                node = f.create_dataset(job.relative, shape=part.shape, dtype=part.dtype,
                                        chunks=(1, *part.shape[1:]) if part.ndim == 4 else None)
                if part.ndim == 4:
                    for i in range(part.shape[0]):
                        node[i] = part[i]
                else:
                    node[...] = part

    atomic_write(dst, write, force=force)
