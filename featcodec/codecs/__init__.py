"""The codecs featcodec ships, one module each, all behind `featcodec.codecs.base.Codec`."""

from .base import Codec
from .lightweight import Lightweight
from .raw import Raw
from .uniform import Uniform

__all__ = ["Codec", "Lightweight", "Raw", "Uniform"]
