"""featcodec: compress the intermediate activations of split deep neural networks.

>>> import numpy as np, featcodec
>>> x = np.random.default_rng(0).random((1, 4, 8, 8)).astype(np.float32)
>>> np.array_equal(featcodec.decode(featcodec.encode(x, "raw")), x)
True
"""

__version__ = "0.2.0"

from .api import decode, encode, info  # noqa: E402
from .codecs import AutoTiler, FramePerChannel, Lightweight, Raw, Tiling, Uniform  # noqa: E402
from .container import Bitstream  # noqa: E402
from .errors import (  # noqa: E402
    BackendError,
    CorruptStreamError,
    FeatcodecError,
    InvalidInputError,
    MissingBackendError,
    MissingModelError,
    PluginError,
    UnknownCodecError,
    UnsupportedFormatError,
)
from .registry import codec_ids, get_codec, register_codec  # noqa: E402

__all__ = [
    "__version__", "encode", "decode", "info", "get_codec", "register_codec", "codec_ids", "Bitstream",
    "FeatcodecError", "InvalidInputError", "CorruptStreamError", "UnsupportedFormatError",
    "UnknownCodecError", "MissingBackendError", "MissingModelError", "BackendError", "PluginError",
    "AutoTiler", "FramePerChannel", "Lightweight", "Raw", "Tiling", "Uniform",
]
