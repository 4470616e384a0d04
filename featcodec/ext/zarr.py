"""Zarr v3 codecs ``featcodec.<id>``: every featcodec codec as an array-to-bytes codec.

    import zarr
    from featcodec.ext.zarr import Lightweight
    z = zarr.create_array("acts.zarr", shape=(100, 128, 128, 128), chunks=(1, 128, 128, 128),
                          dtype="float32", serializer=Lightweight(levels=4), compressors=None)

The array metadata holds ``{"name": "featcodec.lightweight", "configuration": {…params}}``; a chunk
is one ``.fcb`` bytestring. Reading needs featcodec installed (its ``zarr.codecs`` entry points)
and only ``import zarr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

import featcodec

from ..container import Bitstream
from ..errors import InvalidInputError
from ..registry import BUILTIN_CODECS, get_codec
from . import as_chunk, class_name


@dataclass(frozen=True)
class FeatcodecZarrCodec(ArrayBytesCodec):
    """A featcodec codec as a Zarr v3 array-to-bytes codec (lossy codecs decode approximately)."""

    is_fixed_size = False
    featcodec_id = ""
    params: dict

    def __init__(self, **params: Any) -> None:
        codec = get_codec(self.featcodec_id, **params)  # refuses unknown parameters
        object.__setattr__(self, "params", {k: v for k, v in codec.get_config().items() if k != "id"})
        object.__setattr__(self, "_codec", codec)  # built once, not per chunk (an auto-tiler loads networks)

    @property
    def name(self) -> str:
        return f"featcodec.{self.featcodec_id}"

    @classmethod
    def from_dict(cls, data: dict) -> FeatcodecZarrCodec:
        _, configuration = parse_named_configuration(data, f"featcodec.{cls.featcodec_id}",
                                                     require_configuration=False)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict:
        return {"name": self.name, "configuration": dict(self.params)}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError("featcodec chunks have no fixed size")

    def _encode_sync(self, chunk_array, chunk_spec):
        array = as_chunk(np.asarray(chunk_array.as_numpy_array()))
        blob = featcodec.encode(array, self._codec)
        return chunk_spec.prototype.buffer.from_bytes(blob)

    def _decode_sync(self, chunk_bytes, chunk_spec):
        stream = Bitstream.parse(chunk_bytes.to_bytes())
        # the codec built once (an auto-tiler loads networks), unless a chunk names another one
        same = stream.header.get("codec") == self._codec.get_config()
        array = featcodec.decode(stream, codec=self._codec if same else None)
        dtype = chunk_spec.dtype.to_native_dtype()
        array = array.astype(dtype, copy=False).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(array)

    async def _encode_single(self, chunk_array, chunk_spec):
        return self._encode_sync(chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return self._decode_sync(chunk_bytes, chunk_spec)


def _make(codec_id: str) -> type[FeatcodecZarrCodec]:
    name = class_name(codec_id)
    return dataclass(frozen=True, init=False)(type(name, (FeatcodecZarrCodec,), {
        "featcodec_id": codec_id, "__doc__": f"featcodec's {codec_id!r} codec for Zarr v3.",
        "__init__": FeatcodecZarrCodec.__init__}))


CODECS: dict[str, type[FeatcodecZarrCodec]] = {}
for _codec_id in BUILTIN_CODECS:
    _cls = _make(_codec_id)
    globals()[_cls.__name__] = _cls
    CODECS[_codec_id] = _cls


def zarr_codec(config: dict[str, Any]) -> FeatcodecZarrCodec:
    """The Zarr v3 codec of a featcodec codec configuration (``{"id": …, **params}``)."""
    if config.get("id") not in CODECS:
        raise InvalidInputError(f"codec {config.get('id')!r} has no Zarr codec (built-in codecs only: "
                                f"{', '.join(CODECS)})")
    return CODECS[config["id"]](**{k: v for k, v in config.items() if k != "id"})
