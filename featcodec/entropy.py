"""Context-adaptive entropy coding of quantized activation maps (constriction's range coder).

The symbols of a (C, H, W) map are coded with probabilities conditioned on already-coded
neighbours in the same channel — left, top, top-left and top-right — and adapted to the
tensor as it is coded, with no side information:

* each channel keeps its own counts per context (activations differ a lot between channels),
  backed off to counts shared by all channels while its own are few:
  ``p = (n_channel + β·p_shared) / (N_channel + β)`` with ``p_shared = (n_shared + α) / (N_shared + K·α)``;
* a symbol is coded as ``min(s, 3)`` over a 4-letter alphabet and, when that is 3 and the
  alphabet is larger, the rest ``s - 3`` with a second adaptive model (context: the left and
  top symbols). Most activations are small, so most symbols cost one cheap
  4-letter step whatever the number of levels;
* coding runs as a wavefront: all positions with the same ``x + 2·y`` in every channel form
  one step, since their four neighbours all lie on earlier steps. Each step is one vectorised
  numpy pass and one or two calls to the range coder, and counts are updated between steps,
  so the decoder mirrors the encoder exactly at numpy speed (W + 2·H steps per map). The map
  is held skewed (`_Skewed`) so that a step and its neighbours are slices, not gathers.

Payload: CRC32 of the symbols (uint32), then the range coder's 32-bit words.
"""

from __future__ import annotations

import struct
import zlib

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


class _Model:
    """Adaptive counts for one alphabet, per channel and context, with a shared back-off."""

    def __init__(self, channels: int, contexts: int, n_symbols: int):
        self.n = n_symbols
        self.contexts = contexts
        self.channel_counts = np.zeros((channels * contexts, n_symbols), np.int64)
        self.channel_totals = np.zeros(channels * contexts, np.int64)
        self.shared_counts = np.zeros((contexts, n_symbols), np.int64)
        self.shared_totals = np.zeros(contexts, np.int64)

    def probabilities(self, channel_index: np.ndarray, context: np.ndarray) -> np.ndarray:
        # The shared estimate is small (contexts × K): compute it whole, then gather rows.
        shared = self.shared_counts + ALPHA
        shared *= (BETA / (self.shared_totals + self.n * ALPHA))[:, None]
        own = self.channel_counts.take(channel_index, axis=0)
        scale = 1.0 / (self.channel_totals.take(channel_index) + BETA)
        return ((own + shared.take(context, axis=0)) * scale[:, None]).astype(np.float32)

    def update(self, channel_index: np.ndarray, context: np.ndarray, symbols: np.ndarray) -> None:
        # numpy ≥ 2 runs add.at on flat int64 indices fast; the shared tables are small enough
        # for a bincount.
        np.add.at(self.channel_counts.reshape(-1), channel_index * self.n + symbols, 1)
        np.add.at(self.channel_totals, channel_index, 1)
        self.shared_counts += np.bincount(context * self.n + symbols,
                                          minlength=self.shared_counts.size).reshape(self.shared_counts.shape)
        self.shared_totals += np.bincount(context, minlength=self.contexts)


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
        self.channel_offsets = np.arange(channels, dtype=np.int64)[:, None] * self.head.contexts

    def contexts(self, left, top, top_left, top_right):
        """First-stage context per (channel, context) row, first-stage shared context, and
        second-stage context, flat; the neighbours are (C, m) runs of one wavefront step."""
        near, far = self.near - 1, self.far - 1
        head = ((np.minimum(left, near).astype(np.int64) * self.near + np.minimum(top, near)) * self.far
                + np.minimum(top_left, far)) * self.far + np.minimum(top_right, far)
        rest = np.minimum(left, REST_SIDE - 1).astype(np.int64) * REST_SIDE + np.minimum(top, REST_SIDE - 1)
        return (self.channel_offsets + head).ravel(), head.ravel(), rest.ravel()

    def _rest_rows(self, escaped, run, rest_context):
        context = rest_context[escaped]
        return escaped // run * REST_CONTEXTS + context, context

    def encode_step(self, encoder, symbols, left, top, top_left, top_right) -> None:
        channel_head, head_context, rest_context = self.contexts(left, top, top_left, top_right)
        head = np.minimum(symbols, self.head_n - 1).astype(np.int64)
        if self.head_n > 1:
            encoder.encode(head.astype(np.int32), self.family, self.head.probabilities(channel_head, head_context))
        self.head.update(channel_head, head_context, head)
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                rest = symbols[escaped].astype(np.int64) - (HEAD - 1)
                channel_rest, context = self._rest_rows(escaped, left.shape[1], rest_context)
                encoder.encode(rest.astype(np.int32), self.family, self.rest.probabilities(channel_rest, context))
                self.rest.update(channel_rest, context, rest)

    def decode_step(self, decoder, left, top, top_left, top_right) -> np.ndarray:
        channel_head, head_context, rest_context = self.contexts(left, top, top_left, top_right)
        if self.head_n > 1:
            head = np.asarray(decoder.decode(self.family, self.head.probabilities(channel_head, head_context)),
                              np.int64)
        else:
            head = np.zeros(len(channel_head), np.int64)
        self.head.update(channel_head, head_context, head)
        symbols = head
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                channel_rest, context = self._rest_rows(escaped, left.shape[1], rest_context)
                rest = np.asarray(decoder.decode(self.family, self.rest.probabilities(channel_rest, context)),
                                  np.int64)
                self.rest.update(channel_rest, context, rest)
                symbols = head.copy()
                symbols[escaped] += rest
        return symbols


class _Skewed:
    """The map in wavefront layout: ``cells[c, x + 2y + 3, y + 1]`` holds symbol (c, y, x).

    Each step x + 2y = t is then the contiguous run ``cells[:, t + 3, lo + 1 : hi + 2]`` and its
    left, top, top-left and top-right neighbours are runs of steps t - 1, t - 2, t - 3, t - 1:
    slices, not gathers. Cells that hold no position stay 0 and act as the map's zero border.
    """

    def __init__(self, shape: tuple[int, int, int]):
        channels, self.height, self.width = shape
        self.cells = np.zeros((channels, self.width + 2 * self.height + 1, self.height + 1), np.uint8)
        stride_c, stride_t, stride_y = self.cells.strides
        # The (C, H, W) map as a strided view of the cells: zero-copy in both directions.
        self.view = np.lib.stride_tricks.as_strided(
            self.cells[:, 3:, 1:], shape, (stride_c, 2 * stride_t + stride_y, stride_t))

    def steps(self):
        """(row, lo, hi) per step: positions y = lo..hi - 1 of wavefront row `row`."""
        for t in range(self.width + 2 * self.height - 2):
            lo, hi = max(0, (t - self.width + 2) // 2), min(self.height - 1, t // 2) + 1
            yield t + 3, lo, hi

    def neighbours(self, row: int, lo: int, hi: int):
        cells = self.cells
        return (cells[:, row - 1, lo + 1:hi + 1], cells[:, row - 2, lo:hi],
                cells[:, row - 3, lo:hi], cells[:, row - 1, lo:hi])


def _check_alphabet(n_symbols: int) -> None:
    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"n_symbols must be 1..{MAX_SYMBOLS}")


def encode_symbols(symbols: np.ndarray, n_symbols: int) -> bytes:
    """Code a (C, H, W) uint8 map of symbols < `n_symbols` (≤ 16)."""
    import constriction

    _check_alphabet(n_symbols)
    skewed = _Skewed(symbols.shape)
    skewed.view[...] = symbols
    coder = _Coder(symbols.shape[0], n_symbols)
    encoder = constriction.stream.queue.RangeEncoder()
    for row, lo, hi in skewed.steps():
        coder.encode_step(encoder, skewed.cells[:, row, lo + 1:hi + 1].ravel(), *skewed.neighbours(row, lo, hi))
    checksum = zlib.crc32(np.ascontiguousarray(symbols, np.uint8).tobytes()) & 0xFFFFFFFF
    return struct.pack("<I", checksum) + encoder.get_compressed().astype("<u4").tobytes()


def decode_symbols(payload: bytes, shape: tuple[int, int, int], n_symbols: int) -> np.ndarray:
    """Inverse of `encode_symbols`; a corrupt payload raises `CorruptStreamError`."""
    import constriction

    _check_alphabet(n_symbols)
    if len(payload) < 4 or (len(payload) - 4) % 4:
        raise CorruptStreamError(f"entropy-coded payload has an impossible length {len(payload)}")
    (checksum,) = struct.unpack_from("<I", payload)
    words = np.frombuffer(payload, "<u4", offset=4).astype(np.uint32)
    skewed = _Skewed(tuple(shape))
    coder = _Coder(shape[0], n_symbols)
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        for row, lo, hi in skewed.steps():
            decoded = coder.decode_step(decoder, *skewed.neighbours(row, lo, hi))
            skewed.cells[:, row, lo + 1:hi + 1] = decoded.reshape(shape[0], hi - lo)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise CorruptStreamError(f"entropy-coded payload is corrupt: {err}") from err
    symbols = np.ascontiguousarray(skewed.view)
    if zlib.crc32(symbols.tobytes()) & 0xFFFFFFFF != checksum:
        raise CorruptStreamError("entropy-coded payload is corrupt: symbol checksum mismatch")
    return symbols
