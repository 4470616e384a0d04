"""featcodec inside other storage libraries: numcodecs codecs and Zarr v3 codecs, one per featcodec codec.

Both wrap the same thing: a chunk (an (N, C, H, W) or (C, H, W) float block of activations) becomes a
self-describing ``.fcb`` bytestring (`featcodec.encode`), so a chunk decodes without its shape.
They are registered by entry point (``numcodecs.codecs``: ``featcodec.lightweight`` …; ``zarr.codecs``:
the same names), so a reader needs featcodec installed and nothing else imported.
"""



def class_name(codec_id: str) -> str:
    """The wrapper class name of a featcodec codec id: ``lightweight`` -> ``Lightweight``."""
    return "".join(part.capitalize() for part in codec_id.split("_"))
