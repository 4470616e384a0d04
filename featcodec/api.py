"""The Python API: `encode`, `decode`, `info`. The CLI is a thin layer over these."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from . import __version__
from .codecs.base import Codec
from .container import Bitstream, pack
from .errors import CorruptStreamError, InvalidInputError
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
    encoder = codec.sequence_encoder()
    for sample in samples:
        for payload, info in encoder.push(sample):
            payloads.append(payload)
            infos.append(info)
            if progress:
                progress(len(payloads), total)
    for payload, info in encoder.finish():
        payloads.append(payload)
        infos.append(info)
    if progress:
        progress(len(payloads), total)
    if len(payloads) != total:
        raise InvalidInputError(f"expected {total} samples, got {len(payloads)}")
    payload_bytes = sum(len(p) for p in payloads)
    elements = int(np.prod(shape))
    header = {
        **_header(codec, layer, dataset, dtype, layout),
        "shape": [int(d) for d in shape],
        "batched": batched,
        "samples": infos,
        **({"groups": list(range(0, total, codec.gop))} if codec.gop > 1 and total else {}),
        "payload_bytes": payload_bytes,
        "bits_per_element": 8 * payload_bytes / elements,
        "compression_ratio": (4 * elements / payload_bytes) if payload_bytes else None,
    }
    return pack(header, payloads)


def _header(codec: Codec, layer: str | None, dataset: str | None, dtype: str, layout: str) -> dict[str, Any]:
    """The header fields every layout records (docs/FORMAT.md)."""
    return {"featcodec": __version__, "codec": codec.get_config(), "layer": layer, "dataset": dataset,
            "dtype": dtype, "layout": layout, "models": codec.models()}


def encode_stream(arrays: Iterable[np.ndarray], codec: Codec, write: Callable[[bytes], Any], *,
                  layer: str | None = None, layout: str = "nchw", dataset: str | None = None,
                  flush: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Encode samples as they come into the streamed layout (`featcodec.container`), writing each
    sample's record as soon as the codec has coded it (a whole group for HEVC ``gop`` codecs).

    `arrays`: (C,H,W) samples or (N,C,H,W) batches, one shape throughout; `write` takes bytes;
    `flush` (optional) is called after each record, so a reader at the other end of a pipe gets it.
    Returns a summary: samples, bytes written, sample shape.
    """
    from .container import stream_end, stream_head, stream_record

    encoder = codec.sequence_encoder()
    sample_shape, dtype, count, written = None, None, 0, 0

    def put(data: bytes) -> None:
        nonlocal written
        write(data)
        written += len(data)
        if flush:
            flush()

    for array in arrays:
        nchw = to_nchw(array, layout, f"array of shape {np.shape(array)}")
        for sample in (nchw if nchw.ndim == 4 else nchw[None]):
            if sample_shape is None:
                sample_shape, dtype = sample.shape, np.asarray(array).dtype.name
                put(stream_head({**_header(codec, layer, dataset, dtype, layout),
                                 "shape": [0, *map(int, sample_shape)], "batched": True}))
            elif sample.shape != sample_shape or np.asarray(array).dtype.name != dtype:
                raise InvalidInputError(f"sample {count} is {np.asarray(array).dtype} {sample.shape}; the stream "
                                        f"began with {dtype} {sample_shape}")
            for payload, info in encoder.push(sample):
                put(stream_record(payload, info))
                count += 1
    if sample_shape is None:
        raise InvalidInputError("no samples to encode: the input was empty")
    for payload, info in encoder.finish():
        put(stream_record(payload, info))
        count += 1
    put(stream_end(count))
    return {"n_samples": count, "bytes": written, "sample_shape": list(sample_shape)}


def decode_stream(read: Callable[[int], bytes], *, codec: Codec | None = None
                  ) -> tuple[dict[str, Any], Iterator[np.ndarray]]:
    """Decode a streamed file read through `read(n)`: its header and an iterator of samples (each in
    the original dtype and layout), each yielded as soon as its record (its group, for HEVC ``gop``
    codecs) has arrived. Where the data stops early the iterator raises `StreamCut` after the last
    complete sample; a sample's group is decoded in full before it is yielded only for HEVC groups."""
    from .container import StreamCut, crc32, read_stream

    header, records = read_stream(read)
    shape = tuple(header["shape"][1:])
    probe = Bitstream(header={**header, "shape": [0, *shape], "samples": []}, data=memoryview(b""), offsets=[],
                      lengths=[], crcs=[])
    probe._validate_header()
    codec = codec_for(probe, codec)
    dtype = np.dtype(header["dtype"])

    def samples():
        decoder = codec.sequence_decoder(shape)
        index = 0
        try:
            for info, payload, payload_crc in records:
                if crc32(payload) != payload_crc:
                    raise CorruptStreamError(f"CRC mismatch in sample {index}")
                ready = _push(codec, decoder, shape, index, bytes(payload), info, index % codec.gop == 0)
                index += 1
                for array in ready:
                    yield from_nchw(array.astype(dtype, copy=False), header["layout"])
        except StreamCut:
            for array in decoder.finish():  # the complete samples of a group cut short
                yield from_nchw(array.astype(dtype, copy=False), header["layout"])
            raise
        for array in decoder.finish():
            yield from_nchw(array.astype(dtype, copy=False), header["layout"])

    return header, samples()


def decode(data, *, sample: int | None = None, samples: slice | range | None = None,
           codec: Codec | None = None, decoded: list[int] | None = None) -> np.ndarray:
    """Decompress a ``.fcb`` bytestring to an array of its original shape, dtype and layout.

    With `sample`, decode only that sample of a batch, as (C,H,W) (or (H,W,C) for nhwc); with
    `samples` (a slice or range of step 1), those samples as a batch. A sequence coded in groups
    (``gop``) is decoded from the start of the group that holds the first sample asked for.
    `codec` reuses a codec object (e.g. to read its stage timings); it must match the header.
    `decoded`, when given, receives the index of every sample decoded on the way.
    """
    stream = data if isinstance(data, Bitstream) else Bitstream.parse(data)
    codec = codec_for(stream, codec)
    dtype = np.dtype(stream.header["dtype"])
    if sample is not None and samples is not None:
        raise InvalidInputError("give sample or samples, not both")
    if sample is not None:
        if not -stream.n_samples <= sample < stream.n_samples:
            raise IndexError(f"sample {sample} out of range: the file holds {stream.n_samples}")
        sample %= stream.n_samples
        wanted = range(sample, sample + 1)
    else:
        if isinstance(samples, range):
            samples = slice(samples.start, samples.stop, samples.step)
        wanted = range(stream.n_samples)[samples if samples is not None else slice(None)]
        if wanted.step != 1:
            raise InvalidInputError("samples must be a contiguous range (step 1)")
    out = np.empty((len(wanted), *stream.sample_shape), dtype)
    for index, array in decode_range(stream, codec, wanted.start, wanted.stop, decoded):
        out[index - wanted.start] = array
    if sample is not None or not stream.header["batched"]:
        out = out[0]
    return from_nchw(out, stream.header["layout"])


def codec_for(stream: Bitstream, codec: Codec | None = None) -> Codec:
    """The codec a parsed stream names (or `codec`, checked against it), its models verified."""
    if codec is None:
        codec = codec_from_config(stream.header["codec"])
    elif codec.get_config() != stream.header["codec"]:
        raise InvalidInputError("the codec given does not match the one recorded in the file")
    codec.verify_models(stream.header.get("models") or [])
    return codec


def group_start(stream: Bitstream, index: int) -> int:
    """The first sample of the group that holds sample `index` (itself when every sample is coded alone)."""
    starts = stream.group_starts
    return starts[bisect.bisect_right(starts, index) - 1]


def decode_range(stream: Bitstream, codec: Codec, start: int, stop: int,
                 decoded: list[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, float32 (C,H,W) array) for samples start..stop-1 of a parsed stream, in order, decoding
    from the start of the group that holds `start`; `decoded`, when given, receives how many samples
    were decoded in all (random access into a group decodes its samples before `start` too)."""
    if start >= stop:
        return
    first = group_start(stream, start)
    starts = set(stream.group_starts)
    decoder = codec.sequence_decoder(stream.sample_shape)
    index = first

    def emit(arrays):
        nonlocal index
        for array in arrays:
            if array.shape != stream.sample_shape:
                raise CorruptStreamError(f"sample {index} decoded to shape {array.shape}, "
                                         f"expected {stream.sample_shape}")
            if decoded is not None:
                decoded.append(index)
            if index >= start:
                yield index, array
            index += 1

    for position in range(first, stop):
        yield from emit(_push(codec, decoder, stream.sample_shape, position, stream.payload(position),
                              stream.header["samples"][position], position in starts))
    yield from emit(decoder.finish())


def _push(codec: Codec, decoder, shape, index: int, payload: bytes, info: dict, starts_group: bool) -> list:
    """Check sample `index`'s side information (`Codec.validate`) and give it to `decoder`; what is
    wrong with the stream is a `CorruptStreamError` naming the sample, anything else a bug as it is."""
    try:
        codec.validate(shape, info)
        return decoder.push(payload, info, starts_group)
    except CorruptStreamError as err:
        raise CorruptStreamError(f"sample {index}: {err}") from err


def info(data) -> dict[str, Any]:
    """The header of a ``.fcb`` bytestring plus its file-level sizes, without decoding samples."""
    stream = data if isinstance(data, Bitstream) else Bitstream.parse(data)
    header = dict(stream.header)
    elements = int(np.prod(header["shape"]))
    header["file_bytes"] = len(stream.data)
    header["n_samples"] = stream.n_samples
    header["file_bits_per_element"] = 8 * len(stream.data) / elements if elements else None
    header["sample_bytes"] = list(stream.lengths)
    if "payload_bytes" not in header:  # a streamed file: its sizes are known once it has been read
        payload_bytes = sum(stream.lengths)
        header["payload_bytes"] = payload_bytes
        header["bits_per_element"] = 8 * payload_bytes / elements if elements else None
        header["compression_ratio"] = (4 * elements / payload_bytes) if payload_bytes else None
    return header
