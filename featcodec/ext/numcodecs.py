"""numcodecs codecs ``featcodec.<id>``: every featcodec codec as a `numcodecs.abc.Codec`.

>>> import numpy as np, numcodecs
>>> codec = numcodecs.get_codec({"id": "featcodec.uniform", "levels": 4, "clip": [0, 1]})
>>> x = np.linspace(0, 1, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
>>> y = codec.decode(codec.encode(x))
>>> y.shape, float(abs(y - x).max()) <= 1 / 6 + 1e-6
((2, 3, 4, 4), True)
"""

from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from numcodecs.compat import ensure_bytes, ndarray_copy

import featcodec

from ..registry import BUILTIN_CODECS, get_codec
from . import class_name


class FeatcodecNumcodec(NumcodecsCodec):
    """A featcodec codec behind numcodecs' interface; the config is ``{"id": "featcodec.X", **params}``."""

    featcodec_id: str

    def __init__(self, **params):
        self._codec = get_codec(self.featcodec_id, **params)  # refuses unknown parameters
        for name, value in self._codec.get_config().items():
            if name != "id":
                setattr(self, name, value)

    def encode(self, buf):
        return featcodec.encode(np.asarray(buf), self._codec)

    def decode(self, buf, out=None):
        decoded = featcodec.decode(ensure_bytes(buf))
        return ndarray_copy(decoded, out) if out is not None else decoded

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
