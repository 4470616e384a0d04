"""Context-adaptive entropy coding of quantized activation maps (constriction's range coder).

The symbols of a (C, H, W) map are coded with probabilities conditioned on already-coded
neighbours in the same channel — left, top, top-left and top-right — and adapted to the
tensor as it is coded, with no side information:

* each channel keeps its own counts per context (activations differ a lot between channels),
  backed off to counts shared by all channels while its own are few:
  ``p = (n_channel + β·p_shared) / (N_channel + β)`` with ``p_shared = (n_shared + α) / (N_shared + K·α)``;
* a symbol is coded as ``min(s, 3)`` over a 4-letter alphabet and, when that is 3 and the
  alphabet is larger, the rest ``s - 3`` with a second adaptive model (context: the larger of
  the left and top neighbours). Most activations are small, so most symbols cost one cheap
  4-letter step whatever the number of levels;
* coding runs as a wavefront: all positions with the same ``x + 2·y`` in every channel form
  one step, since their four neighbours all lie on earlier steps. Each step is one vectorised
  numpy pass and one or two calls to the range coder, and counts are updated between steps,
  so the decoder mirrors the encoder exactly at numpy speed (W + 2·H steps per map).

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
HEAD = 4  # first-stage alphabet: 0, 1, 2 and "3 or more"
NEAR = 8  # left and top neighbours distinguish up to 8 values in the first-stage context
FAR = 4  # top-left and top-right up to 4
REST_SIDE = 16  # second stage context: the left and top symbols themselves
REST_CONTEXTS = REST_SIDE * REST_SIDE


@lru_cache(maxsize=16)
def _wavefront(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded flat positions sorted by step x + 2y, and the start of each step."""
    ys, xs = np.divmod(np.arange(height * width), width)
    step = xs + 2 * ys
    order = np.argsort(step, kind="stable")
    padded = ((ys + 1) * (width + 2) + xs + 1)[order]
    bounds = np.searchsorted(step[order], np.arange(step.max() + 2))
    return padded.astype(np.int64), bounds


class _Model:
    """Adaptive counts for one alphabet, per channel and context, with a shared back-off
    (flat int64 counts: numpy's fast path for ``add.at``)."""

    def __init__(self, channels: int, contexts: int, n_symbols: int):
        self.n = n_symbols
        self.contexts = contexts
        self.symbol_offsets = np.arange(n_symbols, dtype=np.int64)
        self.channel_counts = np.zeros(channels * contexts * n_symbols, np.int64)
        self.channel_totals = np.zeros(channels * contexts, np.int64)
        self.shared_counts = np.zeros(contexts * n_symbols, np.int64)
        self.shared_totals = np.zeros(contexts, np.int64)

    def probabilities(self, channel_index: np.ndarray, context: np.ndarray) -> np.ndarray:
        # The shared estimate is small (contexts × K): compute it whole, then gather rows.
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


class _Coder:
    """The two-stage model of one map: head symbol min(s, 3), then the rest s - 3."""

    def __init__(self, channels: int, n_symbols: int):
        import constriction

        self.n = n_symbols
        self.head_n = min(n_symbols, HEAD)
        self.near, self.far = min(n_symbols, NEAR), min(n_symbols, FAR)
        self.head = _Model(channels, self.near * self.near * self.far * self.far, self.head_n)
        self.rest = _Model(channels, REST_CONTEXTS, n_symbols - HEAD + 1) if n_symbols > HEAD else None
        self.family = constriction.stream.model.Categorical(perfect=False)

    def contexts(self, channel, left, top, top_left, top_right):
        """First-stage context index (per channel), first-stage shared context, second-stage context."""
        near, far = self.near - 1, self.far - 1
        head = ((np.minimum(left, near).astype(np.int64) * self.near + np.minimum(top, near)) * self.far
                + np.minimum(top_left, far)) * self.far + np.minimum(top_right, far)
        rest = np.minimum(left, REST_SIDE - 1).astype(np.int64) * REST_SIDE + np.minimum(top, REST_SIDE - 1)
        return channel * self.head.contexts + head, head, rest

    def encode_step(self, encoder, symbols, channel, left, top, top_left, top_right) -> None:
        channel_head, head_context, rest_context = self.contexts(channel, left, top, top_left, top_right)
        head = np.minimum(symbols, self.head_n - 1)
        if self.head_n > 1:
            encoder.encode(head.astype(np.int32), self.family, self.head.probabilities(channel_head, head_context))
        self.head.update(channel_head, head_context, head)
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                rest = symbols[escaped] - (HEAD - 1)
                context = rest_context[escaped]
                channel_rest = channel[escaped] * REST_CONTEXTS + context
                encoder.encode(rest.astype(np.int32), self.family, self.rest.probabilities(channel_rest, context))
                self.rest.update(channel_rest, context, rest)

    def decode_step(self, decoder, channel, left, top, top_left, top_right) -> np.ndarray:
        channel_head, head_context, rest_context = self.contexts(channel, left, top, top_left, top_right)
        if self.head_n > 1:
            head = np.asarray(decoder.decode(self.family, self.head.probabilities(channel_head, head_context)),
                              np.int64)
        else:
            head = np.zeros(len(channel), np.int64)
        self.head.update(channel_head, head_context, head)
        symbols = head
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                context = rest_context[escaped]
                channel_rest = channel[escaped] * REST_CONTEXTS + context
                rest = np.asarray(decoder.decode(self.family, self.rest.probabilities(channel_rest, context)),
                                  np.int64)
                self.rest.update(channel_rest, context, rest)
                symbols = head.copy()
                symbols[escaped] += rest
        return symbols


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


def _check_alphabet(n_symbols: int) -> None:
    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"n_symbols must be 1..{MAX_SYMBOLS}")


def encode_symbols(symbols: np.ndarray, n_symbols: int) -> bytes:
    """Code a (C, H, W) uint8 map of symbols < `n_symbols` (≤ 16)."""
    import constriction

    _check_alphabet(n_symbols)
    channels, height, width = symbols.shape
    padded = np.zeros((channels, height + 1, width + 2), np.uint8)
    padded[:, 1:, 1:-1] = symbols
    flat = padded.ravel()
    coder = _Coder(channels, n_symbols)
    encoder = constriction.stream.queue.RangeEncoder()
    for index, channel in _steps(symbols.shape):
        coder.encode_step(encoder, flat.take(index).astype(np.int64), channel, *_neighbours(flat, index, width))
    checksum = zlib.crc32(np.ascontiguousarray(symbols, np.uint8).tobytes()) & 0xFFFFFFFF
    return struct.pack("<I", checksum) + encoder.get_compressed().astype("<u4").tobytes()


def decode_symbols(payload: bytes, shape: tuple[int, int, int], n_symbols: int) -> np.ndarray:
    """Inverse of `encode_symbols`; a corrupt payload raises `CorruptStreamError`."""
    import constriction

    _check_alphabet(n_symbols)
    if len(payload) < 4 or (len(payload) - 4) % 4:
        raise CorruptStreamError(f"entropy-coded payload has an impossible length {len(payload)}")
    channels, height, width = shape
    (checksum,) = struct.unpack_from("<I", payload)
    words = np.frombuffer(payload, "<u4", offset=4).astype(np.uint32)
    padded = np.zeros((channels, height + 1, width + 2), np.uint8)
    flat = padded.ravel()
    coder = _Coder(channels, n_symbols)
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        for index, channel in _steps(shape):
            flat.put(index, coder.decode_step(decoder, channel, *_neighbours(flat, index, width)))
    except (ValueError, RuntimeError, AssertionError) as err:
        raise CorruptStreamError(f"entropy-coded payload is corrupt: {err}") from err
    symbols = np.ascontiguousarray(padded[:, 1:, 1:-1])
    if zlib.crc32(symbols.tobytes()) & 0xFFFFFFFF != checksum:
        raise CorruptStreamError("entropy-coded payload is corrupt: symbol checksum mismatch")
    return symbols
