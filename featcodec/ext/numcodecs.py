"""numcodecs codecs ``featcodec.<id>``: every featcodec codec as a `numcodecs.abc.Codec`.

>>> import numpy as np, numcodecs
>>> codec = numcodecs.get_codec({"id": "featcodec.uniform", "levels": 4, "clip": [0, 1]})
>>> x = np.linspace(0, 1, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
>>> y = codec.decode(codec.encode(x))
>>> y.shape, float(abs(y - x).max()) <= 1 / 6 + 1e-6
((2, 3, 4, 4), True)

numcodecs' contract in full: `encode` takes any buffer (a numpy array by its values; ``bytes``,
``bytearray``, ``array.array`` as raw ``buffer_dtype`` memory of ``buffer_shape``, default float32 and
(1, 1, L)), `decode` reads any buffer and fills ``out`` (an array of as many elements, or a writable
buffer of as many bytes) in place.

>>> codec = numcodecs.get_codec({"id": "featcodec.raw", "buffer_shape": [2, 3, 4, 4]})
>>> codec.decode(codec.encode(x.tobytes())).shape
(2, 3, 4, 4)
"""

from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from numcodecs.compat import ensure_bytes, ndarray_copy

import featcodec

from ..errors import InvalidInputError
from ..registry import BUILTIN_CODECS, get_codec
from . import as_chunk, class_name


class FeatcodecNumcodec(NumcodecsCodec):
    """A featcodec codec behind numcodecs' interface; the config is ``{"id": "featcodec.X", **params}``."""

    featcodec_id: str

    def __init__(self, buffer_dtype: str = "float32", buffer_shape=None, **params):
        self._codec = get_codec(self.featcodec_id, **params)  # refuses unknown parameters
        for name, value in self._codec.get_config().items():
            if name != "id":
                setattr(self, name, value)
        try:
            dtype = np.dtype(buffer_dtype)
        except TypeError:
            raise InvalidInputError(f"buffer_dtype {buffer_dtype!r} is not a numpy dtype") from None
        if dtype.kind != "f":
            raise InvalidInputError(f"buffer_dtype {buffer_dtype!r}: featcodec codes float16/float32/float64")
        if buffer_shape is not None and (not isinstance(buffer_shape, (list, tuple)) or not 1 <= len(buffer_shape) <= 4
                                         or not all(isinstance(d, int) and d > 0 for d in buffer_shape)):
            raise InvalidInputError(f"buffer_shape {buffer_shape!r} is not 1 to 4 positive integers")
        # Kept out of the config at their defaults, so that configs written before them stay equal.
        if dtype != np.float32:
            self.buffer_dtype = dtype.name
        if buffer_shape is not None:
            self.buffer_shape = [int(d) for d in buffer_shape]

    def encode(self, buf):
        return featcodec.encode(as_chunk(buf, getattr(self, "buffer_dtype", "float32"),
                                         getattr(self, "buffer_shape", None)), self._codec)

    def decode(self, buf, out=None):
        decoded = featcodec.decode(ensure_bytes(buf))
        if out is None:
            return decoded
        if isinstance(out, np.ndarray):  # by values, whatever its memory order
            if out.size != decoded.size:
                raise InvalidInputError(f"out holds {out.size} values, the chunk {decoded.size}")
            np.copyto(out, decoded.reshape(out.shape), casting="same_kind")
            return out
        if memoryview(out).nbytes != decoded.nbytes:
            raise InvalidInputError(f"out holds {memoryview(out).nbytes} bytes, the chunk {decoded.nbytes}")
        return ndarray_copy(decoded, out)

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"


def _make(codec_id: str) -> type[FeatcodecNumcodec]:
    name = class_name(codec_id)
    return type(name, (FeatcodecNumcodec,), {"codec_id": f"featcodec.{codec_id}", "featcodec_id": codec_id,
                                             "__doc__": f"featcodec's {codec_id!r} codec for numcodecs."})


# One class per built-in codec: Raw, Uniform, Lightweight, Fpc, Tiling, Autotiler.
for _codec_id in BUILTIN_CODECS:
    _cls = _make(_codec_id)
    globals()[_cls.__name__] = _cls
