"""The small interface every codec implements.

A codec codes ONE sample, a float32 array of shape (C, H, W) (`encode_batch` may code
several side by side, each into its own payload, when that is faster). The container
(`featcodec.container`) handles batches, dtypes, layouts and the header; a codec
only turns a sample into bytes plus a small JSON-safe dict of per-sample side
information (normalisation range, clip points…) that the header records, and back.

Parameters live in ``__init__`` keyword arguments and must be JSON-safe:
``get_config()`` returns ``{"id": codec_id, **params}`` and ``from_config``
rebuilds an equal codec from it, so a file header fully describes its codec.

A codec also owns what the tools need to know about it, so that the CLI and the bench hold
no codec-specific knowledge: ``params`` declares how each parameter appears on the command
line (type, choices, help; names and defaults come from ``__init__``), ``rate_points`` the
points `featcodec bench` sweeps, and the optional `calibrate` / `describe` / `validate`.
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError


@dataclass(frozen=True)
class Param:
    """How one ``__init__`` parameter of a codec appears on the command line.

    `kind` converts the option's text (int, float, str or bool: a bool is a ``--x/--no-x``
    switch); `choices` limits it; ``cli=False`` keeps a parameter off the flags (still reachable
    with ``-p NAME=VALUE``), for structured values such as a calibrated table.
    """

    name: str
    kind: type = str
    help: str = ""
    choices: tuple = ()
    cli: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


RatePoints = list[tuple[str, dict[str, Any]]]
MAX_GOP = 1024
GOP_PARAM = Param("gop", int, "Samples per group for sequences (video frames): the first of each group is coded "
                  "alone, the others from the samples before it; 1: every sample alone.")


def check_gop(gop: Any) -> int:
    """A group size: an integer 1..MAX_GOP."""
    if isinstance(gop, bool) or not isinstance(gop, int) or not 1 <= gop <= MAX_GOP:
        raise InvalidInputError(f"gop must be an integer 1..{MAX_GOP}, got {gop!r}")
    return gop


def side_numbers(info: dict[str, Any], key: str, count: int | None = None) -> Any:
    """``info[key]`` checked for `Codec.validate`: one number within float32's range, or (with
    `count`) a list of `count` such numbers; anything else raises `CorruptStreamError`."""
    value = info.get(key) if isinstance(info, dict) else None
    values = value if count is not None and isinstance(value, list) else [value]
    if (count is not None and len(values) != count) or not all(_is_float32(v) for v in values):
        expected = f"{count} float32 numbers" if count is not None else "a float32 number"
        raise CorruptStreamError(f"side information {key!r} must be {expected}, got {value!r}")
    return value


def _is_float32(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and abs(value) <= float(np.finfo(np.float32).max))  # NaN fails too


def side_ints(info: dict[str, Any], key: str, count: int) -> list[int]:
    """``info[key]`` checked for `Codec.validate`: a list of `count` non-negative integers."""
    value = info.get(key) if isinstance(info, dict) else None
    if not (isinstance(value, list) and len(value) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise CorruptStreamError(f"side information {key!r} must be {count} non-negative integers, got {value!r}")
    return value


def parse_clip(value: Any, keywords: tuple[str, ...] = ()) -> list[float] | str | None:
    """The one parser of clip ranges: ``"LO,HI"`` text or a ``[lo, hi]`` pair → ``[lo, hi]``;
    ``None`` and any of `keywords` (e.g. ``"auto"``) pass through.

    >>> parse_clip("0,1.5"), parse_clip([0, 2]), parse_clip("auto", ("auto",))
    ([0.0, 1.5], [0.0, 2.0], 'auto')
    """
    if value is None or (isinstance(value, str) and value in keywords):
        return value
    if isinstance(value, str):
        value = value.split(",")
    options = " or ".join(("LO,HI", *keywords))
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"clip must be {options}, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InvalidInputError(f"clip must be finite with LO < HI, got {lo}, {hi}")
    return [lo, hi]


class Codec(ABC):
    """Base class of featcodec codecs (numcodecs-style).

    Subclasses set ``codec_id``, store each ``__init__`` argument under an attribute
    of the same name, and implement `encode` / `decode`.
    """

    codec_id: ClassVar[str]
    # Command-line declarations of the ``__init__`` parameters (one `Param` each).
    params: ClassVar[tuple[Param, ...]] = ()
    # Rate points `featcodec bench` sweeps, per rate set: (label, parameters) pairs.
    rate_points: ClassVar[dict[str, RatePoints]] = {}
    # Parameters `get_config` leaves out at these values: ones added after files were written
    # without them, which keep their header byte for byte (from_config's default restores them).
    config_omits: ClassVar[dict[str, Any]] = {"gop": 1}
    # Samples per group of a sequence (a codec that codes samples from the ones before them takes a
    # ``gop`` parameter); 1: every sample is coded alone and decodes alone.
    gop: int = 1
    # Worker threads for the libraries a codec calls (x265, onnxruntime); None: theirs. A runtime
    # setting, not a parameter: it changes speed, never bytes, so no header records it.
    threads: int | None = None

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

    # --- sequences ------------------------------------------------------------------------

    def sequence_encoder(self) -> SequenceEncoder:
        """An encoder that takes the samples of a sequence in order (`SequenceEncoder`)."""
        return SequenceEncoder(self)

    def sequence_decoder(self, shape: tuple[int, ...]) -> SequenceDecoder:
        """A decoder that takes the payloads of a sequence in order from a group start."""
        return SequenceDecoder(self, shape)

    def encode_group(self, samples: list[np.ndarray]) -> list[tuple[bytes, dict[str, Any]]]:
        """Code the samples of one group (at most `gop`), each into its own payload; a codec with a
        ``gop`` parameter implements it (or its own `sequence_encoder`)."""
        raise NotImplementedError(f"codec {self.codec_id!r} codes every sample alone")

    def decode_group(self, payloads: list[bytes], shape: tuple[int, ...], infos: list[dict[str, Any]]
                     ) -> list[np.ndarray]:
        """Decode the first ``len(payloads)`` samples of one group (see `encode_group`)."""
        raise NotImplementedError(f"codec {self.codec_id!r} codes every sample alone")

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

    def validate(self, shape: tuple[int, ...], info: dict[str, Any]) -> None:  # noqa: B027 (no side info: nothing)
        """Raise `CorruptStreamError` unless `info` is side information `decode` can use for a sample
        of `shape`. The API calls it before `decode`, so that only a malformed stream is reported as
        corrupt and an exception inside `decode` is a bug."""

    def calibrate(self, samples: np.ndarray) -> Codec:
        """A copy of this codec fitted once to `samples` (N, C, H, W), for codecs that have such a step
        (`can_calibrate`)."""
        raise InvalidInputError(f"codec {self.codec_id!r} has no calibration step")

    @classmethod
    def can_calibrate(cls) -> bool:
        return cls.calibrate is not Codec.calibrate

    def describe(self) -> str:
        """The codec and the parameters that were set, in one short phrase (for messages)."""
        defaults = self.param_defaults()
        parts = [f"{k}={v}" for k, v in self.get_config().items()
                 if k != "id" and v not in (None, False) and v != defaults.get(k)]
        return f"codec {self.codec_id}" + (f" ({', '.join(parts)})" if parts else "")

    @classmethod
    def describe_models(cls) -> list[str]:
        """Lines for `featcodec models`: the trained models this codec can use (none by default)."""
        return []

    @classmethod
    def side_info_rows(cls, infos: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(label, text) rows `featcodec info` adds about the samples' side information."""
        return []

    @classmethod
    def points(cls, rates: str) -> RatePoints:
        """The bench's rate points of this codec in the rate set `rates` (just the default without any)."""
        return cls.rate_points.get(rates) or [("default", {})]

    @classmethod
    def param_names(cls) -> list[str]:
        """The keyword parameters ``__init__`` accepts, in declaration order."""
        return list(cls.param_defaults())

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Parameter name → default (`inspect.Parameter.empty` when it has none), keyword-only ones included."""
        signature = inspect.signature(cls.__init__)
        return {name: p.default for name, p in signature.parameters.items()
                if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @classmethod
    def param_declarations(cls) -> list[Param]:
        """One `Param` per ``__init__`` parameter, in declaration order (undeclared: text options)."""
        declared = {p.name: p for p in cls.params}
        return [declared.get(name, Param(name)) for name in cls.param_names()]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        for name in self.param_names():
            value = getattr(self, name)
            # parameters added later are left out at their old behaviour (intra coding: gop 1), so
            # such files keep the header of the featcodec before them, which still reads them
            if name not in self.config_omits or value != self.config_omits[name]:
                config[name] = value
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


class SequenceEncoder:
    """Codes a sequence sample by sample: `push` a sample, get back the (payload, info) pairs that are
    ready (none while a batch or group fills); `finish` codes what is left. The payloads come in
    sample order; a sample's payload needs only those of its group before it.

    This one codes every sample alone (in batches of `Codec.batch_size`), or, for ``gop > 1``,
    whole groups with `Codec.encode_group`.
    """

    def __init__(self, codec: Codec):
        self.codec = codec
        self.pending: list[np.ndarray] = []

    def push(self, sample: np.ndarray) -> list[tuple[bytes, dict[str, Any]]]:
        self.pending.append(np.ascontiguousarray(sample, dtype=np.float32))
        size = self.codec.gop if self.codec.gop > 1 else self.codec.batch_size
        return self.finish() if len(self.pending) >= size else []

    def finish(self) -> list[tuple[bytes, dict[str, Any]]]:
        pending, self.pending = self.pending, []
        if not pending:
            return []
        return self.codec.encode_group(pending) if self.codec.gop > 1 else self.codec.encode_batch(pending)


class SequenceDecoder:
    """Decodes a sequence from a group start: `push` (payload, info, starts_group) in sample order,
    get back the samples that are ready; `finish` decodes what is left (a group cut short).

    This one decodes every sample alone, or, for ``gop > 1``, each group once it is complete
    (`Codec.decode_group`).
    """

    def __init__(self, codec: Codec, shape: tuple[int, ...]):
        self.codec, self.shape = codec, tuple(shape)
        self.payloads: list[bytes] = []
        self.infos: list[dict[str, Any]] = []

    def push(self, payload: bytes, info: dict[str, Any], starts_group: bool) -> list[np.ndarray]:
        if self.codec.gop <= 1:
            return self.codec.decode_batch([payload], self.shape, [info])
        ready = self.finish() if starts_group else []
        if not starts_group and not self.payloads:
            raise CorruptStreamError("a sequence must be decoded from the start of a group")
        self.payloads.append(payload)
        self.infos.append(info)
        if len(self.payloads) == self.codec.gop:
            ready += self.finish()
        return ready

    def finish(self) -> list[np.ndarray]:
        payloads, infos = self.payloads, self.infos
        self.payloads, self.infos = [], []
        return self.codec.decode_group(payloads, self.shape, infos) if payloads else []
