"""The error hierarchy. Every failure featcodec expects raises a `FeatcodecError`.

The CLI turns any of them into a single ``Error: …`` line and a non-zero exit.
"""


class FeatcodecError(Exception):
    """Base class of every error featcodec raises on purpose."""


class InvalidInputError(FeatcodecError, ValueError):
    """The input array, file or option cannot be handled (shape, dtype, NaN, path…)."""


class CorruptStreamError(FeatcodecError):
    """A bitstream is truncated, corrupted (CRC mismatch) or not a featcodec file."""


class UnsupportedFormatError(FeatcodecError):
    """A well-formed bitstream of a format version this featcodec cannot read."""


class UnknownCodecError(FeatcodecError, ValueError):
    """No codec is registered under the requested id."""


class MissingBackendError(FeatcodecError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class MissingModelError(FeatcodecError):
    """A model file a codec needs is absent or does not match its recorded sha256."""


class BackendError(FeatcodecError):
    """An external tool (ffmpeg, onnxruntime) failed; the message carries its own words."""


class PluginError(FeatcodecError):
    """A third-party codec plugin could not be imported; the message names it and its distribution."""


class FeatcodecWarning(UserWarning):
    """Something the user should know that is not a failure (the CLI prints ``Warning: …``)."""
