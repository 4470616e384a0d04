"""featcodec inside other storage libraries: numcodecs codecs and Zarr v3 codecs, one per featcodec codec.

Both wrap the same thing: a chunk (an (N, C, H, W) or (C, H, W) float block of activations) becomes a
self-describing ``.fcb`` bytestring (`featcodec.encode`), so a chunk decodes without its shape.
They are registered by entry point (``numcodecs.codecs``: ``featcodec.lightweight`` …; ``zarr.codecs``:
the same names), so a reader needs featcodec installed and nothing else imported.

A chunk of fewer dimensions is coded as one sample: (L,) as (1, 1, L), (H, W) as (1, H, W).
"""

import numpy as np

from ..errors import InvalidInputError


def as_chunk(buf, buffer_dtype: str = "float32", buffer_shape=None) -> np.ndarray:
    """The activation block featcodec codes for `buf`, any object exporting the buffer protocol.

    A numpy array is taken by its values (any memory order; float16/32/64, others are refused by
    `featcodec.encode`). Any other buffer — ``bytes``, ``bytearray``, ``array.array``, a memoryview —
    is raw memory: viewed as `buffer_dtype` and shaped `buffer_shape`, or (1, 1, L) when none is given.

    >>> as_chunk(np.zeros((4, 5), np.float32)).shape, as_chunk(bytes(24), buffer_shape=[2, 3]).shape
    ((1, 4, 5), (1, 2, 3))
    """
    if isinstance(buf, np.ndarray):
        array = buf
    else:
        try:
            raw = memoryview(buf).cast("B")
        except TypeError as exc:
            raise InvalidInputError(f"cannot read a {type(buf).__name__} as a buffer: {exc}") from None
        dtype = np.dtype(buffer_dtype)
        if raw.nbytes % dtype.itemsize:
            raise InvalidInputError(f"a buffer of {raw.nbytes} bytes is not a whole number of {dtype.name} values")
        array = np.frombuffer(raw, dtype)
        if buffer_shape is not None:
            if int(np.prod(buffer_shape)) != array.size:
                raise InvalidInputError(f"a buffer of {array.size} {dtype.name} values does not fill shape "
                                        f"{tuple(buffer_shape)}")
            array = array.reshape(buffer_shape)
    if array.ndim == 1:
        return array.reshape(1, 1, -1)
    if array.ndim == 2:
        return array[None]
    return array


def class_name(codec_id: str) -> str:
    """The wrapper class name of a featcodec codec id: ``lightweight`` -> ``Lightweight``."""
    return "".join(part.capitalize() for part in codec_id.split("_"))
