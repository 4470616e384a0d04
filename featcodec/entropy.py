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
  is held skewed (`_Skewed`) so that a step and its neighbours are slices, not gathers;
* several maps can share one pass (`encode_symbol_maps`), each with its own counts and range
  coder, so each payload is exactly that of the map coded alone while numpy's per-step cost is
  paid once: the API hands the lightweight codec up to 8 samples at a time.

* version 2 (the default) first codes one bit per map: whether its empty 8 × 8 blocks are
  skipped. When a third or more of them are empty (sparse layers), a binary map of block flags
  is coded first (one version-1 pass over a map 64x smaller) and the symbol pass codes only the
  positions of flagged blocks: fewer symbols for numpy and for the range coder alike.
* version 3 adds partner channels (`design_partners`, chosen once per layer by calibration):
  a channel's first-stage context also holds its partner's symbol at the same position. Each
  channel is coded as many steps late as it is deep in its chain of partners, so that symbol is
  known by then (S2, 2-4 levels: about 10 % fewer bits, 20 % slower). The first stage's β is 8
  instead of 2 (`PARTNERED_BETA`) and counts are float32.

Payload: CRC32 of the symbols (uint32), then the range coder's 32-bit words. docs/FORMAT.md
gives the layout of each version.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .errors import CorruptStreamError

ALPHA = 0.4  # additive prior of the shared counts (KT-like)
BETA = 2.0  # weight of the shared estimate in a channel's estimate
# Version 3's first stage weighs the shared estimate more. Chosen on the reference detector's
# training photos (S1, S2 at 2-8 levels; versions 1 and 2 keep BETA, their files exist): 4 to 8
# code within 0.2 % of each other, 2 up to 1.4 % more, 16 up to 0.7 % more, 32 up to 2 % more.
PARTNERED_BETA = 8.0
MAX_SYMBOLS = 16
HEAD = 4  # first-stage alphabet: 0, 1, 2 and "3 or more"
NEAR = 8  # left and top neighbours distinguish up to 8 values in the first-stage context
FAR = 4  # top-left and top-right up to 4
REST_SIDE = 16  # second stage context: the left and top symbols themselves
REST_CONTEXTS = REST_SIDE * REST_SIDE
PASS_MEMORY = 256 << 20  # bound on what maps coded together may allocate
# Maps coded together spread numpy's per-step cost; past a few hundred channels that cost is
# already small and larger count tables only miss the cache (S4, 128 channels: 1 map per pass
# decodes at 104 MB/s, 8 maps at 86; S1, 24 channels: 62 -> 87 MB/s with 8 maps).
PASS_CHANNELS = 256
VERSION = 2  # payload layout written by default (version 1: no block mode, see the module doc)
PARTNERED = 3  # version 2 plus partner channels (`design_partners`): written for tables that name them
PARTNER = HEAD  # a partner's symbol enters the first-stage context as min(p, 3)
MAX_DEPTH = 8  # longest chain of partners: a channel's steps lag its depth in the chain
BLOCK = 8  # side of the blocks a version-2 payload skips when they hold only zeros (8: see _block_flags)
# A map skips its empty blocks when at least this fraction of them is empty: below it the
# flags and the per-step selection cost more than the symbols they save. Measured on groups of
# reference-detector channels (bytes equal within 1 % either way): 8 % empty, skipping is 15 %
# slower; 24-30 %, even; 48 %, 10 % faster to encode and 20 % to decode; 90 %, 1.5-2x.
SKIP_FROM = 1 / 3
_HALVES = np.array([[0.5, 0.5]], np.float32)  # the model of a version-2 payload's block-mode bit


def _by_row(scale: np.ndarray, width: int) -> np.ndarray:
    """`scale` repeated across rows of `width`: multiplies a (m, width) array faster than the
    (m, 1) broadcast does when rows are as short as ours, with the same products."""
    return np.repeat(scale, width).reshape(-1, width)


class _Model:
    """Adaptive counts for one alphabet, per channel and context, with a back-off shared by the
    channels of one map. Channel rows of several maps coded together are stacked; each map
    keeps its own shared table, so every map's probabilities are those of coding it alone."""

    def __init__(self, channels: int, contexts: int, n_symbols: int, maps: int = 1, dtype=np.float64,
                 beta: float = BETA):
        self.n = n_symbols
        self.contexts = contexts
        self.dtype = dtype
        self.beta = beta
        # Float counts (exact integers): the gathered rows need no conversion, and numpy's add.at
        # is as fast on floats as on ints. Versions 1 and 2 compute in float64; version 3, whose
        # tables are 4x larger, in float32: half the memory traffic, 10 % faster on S2.
        self.channel_counts = np.zeros((channels * contexts, n_symbols), dtype)
        self.channel_totals = np.zeros(channels * contexts, np.int64 if dtype == np.float64 else dtype)
        self.shared_counts = np.zeros((maps * contexts, n_symbols), np.int64)
        self.shared_totals = np.zeros(maps * contexts, np.int64)

    def probabilities(self, channel_index: np.ndarray, shared_index: np.ndarray) -> np.ndarray:
        # The shared estimate is small (maps × contexts × K): compute it whole, then gather rows.
        shared = self.shared_counts + ALPHA
        shared *= _by_row(self.beta / (self.shared_totals + self.n * ALPHA), self.n)
        if self.dtype != np.float64:
            shared = shared.astype(self.dtype)
        estimate = self.channel_counts.take(channel_index, axis=0)
        estimate += shared.take(shared_index, axis=0)
        estimate *= _by_row(self.dtype(1.0) / (self.channel_totals.take(channel_index) + self.dtype(self.beta)), self.n)
        return estimate.astype(np.float32, copy=False)

    def update(self, channel_index: np.ndarray, shared_index: np.ndarray, symbols: np.ndarray) -> None:
        # numpy ≥ 2 runs add.at on flat int64 indices fast; the shared tables are small enough
        # for a bincount.
        np.add.at(self.channel_counts.reshape(-1), channel_index * self.n + symbols, self.dtype(1))
        np.add.at(self.channel_totals, channel_index, self.channel_totals.dtype.type(1))
        self.shared_counts += np.bincount(shared_index * self.n + symbols,
                                          minlength=self.shared_counts.size).reshape(self.shared_counts.shape)
        self.shared_totals += np.bincount(shared_index, minlength=self.shared_totals.size)


class _Coder:
    """The two-stage model of `maps` maps of C channels coded side by side, one range coder per
    map: head symbol min(s, 3), then the rest s - 3."""

    def __init__(self, channels: int, n_symbols: int, maps: int = 1, partners: bool = False):
        self.n = n_symbols
        self.maps = maps
        self.head_n = min(n_symbols, HEAD)
        self.near, self.far = min(n_symbols, NEAR), min(n_symbols, FAR)
        self.partner_n = min(n_symbols, PARTNER) if partners else 1
        rows = maps * channels
        dtype = np.float32 if partners else np.float64
        self.head = _Model(rows, self.near * self.near * self.far * self.far * self.partner_n, self.head_n, maps, dtype,
                           PARTNERED_BETA if partners else BETA)
        self.rest = _Model(rows, REST_CONTEXTS, n_symbols - HEAD + 1, maps, dtype) if n_symbols > HEAD else None
        self.family = _family()
        row = np.arange(rows, dtype=np.int64)[:, None]
        self.channel_offsets = row * self.head.contexts
        self.map_offsets = row // channels * self.head.contexts
        self.channels = channels
        # First-stage context of each packed neighbour pair (see `contexts`).
        high, low = np.divmod(np.arange(256, dtype=np.int64), REST_SIDE)
        self.left_top_part = (np.minimum(high, self.near - 1) * self.near
                              + np.minimum(low, self.near - 1)) * self.far * self.far * self.partner_n
        self.diagonal_part = (np.minimum(high, self.far - 1) * self.far
                              + np.minimum(low, self.far - 1)) * self.partner_n
        self.partner_part = np.minimum(np.arange(MAX_SYMBOLS), self.partner_n - 1)

    def contexts(self, left, top, top_left, top_right, partner=None):
        """Flat per-(channel, context) rows and per-(map, context) shared rows of the first stage,
        and the second stage's context; the neighbours (and the partner channel's symbols at the
        same positions, in version 3) are (maps·C, m) runs of one step.

        Symbols are < 16, so each neighbour pair packs into one byte (`_pair`); a lookup per pair
        then gives its capped part of the context: four cheap uint8 passes and two lookups
        instead of a dozen int64 passes. The (left, top) pair is the second stage's context."""
        left_top = _pair(left, top)
        head = self.left_top_part.take(left_top)
        head += self.diagonal_part.take(_pair(top_left, top_right))
        if partner is not None:
            head += self.partner_part.take(partner)
        shared = (self.map_offsets + head).ravel() if self.maps > 1 else head.ravel()
        return (self.channel_offsets + head).ravel(), shared, left_top.ravel()

    def _rest_rows(self, positions, run, context):
        channel = positions // run
        return channel * REST_CONTEXTS + context, channel // self.channels * REST_CONTEXTS + context

    def _parts(self, run, positions=None) -> list[slice]:
        """Each map's symbols in a step (or in a sorted subset of it), one slice per map."""
        bounds = np.arange(self.maps + 1) * (self.channels * run)
        if positions is not None:
            bounds = np.searchsorted(positions, bounds)
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _select(self, neighbours, active):
        """Contexts of a step's positions and, when only the `active` ones are coded, which."""
        contexts = self.contexts(*neighbours)
        if active is None:
            return None, contexts
        positions = np.flatnonzero(active)
        return positions, [c.take(positions) for c in contexts]

    def encode_step(self, encoders, symbols, neighbours, active=None) -> None:
        """Code one step: `symbols` and `active` (mask of the positions to code, or None for
        all) are flat (maps·C·m,) runs, `neighbours` the (maps·C, m) runs of `contexts`."""
        run = neighbours[0].shape[1]
        positions, (channel_head, shared_head, rest_context) = self._select(neighbours, active)
        if positions is not None:
            symbols = symbols.take(positions)
        head = (symbols if self.n <= HEAD else np.minimum(symbols, HEAD - 1)).astype(np.int32)
        if self.head_n > 1:
            probabilities = self.head.probabilities(channel_head, shared_head)
            for encoder, part in zip(encoders, self._parts(run, positions)):
                encoder.encode(head[part], self.family, probabilities[part])
        self.head.update(channel_head, shared_head, head)
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                rest = symbols[escaped].astype(np.int32) - (HEAD - 1)
                where = escaped if positions is None else positions[escaped]
                channel_rest, shared_rest = self._rest_rows(where, run, rest_context[escaped])
                probabilities = self.rest.probabilities(channel_rest, shared_rest)
                for encoder, part in zip(encoders, self._parts(run, where)):
                    encoder.encode(rest[part], self.family, probabilities[part])
                self.rest.update(channel_rest, shared_rest, rest)

    def decode_step(self, decoders, neighbours, active=None) -> np.ndarray:
        """Inverse of `encode_step`: the step's (maps·C·m,) symbols, 0 where not active."""
        run = neighbours[0].shape[1]
        positions, (channel_head, shared_head, rest_context) = self._select(neighbours, active)
        if self.head_n == 1:
            head = np.zeros(len(channel_head), np.int32)
        elif self.maps == 1:
            head = decoders[0].decode(self.family, self.head.probabilities(channel_head, shared_head))
        else:
            probabilities = self.head.probabilities(channel_head, shared_head)
            head = np.concatenate([decoder.decode(self.family, probabilities[part])
                                   for decoder, part in zip(decoders, self._parts(run, positions))])
        self.head.update(channel_head, shared_head, head)
        symbols = head
        if self.rest is not None:
            escaped = np.flatnonzero(head == HEAD - 1)
            if escaped.size:
                where = escaped if positions is None else positions[escaped]
                channel_rest, shared_rest = self._rest_rows(where, run, rest_context[escaped])
                probabilities = self.rest.probabilities(channel_rest, shared_rest)
                rest = np.concatenate([decoder.decode(self.family, probabilities[part])
                                       for decoder, part in zip(decoders, self._parts(run, where))])
                self.rest.update(channel_rest, shared_rest, rest)
                symbols = head.copy()
                symbols[escaped] += rest
        if positions is None:
            return symbols
        every = np.zeros(active.size, np.int32)
        every[positions] = symbols
        return every


def _pair(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Two arrays of symbols < 16 packed into one uint8 array (REST_SIDE · high + low)."""
    packed = high << 4
    packed |= low
    return packed


class _Skewed:
    """The map in wavefront layout: ``cells[c, x + 2y + 3 + lag_c, y + 1]`` holds symbol (c, y, x).

    Each step x + 2y = t is then the contiguous run ``cells[:, t + 3, lo + 1 : hi + 2]`` and its
    left, top, top-left and top-right neighbours are runs of steps t - 1, t - 2, t - 3, t - 1:
    slices, not gathers. Cells that hold no position stay 0 and act as the map's zero border.

    A channel that lags (version 3: its depth in the partner chain) is coded that many steps
    late, so its partner's symbol at the same position is already known: it lies one row up in
    the partner's cells. Runs then span every lag and an `active` mask picks the real positions.
    One spare row of zeros follows the channels: the partner of channels that have none.
    """

    def __init__(self, shape: tuple[int, int, int], lags: np.ndarray | None = None):
        channels, self.height, self.width = shape
        self.lags = np.zeros(channels, np.int64) if lags is None else np.asarray(lags, np.int64)
        self.lag = int(self.lags.max(initial=0))
        self.cells = np.zeros((channels + 1, self.width + 2 * self.height + 1 + self.lag, self.height + 1), np.uint8)
        self.body = self.cells[:channels]

    def _views(self):
        """(channels, view) per lag: the (C, H, W) map as a strided view of the cells, zero-copy
        in both directions, right for the listed channels (None: all)."""
        stride_c, stride_t, stride_y = self.cells.strides
        shape = (len(self.lags), self.height, self.width)
        for lag in np.unique(self.lags):
            view = np.lib.stride_tricks.as_strided(
                self.cells[:, 3 + lag:, 1:], shape, (stride_c, 2 * stride_t + stride_y, stride_t))
            yield (None if self.lag == 0 else np.flatnonzero(self.lags == lag)), view

    def put(self, values: np.ndarray) -> None:
        """Fill the cells from (C, H, W) values."""
        for channels, view in self._views():
            if channels is None:
                view[...] = values
            else:
                view[channels] = values[channels]

    def get(self) -> np.ndarray:
        """The (C, H, W) map held in the cells."""
        result = np.empty((len(self.lags), self.height, self.width), np.uint8)
        for channels, view in self._views():
            if channels is None:
                result[...] = view
            else:
                result[channels] = view[channels]
        return result

    def steps(self):
        """(row, lo, hi) per step: positions y = lo..hi - 1 of wavefront row `row`."""
        for t in range(self.width + 2 * self.height - 2 + self.lag):
            lo, hi = max(0, (t - self.lag - self.width + 2) // 2), min(self.height - 1, t // 2) + 1
            yield t + 3, lo, hi

    def run(self, row: int, lo: int, hi: int) -> np.ndarray:
        """The (C, hi - lo) cells of a step (a view: writing it fills the map)."""
        return self.body[:, row, lo + 1:hi + 1]

    def neighbours(self, row: int, lo: int, hi: int, partner_rows: np.ndarray | None = None):
        """The step's left, top, top-left and top-right runs, then its partners' when given
        (`partner_rows`: each channel's partner, or the spare zero row)."""
        cells = self.body
        runs = (cells[:, row - 1, lo + 1:hi + 1], cells[:, row - 2, lo:hi],
                cells[:, row - 3, lo:hi], cells[:, row - 1, lo:hi])
        if partner_rows is None:
            return runs
        return (*runs, self.cells[:, row - 1, lo + 1:hi + 1].take(partner_rows, axis=0))


def _maps_per_pass(channels: int, height: int, width: int, n_symbols: int, partners: bool = False) -> int:
    """How many maps one wavefront pass holds: about PASS_CHANNELS channels, within PASS_MEMORY
    bytes of count tables, skewed cells and skewed block mask (at least one map)."""
    head = min(n_symbols, NEAR) ** 2 * min(n_symbols, FAR) ** 2 * (min(n_symbols, HEAD) + 1)
    head *= min(n_symbols, PARTNER) if partners else 1
    rest = REST_CONTEXTS * (n_symbols - HEAD + 2) if n_symbols > HEAD else 0
    per_map = channels * ((head + rest) * 8 + 2 * (width + 2 * height + 1 + MAX_DEPTH) * (height + 1))
    return max(1, min(PASS_MEMORY // per_map, PASS_CHANNELS // channels))


def _check_alphabet(n_symbols: int) -> None:
    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"n_symbols must be 1..{MAX_SYMBOLS}")


def _check_version(version: int, parents, channels: int) -> np.ndarray | None:
    """Validated partner depths (version 3) or None."""
    if version not in (1, 2, PARTNERED):
        raise ValueError(f"unknown entropy coder version {version!r}")
    if (version == PARTNERED) != (parents is not None):
        raise ValueError(f"partner channels go with version {PARTNERED} and only with it")
    return None if parents is None else partner_depths(parents, channels)


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


def _partner_rows(parents: np.ndarray, count: int) -> np.ndarray:
    """Each row's partner row in a pass of `count` maps: same map, the spare zero row if none."""
    channels = len(parents)
    rows = np.arange(count)[:, None] * channels + np.asarray(parents, np.int64)
    return np.where(np.asarray(parents) >= 0, rows, count * channels).ravel()


def encode_symbols(symbols: np.ndarray, n_symbols: int, version: int = VERSION, parents=None) -> bytes:
    """Code a (C, H, W) uint8 map of symbols < `n_symbols` (≤ 16); version 3 takes the
    partner of each channel (`design_partners`)."""
    return encode_symbol_maps(symbols[None], n_symbols, version, parents)[0]


def encode_symbol_maps(maps: np.ndarray, n_symbols: int, version: int = VERSION, parents=None) -> list[bytes]:
    """Code N (C, H, W) maps at once, one payload each, byte for byte what `encode_symbols`
    gives for each map alone: one wavefront pass serves them all, which spreads numpy's
    per-step overhead over N maps (a large gain for maps with few channels)."""
    import constriction

    _check_alphabet(n_symbols)
    maps = np.asarray(maps, np.uint8)
    count, channels, height, width = maps.shape
    depths = _check_version(version, parents, channels)
    group = _maps_per_pass(channels, height, width, n_symbols, depths is not None)
    if count > group:
        return [p for start in range(0, count, group)
                for p in encode_symbol_maps(maps[start:start + group], n_symbols, version, parents)]
    encoders = [constriction.stream.queue.RangeEncoder() for _ in range(count)]
    active = None
    if version >= 2:
        flags = _block_flags(maps)
        skips = (flags == 0).mean(axis=(1, 2, 3)) >= SKIP_FROM
        family = _family()
        for encoder, skip in zip(encoders, skips):
            encoder.encode(np.array([skip], np.int32), family, _HALVES)
        if skips.any():
            _encode_pass(flags[skips], 2, [e for e, skip in zip(encoders, skips) if skip])
        active = _active_cells(flags, skips, (height, width), depths)
    _encode_pass(maps, n_symbols, encoders, active, parents)
    payloads = []
    for symbols, encoder in zip(maps, encoders):
        checksum = zlib.crc32(np.ascontiguousarray(symbols).tobytes()) & 0xFFFFFFFF
        payloads.append(struct.pack("<I", checksum) + encoder.get_compressed().astype("<u4").tobytes())
    return payloads


def decode_symbols(payload: bytes, shape: tuple[int, int, int], n_symbols: int, version: int = VERSION,
                   parents=None) -> np.ndarray:
    """Inverse of `encode_symbols`; a corrupt payload raises `CorruptStreamError`."""
    return decode_symbol_maps([payload], shape, n_symbols, version, parents)[0]


def decode_symbol_maps(payloads: list[bytes], shape: tuple[int, int, int], n_symbols: int,
                       version: int = VERSION, parents=None) -> np.ndarray:
    """Inverse of `encode_symbol_maps`: (N, C, H, W) symbols. A corrupt payload raises
    `CorruptStreamError`."""
    import constriction

    _check_alphabet(n_symbols)
    channels, height, width = shape
    depths = _check_version(version, parents, channels)
    group = _maps_per_pass(channels, height, width, n_symbols, depths is not None)
    if len(payloads) > group:
        return np.concatenate([decode_symbol_maps(payloads[start:start + group], shape, n_symbols, version, parents)
                               for start in range(0, len(payloads), group)])
    checksums, decoders = [], []
    for payload in payloads:
        if len(payload) < 4 or (len(payload) - 4) % 4:
            raise CorruptStreamError(f"entropy-coded payload has an impossible length {len(payload)}")
        checksums.append(struct.unpack_from("<I", payload)[0])
        words = np.frombuffer(payload, "<u4", offset=4).astype(np.uint32)
        decoders.append(constriction.stream.queue.RangeDecoder(words))
    count = len(payloads)
    try:
        active = None
        if version >= 2:
            family = _family()
            skips = np.array([decoder.decode(family, _HALVES)[0] == 1 for decoder in decoders])
            flags = np.ones((count, channels, *_block_grid(height, width)), np.uint8)
            if skips.any():
                flags[skips] = _decode_pass([d for d, skip in zip(decoders, skips) if skip], flags.shape[1:], 2)
            active = _active_cells(flags, skips, (height, width), depths)
        symbols = _decode_pass(decoders, shape, n_symbols, active, parents)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise CorruptStreamError(f"entropy-coded payload is corrupt: {err}") from err
    except BaseException as err:
        # A Rust panic in constriction reaches Python as pyo3's PanicException, a BaseException.
        # None is known on this path, but a payload must never end in a traceback.
        if type(err).__name__ != "PanicException":
            raise
        raise CorruptStreamError(f"entropy-coded payload is corrupt: {err}") from err
    for k, (decoded, checksum) in enumerate(zip(symbols, checksums)):
        if zlib.crc32(decoded.tobytes()) & 0xFFFFFFFF != checksum:
            which = f" {k}" if count > 1 else ""
            raise CorruptStreamError(f"entropy-coded payload{which} is corrupt: symbol checksum mismatch")
    return symbols


def _pass_layout(count: int, parents):
    """Per-row lags and partner rows of a pass over `count` maps (None, None without partners)."""
    if parents is None:
        return None, None
    return np.tile(partner_depths(parents, len(parents)), count), _partner_rows(parents, count)


def _encode_pass(maps: np.ndarray, n_symbols: int, encoders, active: _Skewed | None = None, parents=None) -> None:
    """One wavefront pass over N (C, H, W) maps, one encoder each, coding only the `active`
    positions (skewed mask) when given."""
    count, channels, height, width = maps.shape
    lags, partner_rows = _pass_layout(count, parents)
    skewed = _Skewed((count * channels, height, width), lags)
    skewed.put(maps.reshape(count * channels, height, width))
    coder = _Coder(channels, n_symbols, count, parents is not None)
    for row, lo, hi in skewed.steps():
        mask = None if active is None else active.run(row, lo, hi).ravel()
        coder.encode_step(encoders, skewed.run(row, lo, hi).ravel(), skewed.neighbours(row, lo, hi, partner_rows), mask)


def _decode_pass(decoders, shape: tuple[int, int, int], n_symbols: int, active: _Skewed | None = None,
                 parents=None) -> np.ndarray:
    """Inverse of `_encode_pass`: (N, C, H, W) symbols, 0 where not active."""
    channels, height, width = shape
    count = len(decoders)
    lags, partner_rows = _pass_layout(count, parents)
    skewed = _Skewed((count * channels, height, width), lags)
    coder = _Coder(channels, n_symbols, count, parents is not None)
    for row, lo, hi in skewed.steps():
        mask = None if active is None else active.run(row, lo, hi).ravel()
        decoded = coder.decode_step(decoders, skewed.neighbours(row, lo, hi, partner_rows), mask)
        skewed.run(row, lo, hi)[...] = decoded.reshape(count * channels, hi - lo)
    return skewed.get().reshape(count, channels, height, width)


def _block_flags(maps: np.ndarray) -> np.ndarray:
    """(N, C, ⌈H/B⌉, ⌈W/B⌉) uint8: 1 where a BLOCK × BLOCK block holds a non-zero symbol."""
    count, channels, height, width = maps.shape
    rows, columns = _block_grid(height, width)
    if (height, width) == (rows * BLOCK, columns * BLOCK):
        padded = np.ascontiguousarray(maps)
    else:
        padded = np.zeros((count, channels, rows * BLOCK, columns * BLOCK), np.uint8)
        padded[:, :, :height, :width] = maps
    # The 8 symbols of a block's row read as one uint64: a reduction over 8 strided rows
    # instead of numpy's slow reduction over short inner axes.
    row_nonzero = padded.view(np.uint64) != 0
    return row_nonzero.reshape(count, channels, rows, BLOCK, columns).any(axis=3).astype(np.uint8)


def _block_grid(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of BLOCK x BLOCK blocks covering a map (edge blocks partial)."""
    return -(-height // BLOCK), -(-width // BLOCK)


def _active_cells(flags: np.ndarray, skips: np.ndarray, size: tuple[int, int], depths=None) -> _Skewed | None:
    """The positions a version-2/3 pass codes, as a skewed mask to slice step by step: those of
    flagged blocks in maps that skip empty blocks, every position in the others. None when
    every position of every map is coded and no channel lags (no mask needed)."""
    lagging = depths is not None and depths.any()
    if not (skips.any() or lagging):
        return None
    count, channels = flags.shape[:2]
    height, width = size
    flags = flags.copy()
    flags[~skips] = 1
    every = flags.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)[:, :, :height, :width]
    active = _Skewed((count * channels, height, width), np.tile(depths, count) if lagging else None)
    active.put(every.reshape(count * channels, height, width))
    return active


def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def design_partners(maps: np.ndarray, n_symbols: int) -> list[int]:
    """Partner channels for version 3, from (N, C, H, W) symbol maps of a layer (calibration).

    Channels of one layer often fire together: knowing a correlated channel's symbol at the same
    position sharpens a channel's first-stage estimate (reference detector S2, 2 levels: about
    -10 % bits). Partners form chains — each channel links to its most correlated channel,
    a maximum spanning forest grown from the most connected channel, at most MAX_DEPTH deep —
    and a link is kept only if it shortens the channel's adaptive code on samples not used to
    choose it (the odd samples; all of them if there is one), so layers whose channels are
    independent (the sparse S4) keep none. Returns one channel index or -1 per channel.
    """
    maps = np.asarray(maps, np.uint8)
    count, channels = maps.shape[:2]
    if channels < 2 or n_symbols < 2:
        return [-1] * channels
    choose, check = maps[::2], (maps[1::2] if count > 1 else maps)
    parents = _spanning_forest(_channel_correlation(choose))
    linked = parents >= 0
    with_partner = _head_code_lengths(check, n_symbols, parents)
    alone = _head_code_lengths(check, n_symbols, None)
    parents[linked & (with_partner >= alone)] = -1
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


def _head_code_lengths(maps: np.ndarray, n_symbols: int, parents) -> np.ndarray:
    """Bits per channel of the first-stage symbols under adaptive per-channel counts (the
    Krichevsky-Trofimov code, which the coder's estimate tracks) in the first-stage contexts,
    with the partner's symbol in them when `parents` is given."""
    count, channels, height, width = maps.shape
    coder = _Coder(channels, n_symbols, partners=parents is not None)
    padded = np.zeros((count, channels, height + 1, width + 2), np.uint8)
    padded[:, :, 1:, 1:-1] = maps
    left, top = padded[:, :, 1:, :-2], padded[:, :, :-1, 1:-1]
    top_left, top_right = padded[:, :, :-1, :-2], padded[:, :, :-1, 2:]
    context = coder.left_top_part.take(_pair(left, top)) + coder.diagonal_part.take(_pair(top_left, top_right))
    if parents is not None:
        partner = np.where((parents >= 0)[:, None, None], maps[:, np.maximum(parents, 0)], 0)
        context += coder.partner_part.take(partner)
    head = np.minimum(maps, HEAD - 1)
    k = coder.head_n
    rows = (np.arange(channels)[:, None, None] * coder.head.contexts + context) * k + head
    counts = np.bincount(rows.ravel(), minlength=channels * coder.head.contexts * k)
    counts = counts.reshape(channels, coder.head.contexts, k)
    totals = counts.sum(axis=2)
    # log Γ(n + a) - log Γ(a) for integer n, by a running sum of log(j + a)
    top = int(totals.max()) + 1
    log_rising = lambda a: np.concatenate([[0.0], np.cumsum(np.log2(np.arange(top) + a))])  # noqa: E731
    symbol_part, total_part = log_rising(ALPHA), log_rising(k * ALPHA)
    return total_part[totals].sum(axis=1) - symbol_part[counts].sum(axis=(1, 2))
