"""Codec registry: codec ids to classes, plus third-party codecs by entry point.

A package can ship its own codec by declaring an entry point in the ``featcodec.codecs``
group that names a `Codec` subclass. As in numcodecs, a plugin is imported only when its id
is asked for, so a broken one fails alone, with its name, and every other codec still works.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .codecs.base import Codec
from .errors import InvalidInputError, PluginError, UnknownCodecError

ENTRY_POINT_GROUP = "featcodec.codecs"
# The codecs featcodec ships: a new one is its module plus one line here.
BUILTIN_CODECS = {
    "raw": "featcodec.codecs.raw:Raw",
    "uniform": "featcodec.codecs.uniform:Uniform",
    "lightweight": "featcodec.codecs.lightweight:Lightweight",
    "fpc": "featcodec.codecs.fpc:FramePerChannel",
    "tiling": "featcodec.codecs.tiling:Tiling",
    "autotiler": "featcodec.codecs.autotiler:AutoTiler",
    "learned": "featcodec.codecs.learned:Learned",
}
_CODECS: dict[str, type[Codec]] = {}


def _load_builtins() -> None:
    for codec_id, target in BUILTIN_CODECS.items():
        if codec_id not in _CODECS:
            module, name = target.split(":")
            register_codec(getattr(importlib.import_module(module), name), codec_id)


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Register `cls` under `codec_id` (default ``cls.codec_id``); usable as a decorator."""
    _CODECS[codec_id or cls.codec_id] = cls
    return cls


def _plugins() -> dict[str, EntryPoint]:
    """Entry points of codecs not registered here, by id (listed, not imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.name not in _CODECS and ep.name not in BUILTIN_CODECS}


def codec_ids() -> list[str]:
    """The ids of every codec, registered or offered by a plugin, sorted (no plugin is imported)."""
    return sorted({*BUILTIN_CODECS, *_CODECS, *_plugins()})


def loaded_codecs() -> dict[str, type[Codec]]:
    """The codec classes at hand without importing a plugin: the CLI builds its options from these."""
    _load_builtins()
    return dict(sorted(_CODECS.items()))


def codec_class(codec_id: str) -> type[Codec]:
    """The class registered under `codec_id`, importing its plugin on first use."""
    if codec_id in _CODECS:
        return _CODECS[codec_id]
    if codec_id in BUILTIN_CODECS:
        _load_builtins()
        return _CODECS[codec_id]
    plugin = _plugins().get(codec_id)
    if plugin is None:
        raise UnknownCodecError(f"unknown codec {codec_id!r}; available: {', '.join(codec_ids())}")
    distribution = plugin.dist.name if plugin.dist is not None else "unknown"
    try:
        cls = plugin.load()
        if not (isinstance(cls, type) and issubclass(cls, Codec)):
            raise TypeError(f"{plugin.value} is not a featcodec Codec subclass")
    except Exception as err:  # noqa: BLE001 (any failure of third-party code: that plugin alone is out)
        raise PluginError(f"codec plugin {codec_id!r} from distribution {distribution!r} failed to load: "
                          f"{type(err).__name__}: {err}") from err
    return register_codec(cls, codec_id)


def get_codec(codec_id: str, **params: Any) -> Codec:
    """Build a codec from its id and keyword parameters.

    >>> get_codec("raw", dtype="float16")
    Raw(dtype='float16', zstd=0)
    """
    cls = codec_class(codec_id)
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        allowed = ", ".join(cls.param_names()) or "none"
        raise InvalidInputError(
            f"codec {codec_id!r} takes no parameter {', '.join(unknown)} (its parameters: {allowed})"
        )
    return cls(**params)


def codec_from_config(config: dict[str, Any]) -> Codec:
    """Rebuild a codec from the ``{"id": …, **params}`` dict of `Codec.get_config`."""
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise InvalidInputError(f"a codec config needs a string 'id', got {config!r}")
    cls = codec_class(config["id"])
    try:
        return cls.from_config(config)
    except TypeError as err:
        raise InvalidInputError(f"bad config for codec {config['id']!r}: {err}") from err
