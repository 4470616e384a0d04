"""Training of auto-tilers (optional extra: ``pip install 'featcodec[train]'``, torch 2.13.0).

Nothing in the runtime imports this package: trained networks are exported to ONNX and run
with onnxruntime by `featcodec.codecs.autotiler`.
"""

from __future__ import annotations


def require_torch():
    try:
        import torch
    except ImportError as err:
        from ..errors import MissingBackendError

        raise MissingBackendError("training needs torch: pip install 'featcodec[train]' (torch==2.13.0)") from err
    return torch
