"""The codecs featcodec ships, one module each, all behind `featcodec.codecs.base.Codec`."""

from .autotiler import AutoTiler
from .base import Codec
from .fpc import FramePerChannel
from .learned import Learned
from .lightweight import Lightweight
from .raw import Raw
from .tiling import Tiling
from .uniform import Uniform

__all__ = ["AutoTiler", "Codec", "FramePerChannel", "Learned", "Lightweight", "Raw", "Tiling", "Uniform"]
