"""Entropy coding of quantized activation maps: the Python side of the compiled kernel.

The loops live in C (`featcodec._kernel`: ``lwcoder.c`` drives, ``model.h`` holds the adaptive
probabilities, ``rangecoder.h`` the binary range coder); this module checks arguments, frames
payloads and turns kernel failures into `CorruptStreamError`. Coder version 5 (docs/FORMAT.md):

* each channel is coded in raster order; a symbol s is coded as binary decisions "s > k",
  k = 0, 1, …, so most symbols (small activations) cost one decision;
* each decision's probability mixes (logistically, weights learned as it codes) three context
  models: the neighbours (left, top, top-left, top-right) with the partner channel's symbol at
  the same position; the sum of six neighbours; and how active this position is in the
  channels already coded;
* each context has one adaptive estimate per channel, backed by one shared by all channels of
  the map until the channel's own has seen an event: a map with many small channels (an
  uncalibrated network's 14 x 14 layer) codes well from its first symbols;
* sparse maps (a third or more of their 8 x 8 blocks empty, like S4) code one flag per block
  first, then only the symbols of non-empty blocks;
* version 5 conditions the decisions "s > k" on k minus the neighbours (the largest of left, top
  and partner, and the six-neighbour sum against 6k) where version 4 used the neighbours alone:
  above 8 levels every decision past the seventh shared one context in version 4, so flat regions
  of large symbols cost bits (a text detector's map at 16 levels: 42 % fewer bits). Version 4
  still decodes and encodes (a calibrated table may name it);
* version 6 keeps version 5's contexts but codes each decision with the first model's estimate
  alone, no mixing (its decisions "s > k" also read the six-neighbour sum against 6k): about 2.6
  times fewer instructions per map, 0-8 % more bits. It still decodes and encodes;
* version 7 (the codec's ``fast=True``) codes each symbol in one step with a 16-lane adaptive
  distribution, the average of two context models (the pattern of the four causal neighbours'
  small values; their weighted sum and spread), each with the partner, two channels at a time on
  two range coders, its distributions started from priors pooled over channels: on the reference
  layers at 8-16 levels 1.2-1.7x faster to encode and 1.2-1.9x to decode than version 6, about as
  fast at 2-4 levels, up to 4 % smaller, at most 1.4 % larger
  (an uncalibrated sparse 16-level map: 15 %) (`bench/results/lightweight.md`).

Partner channels (`design_partners`, chosen once per layer by calibration) are coded before
the channels that read them (`coding_order`).

Payload: a 32-bit checksum of the symbols (the kernel's, little-endian), then the range
coder's bytes. Versions 1-3 (the numpy wavefront coder of featcodec before 0.2) no longer decode.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import CorruptStreamError

VERSION = 5
VERSIONS = (4, 5, 6, 7)  # what the kernel codes (versions 1-3 were featcodec 0.1's numpy coder)
FAST_VERSION = 7  # one multi-symbol step per symbol: the `fast` lightweight codec
MAX_SYMBOLS = 16
MAX_DEPTH = 8  # longest chain of partners (keeps the chains short and the design cheap)

try:  # imported lazily by the codecs: a source tree that was never built still imports featcodec
    from ._kernel import _coder
except Exception:  # noqa: BLE001 (MissingBackendError, raised again where the kernel is used)
    _coder = None


def kernel():
    """The compiled kernel; MissingBackendError with the build hint when it was never built."""
    if _coder is None:
        from . import _kernel  # noqa: F401 (raises MissingBackendError with the hint)
    return _coder


def _check_alphabet(n_symbols: int) -> None:
    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"the entropy coder takes 1 to {MAX_SYMBOLS} symbols, got {n_symbols}")


def partner_depths(parents, channels: int) -> np.ndarray:
    """Each channel's depth in the partner chains that `parents` (a channel index or -1 per
    channel) describe; ValueError unless they fit `channels` channels, have no cycle and are at
    most MAX_DEPTH deep."""
    parents = np.asarray(parents)
    if parents.shape != (channels,) or parents.dtype.kind not in "iu" \
            or (channels and not -1 <= parents.min() <= parents.max() < channels):
        raise ValueError(f"partner channels must be {channels} channel indices or -1")
    depths = np.zeros(channels, np.int64)
    current = parents.astype(np.int64)
    for _ in range(MAX_DEPTH + 1):
        linked = current >= 0
        if not linked.any():
            return depths
        depths += linked
        current = np.where(linked, parents[np.maximum(current, 0)], -1)
    raise ValueError(f"partner chains must be acyclic and at most {MAX_DEPTH} deep")


def coding_order(parents, channels: int) -> np.ndarray | None:
    """Channels by depth in their partner chains (stable): every partner before its readers."""
    if parents is None:
        return None
    depths = partner_depths(np.asarray(parents, np.int64), channels)
    return np.argsort(depths, kind="stable").astype(np.int32)


def _layout(parents, channels: int):
    if parents is None:
        return None, None
    parents = np.asarray(parents, np.int64)
    order = coding_order(parents, channels)
    return parents.astype(np.int32).tobytes(), order.tobytes()


def encode_symbols(symbols: np.ndarray, n_symbols: int, parents=None, version: int = VERSION) -> bytes:
    """Code a (C, H, W) uint8 map of symbols < `n_symbols` (≤ 16)."""
    return encode_symbol_maps(symbols[None], n_symbols, parents, version)[0]


def encode_symbol_maps(maps: np.ndarray, n_symbols: int, parents=None, version: int = VERSION) -> list[bytes]:
    """Code N (C, H, W) symbol maps, one payload each."""
    _check_alphabet(n_symbols)
    maps = np.ascontiguousarray(maps, np.uint8)
    count, channels, height, width = maps.shape
    if maps.size and int(maps.max()) >= n_symbols:
        raise ValueError(f"symbols must be < {n_symbols}")
    parent_bytes, order_bytes = _layout(parents, channels)
    coder = kernel()
    payloads = []
    for symbols in maps:
        body, checksum = coder.encode(symbols, channels, height, width, n_symbols, version, parent_bytes,
                                      order_bytes, None, None)
        payloads.append(struct.pack("<I", checksum) + body)
    return payloads


def encode_values(sample: np.ndarray, thresholds: np.ndarray, cell_to_symbol: np.ndarray, n_symbols: int,
                  parents=None, version: int = VERSION, *, reference: np.ndarray | None = None,
                  keep_symbols: bool = False):
    """Quantize a float32 (C, H, W) sample (cell = thresholds at or below the value, then
    `cell_to_symbol`) and code it, in one kernel call.

    `reference`: the previous sample's symbols (inter coding, see lwcoder.c). With `keep_symbols`
    the result is ``(payload, symbols)``, the symbols being the next sample's reference."""
    _check_alphabet(n_symbols)
    thresholds = np.ascontiguousarray(thresholds, np.float32)
    cells = np.zeros(256, np.uint8)
    cells[: len(cell_to_symbol)] = cell_to_symbol
    sample = np.ascontiguousarray(sample, np.float32)
    channels, height, width = sample.shape
    parent_bytes, order_bytes = _layout(parents, channels)
    reference = _reference(reference, sample.shape)
    body, checksum, *kept = kernel().encode(sample, channels, height, width, n_symbols, version, parent_bytes,
                                            order_bytes, thresholds.tobytes(), cells.tobytes(), reference,
                                            keep_symbols)
    payload = struct.pack("<I", checksum) + body
    return (payload, np.frombuffer(kept[0], np.uint8).reshape(sample.shape)) if keep_symbols else payload


def _reference(reference, shape):
    if reference is None:
        return None
    if reference.shape != tuple(shape) or reference.dtype != np.uint8:
        raise ValueError(f"reference symbols must be uint8 of shape {tuple(shape)}, got {reference.dtype} "
                         f"{reference.shape}")
    return np.ascontiguousarray(reference)


def _decode(payload: bytes, shape, n_symbols: int, parents, levels, version: int, reference=None,
            keep_symbols=False):
    _check_alphabet(n_symbols)
    channels, height, width = shape
    if len(payload) < 9:
        raise CorruptStreamError(f"entropy-coded payload is truncated ({len(payload)} bytes)")
    parent_bytes, order_bytes = _layout(parents, channels)
    reference = _reference(reference, shape)
    try:
        out, checksum, *kept = kernel().decode(memoryview(payload)[4:], channels, height, width, n_symbols,
                                               version, parent_bytes, order_bytes, levels, reference, keep_symbols)
    except ValueError as err:
        raise CorruptStreamError(f"entropy-coded payload is corrupt ({err})") from None
    if checksum != struct.unpack_from("<I", payload)[0]:
        raise CorruptStreamError("entropy-coded payload is corrupt: symbol checksum mismatch")
    return (out, np.frombuffer(kept[0], np.uint8).reshape(shape)) if keep_symbols else out


def decode_symbols(payload: bytes, shape: tuple[int, int, int], n_symbols: int, parents=None,
                   version: int = VERSION) -> np.ndarray:
    """Inverse of `encode_symbols`; a corrupt payload raises `CorruptStreamError`."""
    return np.frombuffer(_decode(payload, shape, n_symbols, parents, None, version), np.uint8).reshape(shape)


def decode_symbol_maps(payloads: list[bytes], shape: tuple[int, int, int], n_symbols: int,
                       parents=None, version: int = VERSION) -> np.ndarray:
    """Inverse of `encode_symbol_maps`: (N, C, H, W) symbols."""
    return np.stack([decode_symbols(p, shape, n_symbols, parents, version) for p in payloads]) if payloads else \
        np.zeros((0, *shape), np.uint8)


def decode_values(payload: bytes, shape: tuple[int, int, int], level_of_symbol: np.ndarray,
                  parents=None, version: int = VERSION, *, reference: np.ndarray | None = None,
                  keep_symbols: bool = False):
    """Decode a payload straight to float32 values, ``level_of_symbol[symbol]`` each (with
    `keep_symbols`: ``(values, symbols)``; `reference` as in `encode_values`)."""
    levels = np.ascontiguousarray(level_of_symbol, np.float32)
    out = _decode(payload, shape, len(levels), parents, levels.tobytes(), version, reference, keep_symbols)
    if keep_symbols:
        return np.frombuffer(out[0], np.float32).reshape(shape), out[1]
    return np.frombuffer(out, np.float32).reshape(shape)


def channel_bits(maps: np.ndarray, n_symbols: int, parents=None, version: int = VERSION) -> np.ndarray:
    """Ideal code length in bits of every channel of (N, C, H, W) maps, summed over N (dense
    coding, no block skipping): what the partner design compares."""
    _check_alphabet(n_symbols)
    maps = np.ascontiguousarray(maps, np.uint8)
    count, channels, height, width = maps.shape
    parent_bytes, order_bytes = _layout(parents, channels)
    coder = kernel()
    return sum(np.frombuffer(coder.cost(m, channels, height, width, n_symbols, version, parent_bytes, order_bytes))
               for m in maps)


def design_partners(maps: np.ndarray, n_symbols: int, version: int = VERSION) -> list[int]:
    """Partner channels from (N, C, H, W) symbol maps of a layer (calibration).

    Channels of one layer often fire together: knowing a correlated channel's symbol at the same
    position sharpens a channel's first decision. Partners form chains — each channel links to
    its most correlated channel, a maximum spanning forest grown from the most connected
    channel, at most MAX_DEPTH deep — and a link is kept only if it shortens the channel's code
    (`channel_bits`) by 1 % and 16 bits on samples not used to choose it (the odd samples; all of them if there is
    one), so layers whose channels are independent keep none. One channel index or -1 each.
    """
    maps = np.asarray(maps, np.uint8)
    count, channels = maps.shape[:2]
    if channels < 2 or n_symbols < 2:
        return [-1] * channels
    choose, check = maps[::2], (maps[1::2] if count > 1 else maps)
    parents = _spanning_forest(_channel_correlation(choose))
    linked = parents >= 0
    with_partner = channel_bits(check, n_symbols, parents, version)
    alone = channel_bits(check, n_symbols, None, version)
    parents[linked & (with_partner > 0.99 * alone - 16)] = -1  # a link must save 1 % and 16 bits
    return [int(p) for p in parents]


def _channel_correlation(maps: np.ndarray) -> np.ndarray:
    """|Pearson correlation| between the channels' symbols, on at most about 2**16 positions
    per channel (an even spatial subsample)."""
    count, channels, height, width = maps.shape
    step = max(1, int(np.sqrt(count * height * width / 2**16)))
    values = maps[:, :, ::step, ::step].transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float32)
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1)
    values /= np.where(norms > 0, norms, 1)[:, None]
    correlation = np.abs(values @ values.T)
    np.fill_diagonal(correlation, 0)
    return correlation


def _spanning_forest(weights: np.ndarray) -> np.ndarray:
    """Prim's maximum spanning tree over `weights`, rooted at the channel with the largest total,
    where a channel at MAX_DEPTH takes no children: parent per channel (-1: the root)."""
    channels = len(weights)
    parents = np.full(channels, -1)
    depths = np.full(channels, -1)
    root = int(weights.sum(axis=1).argmax())
    depths[root] = 0
    best, best_from = weights[root].copy(), np.full(channels, root)
    best[root] = -np.inf
    for _ in range(channels - 1):
        k = int(best.argmax())
        parents[k], depths[k] = best_from[k], depths[best_from[k]] + 1
        best[k] = -np.inf
        if depths[k] < MAX_DEPTH:
            closer = (weights[k] > best) & (depths < 0)
            best[closer], best_from[closer] = weights[k][closer], k
    return parents
