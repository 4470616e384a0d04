"""Context-adaptive entropy coding of quantized activation maps (constriction's range coder).

The symbols of a (C, H, W) map are coded with probabilities conditioned on already-coded
neighbours in the same channel — left, top, top-left and top-right — and adapted to the
tensor as it is coded, with no side information:

* each channel keeps its own counts per context (activations differ a lot between channels),
  backed off to counts shared by all channels while its own are few:
  ``p = (n_channel + β·p_shared) / (N_channel + β)`` with ``p_shared = (n_shared + α) / (N_shared + L·α)``;
* coding runs as a wavefront: all positions with the same ``x + 2·y`` in every channel form
  one step, since their four neighbours all lie on earlier steps. Each step is one vectorised
  numpy pass and one call to the range coder, and counts are updated between steps, so the
  decoder mirrors the encoder exactly at numpy speed (H·2 + W steps per map, not C·H·W).

Payload: CRC32 of the symbols (uint32), then the range coder's 32-bit words.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

from .errors import CorruptStreamError

ALPHA = 0.4  # additive prior of the shared counts (KT-like)
BETA = 2.0  # weight of the shared estimate in a channel's estimate
MAX_SYMBOLS = 16


@lru_cache(maxsize=16)
def _wavefront(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded flat positions sorted by step x + 2y, and the start of each step."""
    ys, xs = np.divmod(np.arange(height * width), width)
    step = xs + 2 * ys
    order = np.argsort(step, kind="stable")
    padded = ((ys + 1) * (width + 2) + xs + 1)[order]
    bounds = np.searchsorted(step[order], np.arange(step.max() + 2))
    return padded.astype(np.int64), bounds


def _context_sizes(n_symbols: int) -> tuple[int, int]:
    near = min(n_symbols, 8)  # left and top, the strongest predictors, keep up to 8 values
    far = min(n_symbols, 4)  # top-left and top-right keep up to 4
    return near, far


class _Model:
    """The adaptive probability state shared by encoder and decoder (flat int64 counts: numpy's
    fast path for ``add.at``)."""

    def __init__(self, channels: int, n_symbols: int):
        self.n = n_symbols
        self.near, self.far = _context_sizes(n_symbols)
        self.contexts = self.near * self.near * self.far * self.far
        self.symbol_offsets = np.arange(n_symbols, dtype=np.int64)
        self.channel_counts = np.zeros(channels * self.contexts * n_symbols, np.int64)
        self.channel_totals = np.zeros(channels * self.contexts, np.int64)
        self.shared_counts = np.zeros(self.contexts * n_symbols, np.int64)
        self.shared_totals = np.zeros(self.contexts, np.int64)

    def context(self, left, top, top_left, top_right):
        near, far = self.near - 1, self.far - 1
        if self.near == self.n and self.far == self.n:  # no clamping needed
            return ((left.astype(np.int64) * self.near + top) * self.far + top_left) * self.far + top_right
        return ((np.minimum(left, near).astype(np.int64) * self.near + np.minimum(top, near)) * self.far
                + np.minimum(top_left, far)) * self.far + np.minimum(top_right, far)

    def probabilities(self, channel_index: np.ndarray, context: np.ndarray) -> np.ndarray:
        # The shared estimate is small (contexts × L): compute it whole, then gather rows.
        shared = self.shared_counts.reshape(-1, self.n) + ALPHA
        shared *= (BETA / (self.shared_totals + self.n * ALPHA))[:, None]
        own = self.channel_counts.reshape(-1, self.n).take(channel_index, axis=0)
        scale = 1.0 / (self.channel_totals.take(channel_index) + BETA)
        return ((own + shared.take(context, axis=0)) * scale[:, None]).astype(np.float32)

    def update(self, channel_index: np.ndarray, context: np.ndarray, symbols: np.ndarray) -> None:
        np.add.at(self.channel_counts, channel_index * self.n + symbols, 1)
        np.add.at(self.channel_totals, channel_index, 1)
        np.add.at(self.shared_counts, context * self.n + symbols, 1)
        np.add.at(self.shared_totals, context, 1)


def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


@lru_cache(maxsize=4)
def _steps(shape: tuple[int, int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per wavefront step: flat indices into the padded (C, H+1, W+2) map, and channel ids."""
    channels, height, width = shape
    padded, bounds = _wavefront(height, width)
    plane = (height + 1) * (width + 2)
    base = np.arange(channels, dtype=np.int64)[:, None] * plane
    steps = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            index = (base + padded[None, start:stop]).ravel()
            steps.append((index, np.repeat(np.arange(channels, dtype=np.int64), stop - start)))
    return steps


def _neighbours(flat: np.ndarray, index: np.ndarray, width: int):
    row = width + 2
    above = index - row
    return flat.take(index - 1), flat.take(above), flat.take(above - 1), flat.take(above + 1)


def encode_symbols(symbols: np.ndarray, n_symbols: int) -> bytes:
    """Code a (C, H, W) uint8 map of symbols < `n_symbols` (≤ 16)."""
    import constriction

    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"n_symbols must be 1..{MAX_SYMBOLS}")
    channels, height, width = symbols.shape
    padded = np.zeros((channels, height + 1, width + 2), np.uint8)
    padded[:, 1:, 1:-1] = symbols
    flat = padded.ravel()
    model = _Model(channels, n_symbols)
    family = _family()
    encoder = constriction.stream.queue.RangeEncoder()
    # The encoder knows every symbol: all contexts in one vectorised pass.
    contexts = model.context(padded[:, 1:, :-2], padded[:, :-1, 1:-1], padded[:, :-1, :-2], padded[:, :-1, 2:])
    contexts_padded = np.zeros(padded.shape, np.int64)
    contexts_padded[:, 1:, 1:-1] = contexts
    for index, channel in _steps(symbols.shape):
        current = flat.take(index).astype(np.int64)
        context = contexts_padded.take(index)
        channel_index = channel * model.contexts + context
        if n_symbols > 1:
            encoder.encode(current.astype(np.int32), family, model.probabilities(channel_index, context))
        model.update(channel_index, context, current)
    checksum = zlib.crc32(np.ascontiguousarray(symbols, np.uint8).tobytes()) & 0xFFFFFFFF
    return struct.pack("<I", checksum) + encoder.get_compressed().astype("<u4").tobytes()


def decode_symbols(payload: bytes, shape: tuple[int, int, int], n_symbols: int) -> np.ndarray:
    """Inverse of `encode_symbols`; a corrupt payload raises `CorruptStreamError`."""
    import constriction

    if len(payload) < 4 or (len(payload) - 4) % 4:
        raise CorruptStreamError(f"entropy-coded payload has an impossible length {len(payload)}")
    channels, height, width = shape
    (checksum,) = struct.unpack_from("<I", payload)
    words = np.frombuffer(payload, "<u4", offset=4).astype(np.uint32)
    padded = np.zeros((channels, height + 1, width + 2), np.uint8)
    flat = padded.ravel()
    model = _Model(channels, n_symbols)
    family = _family()
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        for index, channel in _steps(shape):
            context = model.context(*_neighbours(flat, index, width))
            channel_index = channel * model.contexts + context
            if n_symbols > 1:
                current = np.asarray(decoder.decode(family, model.probabilities(channel_index, context)), np.int64)
            else:
                current = np.zeros(len(index), np.int64)
            flat.put(index, current)
            model.update(channel_index, context, current)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise CorruptStreamError(f"entropy-coded payload is corrupt: {err}") from err
    symbols = np.ascontiguousarray(padded[:, 1:, 1:-1])
    if zlib.crc32(symbols.tobytes()) & 0xFFFFFFFF != checksum:
        raise CorruptStreamError("entropy-coded payload is corrupt: symbol checksum mismatch")
    return symbols
