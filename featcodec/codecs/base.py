"""The small interface every codec implements.

A codec codes ONE sample, a float32 array of shape (C, H, W) (`encode_batch` may code
several side by side, each into its own payload, when that is faster). The container
(`featcodec.container`) handles batches, dtypes, layouts and the header; a codec
only turns a sample into bytes plus a small JSON-safe dict of per-sample side
information (normalisation range, clip points…) that the header records, and back.

Parameters live in ``__init__`` keyword arguments and must be JSON-safe:
``get_config()`` returns ``{"id": codec_id, **params}`` and ``from_config``
rebuilds an equal codec from it, so a file header fully describes its codec.
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np


class Codec(ABC):
    """Base class of featcodec codecs (numcodecs-style).

    Subclasses set ``codec_id``, store each ``__init__`` argument under an attribute
    of the same name, and implement `encode` / `decode`.
    """

    codec_id: ClassVar[str]

    @abstractmethod
    def encode(self, sample: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """Code one float32 (C, H, W) sample; return the payload and its side info."""

    @abstractmethod
    def decode(self, payload: bytes, shape: tuple[int, ...], info: dict[str, Any]) -> np.ndarray:
        """Rebuild a float32 array of `shape` from a payload and its side info."""

    # Samples handed to `encode_batch` / `decode_batch` at a time by the API: enough to spread
    # per-call overhead, few enough to keep memory bounded when streaming a large dataset.
    batch_size: ClassVar[int] = 1

    def encode_batch(self, samples: list[np.ndarray]) -> list[tuple[bytes, dict[str, Any]]]:
        """`encode` for several samples; a codec overrides it when coding them together is faster.
        Each payload must be exactly what `encode` gives for its sample alone."""
        return [self.encode(sample) for sample in samples]

    def decode_batch(self, payloads: list[bytes], shape: tuple[int, ...], infos: list[dict[str, Any]]
                     ) -> list[np.ndarray]:
        """`decode` for several payloads of one shape (see `encode_batch`)."""
        return [self.decode(payload, shape, info) for payload, info in zip(payloads, infos)]

    @property
    def timings(self) -> Counter:
        """Seconds spent per named stage since the last `reset_timings` (for the benchmark)."""
        if "_timings" not in self.__dict__:
            self._timings = Counter()
        return self._timings

    def reset_timings(self) -> None:
        self.timings.clear()

    @contextmanager
    def stage(self, name: str):
        """Time a block of work under `name` in `timings`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - start

    @property
    def is_lossless(self) -> bool:
        """True when decode(encode(x)) reproduces float32 input exactly."""
        return False

    def models(self) -> list[dict[str, str]]:
        """Models the codec depends on, as ``{"name": …, "sha256": …}`` records."""
        return []

    def verify_models(self, records: list[dict]) -> None:  # noqa: B027 (a no-op unless a codec uses models)
        """Raise `MissingModelError` unless the models recorded in a file are the ones at hand."""

    @classmethod
    def param_names(cls) -> list[str]:
        """The keyword parameters ``__init__`` accepts, in declaration order."""
        signature = inspect.signature(cls.__init__)
        return [
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        for name in self.param_names():
            config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        params = {k: v for k, v in config.items() if k != "id"}
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"
