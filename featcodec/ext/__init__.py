"""featcodec inside other storage libraries: numcodecs codecs and Zarr v3 codecs, one per featcodec codec.

Both wrap the same thing: a chunk (an (N, C, H, W) or (C, H, W) float block of activations) becomes a
self-describing ``.fcb`` bytestring (`featcodec.encode`), so a chunk decodes without its shape.
They are registered by entry point (``numcodecs.codecs``: ``featcodec.lightweight`` …; ``zarr.codecs``:
the same names), so a reader needs featcodec installed and nothing else imported.
"""

from ..registry import BUILTIN_CODECS

CODEC_IDS = tuple(f"featcodec.{codec_id}" for codec_id in BUILTIN_CODECS)
