"""Codec registry: codec ids to classes, plus third-party codecs by entry point.

A package can ship its own codec by declaring an entry point in the
``featcodec.codecs`` group that names a `Codec` subclass.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .codecs.base import Codec
from .errors import InvalidInputError, UnknownCodecError

_CODECS: dict[str, type[Codec]] = {}
_ENTRY_POINTS_LOADED = False


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Register `cls` under `codec_id` (default ``cls.codec_id``); usable as a decorator."""
    _CODECS[codec_id or cls.codec_id] = cls
    return cls


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="featcodec.codecs"):
        if ep.name not in _CODECS:
            register_codec(ep.load(), ep.name)


def codec_ids() -> list[str]:
    """The ids of every registered codec, sorted."""
    _load_entry_points()
    return sorted(_CODECS)


def codec_class(codec_id: str) -> type[Codec]:
    _load_entry_points()
    try:
        return _CODECS[codec_id]
    except KeyError:
        raise UnknownCodecError(
            f"unknown codec {codec_id!r}; available: {', '.join(sorted(_CODECS))}"
        ) from None


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
