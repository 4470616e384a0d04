"""The Python API: `encode`, `decode`, `info`. The CLI is a thin layer over these."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import __version__
from .codecs.base import Codec
from .container import Bitstream, pack
from .errors import CorruptStreamError, FeatcodecError, InvalidInputError
from .io import from_nchw, to_nchw
from .registry import codec_from_config, get_codec

Progress = Callable[[int, int], None]


def encode(array: np.ndarray, method: str | Codec = "raw", *, layer: str | None = None,
           layout: str = "nchw", dataset: str | None = None, progress: Progress | None = None,
           **params: Any) -> bytes:
    """Compress an activation tensor (N,C,H,W) or (C,H,W) into a self-describing ``.fcb`` bytestring.

    `method` is a codec id (with its parameters as keywords) or a `Codec` instance.

    >>> import numpy as np, featcodec
    >>> x = np.random.default_rng(0).random((2, 8, 16, 16), np.float32)
    >>> blob = featcodec.encode(x, "uniform", levels=4, layer="conv1")
    >>> featcodec.decode(blob).shape
    (2, 8, 16, 16)
    """
    codec = method if isinstance(method, Codec) else get_codec(method, **params)
    original_dtype = np.asarray(array).dtype.name
    nchw = to_nchw(array, layout)
    samples = nchw if nchw.ndim == 4 else nchw[None]
    return encode_samples(iter(samples), codec, shape=nchw.shape, dtype=original_dtype, layout=layout,
                          layer=layer, dataset=dataset, progress=progress)


def encode_samples(samples: Iterator[np.ndarray], codec: Codec, *, shape: tuple[int, ...], dtype: str,
                   layout: str = "nchw", layer: str | None = None, dataset: str | None = None,
                   progress: Progress | None = None) -> bytes:
    """Encode samples given one at a time (NCHW, already checked), so a caller can stream a
    large HDF5 dataset instead of loading it whole. `shape` is the whole tensor's NCHW shape
    ((C,H,W) for an unbatched tensor)."""
    batched = len(shape) == 4
    total = shape[0] if batched else 1
    payloads, infos = [], []
    for chunk in _chunks(samples, codec.batch_size):
        for payload, info in codec.encode_batch([np.ascontiguousarray(s, dtype=np.float32) for s in chunk]):
            payloads.append(payload)
            infos.append(info)
        if progress:
            progress(len(payloads), total)
    if len(payloads) != total:
        raise InvalidInputError(f"expected {total} samples, got {len(payloads)}")
    payload_bytes = sum(len(p) for p in payloads)
    elements = int(np.prod(shape))
    header = {
        "featcodec": __version__,
        "codec": codec.get_config(),
        "layer": layer,
        "dataset": dataset,
        "shape": [int(d) for d in shape],
        "batched": batched,
        "dtype": dtype,
        "layout": layout,
        "samples": infos,
        "models": codec.models(),
        "payload_bytes": payload_bytes,
        "bits_per_element": 8 * payload_bytes / elements,
        "compression_ratio": (4 * elements / payload_bytes) if payload_bytes else None,
    }
    return pack(header, payloads)


def decode(data, *, sample: int | None = None, codec: Codec | None = None) -> np.ndarray:
    """Decompress a ``.fcb`` bytestring to an array of its original shape, dtype and layout.

    With `sample`, decode only that sample of a batch, as (C,H,W) (or (H,W,C) for nhwc).
    `codec` reuses a codec object (e.g. to read its stage timings); it must match the header.
    """
    stream = data if isinstance(data, Bitstream) else Bitstream.parse(data)
    if codec is None:
        codec = codec_from_config(stream.header["codec"])
    elif codec.get_config() != stream.header["codec"]:
        raise InvalidInputError("the codec given does not match the one recorded in the file")
    codec.verify_models(stream.header.get("models") or [])
    dtype = np.dtype(stream.header["dtype"])
    indices = range(stream.n_samples) if sample is None else [sample]
    out = np.empty((len(indices), *stream.sample_shape), dtype)
    row = 0
    for chunk in _chunks(indices, codec.batch_size):
        for decoded in decode_samples(stream, codec, chunk):
            out[row] = decoded
            row += 1
    if sample is not None or not stream.header["batched"]:
        out = out[0]
    return from_nchw(out, stream.header["layout"])


def decode_samples(stream: Bitstream, codec: Codec, indices: list[int]) -> list[np.ndarray]:
    """Decode samples `indices` of a parsed stream to float32 (C,H,W) arrays, together.

    Each sample's side information is validated first (`Codec.validate`): a malformed stream is a
    `CorruptStreamError` naming the sample, and any other exception from `decode` is a bug that
    surfaces as it is."""
    payloads = [stream.payload(i) for i in indices]
    infos = [stream.header["samples"][i % stream.n_samples] for i in indices]
    for index, info in zip(indices, infos):
        try:
            codec.validate(stream.sample_shape, info)
        except CorruptStreamError as err:
            raise CorruptStreamError(f"sample {index}: {err}") from err
    try:
        decoded = codec.decode_batch(payloads, stream.sample_shape, infos)
    except FeatcodecError:
        if len(indices) > 1:  # decode one by one, so that the error names the sample
            for index in indices:
                decode_samples(stream, codec, [index])
        raise
    for index, array in zip(indices, decoded):
        if array.shape != stream.sample_shape:
            raise CorruptStreamError(f"sample {index} decoded to shape {array.shape}, expected {stream.sample_shape}")
    return decoded


def _chunks(items, size: int) -> Iterator[list]:
    """Consecutive lists of up to `size` items (a lazy iterator stays lazy)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def info(data) -> dict[str, Any]:
    """The header of a ``.fcb`` bytestring plus its file-level sizes, without decoding samples."""
    stream = data if isinstance(data, Bitstream) else Bitstream.parse(data)
    header = dict(stream.header)
    elements = int(np.prod(header["shape"]))
    header["file_bytes"] = len(stream.data)
    header["n_samples"] = stream.n_samples
    header["file_bits_per_element"] = 8 * len(stream.data) / elements if elements else None
    header["sample_bytes"] = list(stream.lengths)
    return header
