"""The lightweight codec's compiled coding kernel (C, built by ``pip install`` / ``make install``).

``_coder`` holds quantization, the context model and the range coder (``lwcoder.c``,
``model.h``, ``rangecoder.h``); `featcodec.entropy` is its Python side.
"""

try:
    from . import _coder
except ImportError as err:  # a source tree that was never built
    from ..errors import MissingBackendError

    raise MissingBackendError("featcodec's compiled kernel is not built: run `make install` "
                              "(or pip install -e .) with a C compiler") from err

__all__ = ["_coder"]
