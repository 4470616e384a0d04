"""``lightweight``: clip, coarse scalar quantization, context-adaptive entropy coding.

The codec of Cohen, Choi & Bajić for split-network activations, with no retraining:

1. **Clip.** ``clip="auto"`` minimises the expected clipping + granular error of the chosen
   quantizer over the tensor's own value distribution (or a calibration set's);
   ``clip="model"`` minimises it under the paper's model (Gaussian pre-activations through
   ReLU / leaky-ReLU, closed form, `featcodec.quantizer.optimal_clip`); ``[lo, hi]`` sets it.
   Real activations have heavier tails than a Gaussian, which makes the model's clip too
   tight (see the lightweight note in the README), hence the empirical default. The ``snr=``
   and ``bpe=`` searches also weigh a wider clip chosen for its bits (`rate_clip`).
2. **Quantize** to ``levels`` cells, uniformly or with an entropy-constrained quantizer
   (``quantizer="ecsq"``, Lagrangian ``lam``) whose end levels stay on the clip points, so a
   ReLU zero decodes to exactly 0. ``bpe=`` searches levels and clips (and λ) for a rate target.
3. **Entropy-code** the cell indices with `featcodec.entropy`, the compiled kernel (adaptive
   binary contexts from coded neighbours and partner channels, range coder); the kernel also
   quantizes, so encoding is one pass over the float32 input, and decodes straight to levels.

Without calibration the quantizer is designed for each sample and stored in the header's
per-sample side information. `Lightweight.calibrate` designs it once from many samples and
stores it in the codec's configuration, so per-sample encoding is a single pass.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ..entropy import FAST_VERSION, decode_values, design_partners, encode_symbol_maps, encode_values, partner_depths
from ..entropy import VERSION as CODER_VERSION
from ..entropy import VERSIONS as CODER_VERSIONS
from ..errors import CorruptStreamError, InvalidInputError, UnsupportedFormatError
from ..quantizer import (
    ActivationModel,
    design_ecsq,
    detect_activation,
    lookup,
    optimal_clip,
    parse_activation,
    quantize,
    uniform_quantizer,
    uniform_quantizers,
)
from .base import GOP_PARAM, Codec, Param, SequenceDecoder, SequenceEncoder, check_gop, parse_clip

MAX_LEVELS = 16
# With neither levels, bpe nor snr given, the quantizer gets the fewest bits that keep this
# signal-to-quantization-noise ratio (dB). A distortion target transfers across layers and
# networks where a fixed level count or rate does not: on the reference detector's S1, S2 and
# S4, calibrated on the training photos, agreement mAP 0.94 on 168 other photos (README,
# lightweight section; on the training photos themselves 0.97-0.99).
DEFAULT_SNR = 15.0
# Values (a strided subsample) a quantizer is designed on: one sample's, or a calibration stack's.
DESIGN_SAMPLE = 131_072
CALIBRATION_SAMPLE = 400_000
# The samples of one call or stream, uncalibrated, at a distortion target (the default path): the
# quantizer designed for one sample is kept for the next while, measured on the next sample's design
# values (sorted first: a design reads them too when the check fails), its noise meets the target and
# is at most REUSE_MARGIN_DB below it (bench/results/lightweight_default_speed.md).
REUSE_MARGIN_DB = 1.0
# The default path's quantizer search (`snr_search`): bins of its binned distribution, and its grids
# (a geometric one of COARSE_POINTS, then ZOOM_ROUNDS of ZOOM_POINTS between the best one's neighbours).
BINNED_SEARCH = True  # False: level count by level count on the exact distribution (the bench compares)
SEARCH_BINS = 4096
COARSE_POINTS = 24
ZOOM_POINTS = 17
ZOOM_ROUNDS = 2
ALTERNATIONS = 2  # hi, then lo, twice (signed maps)
RATE_ALTERNATIONS = 1  # hi, then lo, once: from the least-error clip, near already
BINNED_MARGIN = 0.05  # how far above the target a binned MSE may be and still be checked exactly
# Calibration gives a layer partner channels only when they cut the coded size of held-out
# calibration samples by at least this much (bench/results/lightweight.md says which layers do).
MIN_PARTNER_GAIN = 0.02
PARTNER_SAMPLES = 8  # calibration samples (at most) that choose and check partner channels
# Designed quantizers are coded by the fast coder (version 7) unless ``fast=False`` asks for version 5:
# on sparse maps (the reference S4) version 7 is also the smaller, on dense ones (S1, S2) it costs
# 2-5 % more bits for 2-3x the speed (bench/results/lightweight_default_speed.md).


class Lightweight(Codec):
    """Clip + scalar quantizer (uniform or ECSQ) + context-adaptive range coding.

    >>> import numpy as np
    >>> x = np.maximum(np.random.default_rng(0).normal(0, 1, (4, 16, 16)), 0).astype(np.float32)
    >>> codec = Lightweight(levels=4)
    >>> payload, info = codec.encode(x)
    >>> y = codec.decode(payload, x.shape, info)
    >>> bool((y[x == 0] == 0).all()), len(np.unique(y)) <= 4
    (True, True)
    """

    codec_id = "lightweight"
    params = (
        Param("levels", int, "Number of quantization levels (2-16)."),
        Param("bpe", float, "Target bits per element (searches levels and clips)."),
        Param("snr", float, f"Target signal-to-noise ratio in dB (default {DEFAULT_SNR:g})."),
        Param("clip", str, "Clip range: auto (measured), model (Gaussian) or LO,HI."),
        Param("activation", str, "auto, relu, leaky:SLOPE or none."),
        Param("quantizer", str, "Uniform or entropy-constrained scalar quantizer.", choices=("uniform", "ecsq")),
        Param("lam", float, "ECSQ Lagrangian λ (rate weight)."),
        Param("partners", bool, "Partner channels when calibrating (--no-partners: faster coding, larger)."),
        Param("fast", bool, "One multi-symbol coding step per element (coder version 7, the default); "
                            "--no-fast: mixed binary decisions (version 5), 1.6-5x slower, -15 to +5 % bits."),
        Param("table", dict, "A calibrated quantizer table (from `featcodec calibrate`).", cli=False),
        GOP_PARAM,
    )
    config_omits = {"gop": 1, "fast": None}
    weigh_rate_clips = True  # the searches weigh `rate_clip`'s quantizers too (off: what they gain)
    rate_points = {
        "paper": [("default", {})] + [(f"levels={n}", {"levels": n}) for n in (2, 3, 4, 8, 16)]
        + [(f"bpe={b}", {"bpe": b}) for b in (0.6, 0.8)] + [("levels=8,no-fast", {"levels": 8, "fast": False})],
        "quick": [("default", {}), ("levels=4", {"levels": 4}), ("bpe=0.6", {"bpe": 0.6})],
    }

    def __init__(self, levels: int | None = None, bpe: float | None = None, snr: float | None = None,
                 clip: Any = "auto", activation: str = "auto", quantizer: str = "uniform", lam: float = 0.0,
                 partners: bool = True, fast: bool | None = None, table: dict | None = None, gop: int = 1):
        if levels is not None and (not isinstance(levels, int) or not 2 <= levels <= MAX_LEVELS):
            raise InvalidInputError(f"lightweight levels must be an integer 2..{MAX_LEVELS}, got {levels!r}")
        if bpe is not None and (not isinstance(bpe, (int, float)) or not 0 < bpe < 8):
            raise InvalidInputError(f"bpe target must be a number in (0, 8), got {bpe!r}")
        if snr is not None and (not isinstance(snr, (int, float)) or not 0 < snr < 60):
            raise InvalidInputError(f"snr target must be a number of dB in (0, 60), got {snr!r}")
        if sum(v is not None for v in (levels, bpe, snr)) > 1:
            raise InvalidInputError("give one of --levels, --bpe and --snr")
        if levels is None and bpe is None and snr is None and table is None:
            snr = DEFAULT_SNR
        clip = parse_clip(clip, ("auto", "model"))
        parse_activation(activation)
        if quantizer not in ("uniform", "ecsq"):
            raise InvalidInputError(f"quantizer must be uniform or ecsq, got {quantizer!r}")
        if not isinstance(lam, (int, float)) or lam < 0:
            raise InvalidInputError(f"lam (the ECSQ Lagrangian) must be ≥ 0, got {lam!r}")
        if not isinstance(partners, bool):
            raise InvalidInputError(f"partners must be true or false, got {partners!r}")
        if fast is not None and not isinstance(fast, bool):
            raise InvalidInputError(f"fast must be true or false, got {fast!r}")
        self.levels = levels
        self.bpe = None if bpe is None else float(bpe)
        self.snr = None if snr is None else float(snr)
        self.clip = clip
        self.activation = activation
        self.quantizer = quantizer
        self.lam = float(lam)
        self.partners = partners
        self.fast = fast
        if isinstance(table, dict) and "coder" not in table:  # a hand-written table: coded as designed ones
            table = {**table, "coder": self._designed_version}
        self.table = None if table is None else _check_table(table, InvalidInputError)
        self.gop = check_gop(gop)

    # --- design ---------------------------------------------------------------------------

    def design(self, data: np.ndarray, dist: ValueDistribution | None = None) -> dict[str, list[float]]:
        """Design the quantizer for `data` (one sample or a stack of samples), as a table (`dist`:
        `design_values(data)`, when the caller has it)."""
        data = np.asarray(data, np.float32)
        # Sorted once: every clip search, MSE and level-count search below reads this.
        dist = design_values(data) if dist is None else dist
        kind, slope = parse_activation(self.activation)
        if kind == "auto":
            kind = detect_activation(dist.sorted)
        if self.bpe is not None:
            table = self._search_rate(data, dist, kind, slope)
        elif self.snr is not None:
            table = self._search_snr(dist, kind, slope)
        else:
            table = self._design(dist, self.levels, kind, slope, self.lam)
        return {**_zero_first(table), "coder": self._designed_version}

    @property
    def _designed_version(self) -> int:
        """The coder version of tables this codec designs: the fast one unless ``fast=False``."""
        return CODER_VERSION if self.fast is False else FAST_VERSION

    def _search_snr(self, dist, kind, slope) -> dict[str, list[float]]:
        """The quantizer of fewest bits (order-0 entropy of its cells) whose noise stays `snr` dB
        below the signal power, over 2-16 levels and both clips of `_candidates`; none that close:
        the 16-level one of least error."""
        allowed = dist.variance / 10 ** (self.snr / 10)
        if (BINNED_SEARCH and self.clip == "auto" and self.quantizer == "uniform" and self.lam == 0
                and dist.sorted[-1] > dist.sorted[0]):
            # the default path: the same search, binned
            return snr_search(dist, allowed, relu=kind == "relu", rate_clips=self.weigh_rate_clips)
        bits = lambda table: float(dist.entropy_batch(np.asarray([table["thresholds"]]))[0])  # noqa: E731
        # No quantizer of N levels has less error than the least-error one, whose error falls as N
        # rises: bisect for the fewest levels at which it meets the target, and search from there.
        low, high = 2, MAX_LEVELS
        while low < high:
            middle = (low + high) // 2
            table = self._design(dist, middle, kind, slope, self.lam)
            if dist.mse(table["thresholds"], table["levels"]) <= allowed:
                high = middle
            else:
                low = middle + 1
        best = None
        for n_levels in range(low, MAX_LEVELS + 1):
            candidates = self._candidates(dist, n_levels, kind, slope, self.lam)
            if best is not None and min(map(bits, candidates)) > bits(best):
                break  # more levels only cost more
            for table in candidates:
                if dist.mse(table["thresholds"], table["levels"]) <= allowed and (best is None or
                                                                                  bits(table) < bits(best)):
                    best = table
        return best or candidates[0]

    def _candidates(self, dist, n_levels, kind, slope, lam) -> list[dict[str, list[float]]]:
        """The N-level quantizers a rate or distortion search weighs: the one of least error, and
        with the default clip and a uniform quantizer also the one clipped for its bits (`rate_clip`)."""
        tables = [self._design(dist, n_levels, kind, slope, lam)]
        if self.weigh_rate_clips and self.clip == "auto" and self.quantizer == "uniform" and lam == 0:
            tables.append(self._design(dist, n_levels, kind, slope, lam, by_rate=True))
        return tables

    def _design(self, dist, n_levels, kind, slope, lam, by_rate=False) -> dict[str, list[float]]:
        if isinstance(self.clip, list):
            lo, hi = self.clip
        elif self.clip == "model":
            lo, hi = optimal_clip(ActivationModel.fit(dist.sorted, kind, slope), n_levels)
        else:
            lo, hi = (rate_clip if by_rate else empirical_clip)(dist, n_levels, relu=kind == "relu")
        if not hi > lo:  # a constant tensor
            hi = lo + 1.0
        if self.quantizer == "ecsq" or lam > 0:
            thresholds, levels = design_ecsq(dist.sorted, lo, hi, n_levels, lam)
        else:
            thresholds, levels = uniform_quantizer(lo, hi, n_levels)
        return {"thresholds": [float(t) for t in thresholds], "levels": [float(v) for v in levels]}

    def _search_rate(self, data, dist, kind, slope) -> dict[str, list[float]]:
        """The quantizer of least error whose coded rate meets the target, over 2-16 levels and
        both clips of `_candidates`; with ``quantizer="ecsq"``, the most levels that meet it, then
        λ spends what is left at the next level count.

        The uniform search is the default because ECSQ at large λ widens the zero cell until
        small activations vanish, which costs a detector far more than its MSE suggests.
        """
        probe = _rate_probe(data)
        rate = lambda table: _coded_bpe(probe, table, self._designed_version)  # noqa: E731
        if self.quantizer == "uniform":  # the least error among the quantizers that fit
            fitting = []
            for n_levels in range(2, MAX_LEVELS + 1):
                fits = [t for t in self._candidates(dist, n_levels, kind, slope, 0.0) if rate(t) <= self.bpe]
                if not fits:
                    break  # more levels only cost more
                fitting += fits
            return min(fitting, key=lambda t: dist.mse(**t)) if fitting else self._design(dist, 2, kind, slope, 0.0)
        best, above = None, None
        for n_levels in range(2, MAX_LEVELS + 1):
            table = self._design(dist, n_levels, kind, slope, 0.0)
            if rate(table) <= self.bpe:
                best = table
            else:
                above = n_levels
                break
        if above is None:
            return best or self._design(dist, 2, kind, slope, 0.0)
        scale = float(np.var(dist.sorted)) or 1.0
        lo_lam, hi_lam = 0.0, scale
        while rate(self._design(dist, above, kind, slope, hi_lam)) > self.bpe and hi_lam < 1e3 * scale:
            lo_lam, hi_lam = hi_lam, hi_lam * 4
        for _ in range(8):
            middle = (lo_lam + hi_lam) / 2
            if rate(self._design(dist, above, kind, slope, middle)) > self.bpe:
                lo_lam = middle
            else:
                hi_lam = middle
        candidate = self._design(dist, above, kind, slope, hi_lam)
        if best is None or dist.mse(**candidate) < dist.mse(**best):
            return candidate
        return best

    def calibrate(self, samples: np.ndarray) -> Lightweight:
        """A copy of this codec whose quantizer is designed once from `samples` (N, C, H, W),
        with partner channels for the entropy coder when they pay (`MIN_PARTNER_GAIN`) unless
        ``partners=False`` (faster coding, larger payloads).

        A ``bpe`` target is searched on a few channels coded without partners, which can misjudge
        the calibrated rate badly (partners cut the reference S2's bits by a third); the search is
        run once more with the target scaled by that error when it missed by over 5 %, and the
        table that comes nearer the target without passing it is kept."""
        samples = np.asarray(samples, np.float32)
        table = self._fitted_table(samples)
        if self.bpe is not None and samples.ndim == 4:
            coded = _calibrated_bpe(table, samples)
            if abs(coded / self.bpe - 1) > 0.05:
                estimate = _coded_bpe(_rate_probe(samples), table, _coder_version(table))
                config = {**self.get_config(), "bpe": min(self.bpe * estimate / coded, 7.9)}
                config.pop("id")
                retry = Lightweight(**config)._fitted_table(samples)
                retry_coded = _calibrated_bpe(retry, samples)
                if abs(retry_coded - self.bpe) < abs(coded - self.bpe) and retry_coded <= 1.05 * self.bpe:
                    table = retry
        config = self.get_config()
        config.update(table=table, bpe=None, snr=None, levels=None)
        config.pop("id")
        return Lightweight(**config)

    def _fitted_table(self, samples: np.ndarray) -> dict:
        """The designed table, with partners and the coder `calibrate` chooses."""
        table = self.design(samples)
        if samples.ndim == 4 and self.partners:
            table = _with_partners(table, samples)
        return table

    # --- coding ---------------------------------------------------------------------------

    # One sample per kernel call: the kernel has no per-call overhead to spread over a batch.
    def encode(self, sample):
        table = self._table_for(sample)
        return self._encode_with(table, sample), {} if self.table else table

    def _table_for(self, sample: np.ndarray, dist: ValueDistribution | None = None) -> dict:
        """The calibrated quantizer (checked against the sample's channels), or one designed for `sample`."""
        if self.table:
            _check_partners(self.table, sample.shape, InvalidInputError)
            return self.table
        with self.stage("design"):
            return self.design(sample, dist)

    def _encode_with(self, table: dict, sample: np.ndarray, **inter):
        """Quantize and code `sample` with `table` (`inter`: ``reference``, ``keep_symbols`` of
        `featcodec.entropy.encode_values`)."""
        with self.stage("entropy_encode"):  # quantization included: the kernel does both in one pass
            return encode_values(sample, table["thresholds"], symbol_order(table), len(table["levels"]),
                                 table.get("parents"), _coder_version(table), **inter)

    def _decode_with(self, table: dict, payload: bytes, shape, **inter):
        """Decode a payload straight to `table`'s levels (`inter` as in `_encode_with`)."""
        with self.stage("entropy_decode"):  # dequantization included
            return decode_values(payload, tuple(shape), _levels_by_symbol(table), table.get("parents"),
                                 _coder_version(table), **inter)

    def sequence_encoder(self) -> SequenceEncoder:
        if self.gop > 1:
            return _InterEncoder(self)
        if self.table is None and self.snr is not None:
            return _ReuseEncoder(self)
        return super().sequence_encoder()

    def _noise_ratio(self, table: dict, dist: ValueDistribution) -> float:
        """Quantization noise of `table` on a sample's design values over the noise the distortion
        target allows (≤ 1: the target is met)."""
        allowed = dist.variance / 10 ** (self.snr / 10)
        noise = dist.quantizer_mse(table["thresholds"], table["levels"])
        return noise / allowed if allowed > 0 else (0.0 if noise == 0 else np.inf)

    def sequence_decoder(self, shape) -> SequenceDecoder:
        return _InterDecoder(self, shape) if self.gop > 1 else super().sequence_decoder(shape)

    def describe(self) -> str:
        if not self.table:
            return super().describe()
        partners = " with partner channels" if "parents" in self.table else ""
        coder = ", fast coder" if _coder_version(self.table) >= 6 else ""  # version 6: the fast coder before 7
        return f"codec {self.codec_id} (calibrated {len(self.table['levels'])}-level quantizer{partners}{coder})"

    def validate(self, shape, info):
        _check_partners(self.table or _check_table(info, CorruptStreamError), shape, CorruptStreamError)

    def decode(self, payload, shape, info):
        return self._decode_with(self.table or _check_table(info, CorruptStreamError), payload, shape)


class _InterEncoder(SequenceEncoder):
    """Sequences (``gop > 1``): the first sample of a group is coded alone, each next one with the
    previous sample's symbols as context (`featcodec.entropy.encode_values`, ``reference``). The
    quantizer is the calibrated one, or designed on the group's first sample and kept for the group
    (a reference symbol means the same level), recorded in every sample's side information."""

    def __init__(self, codec: Lightweight):
        super().__init__(codec)
        self.position, self.table, self.reference = 0, None, None

    def push(self, sample):
        codec = self.codec
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if self.position % codec.gop == 0:
            self.table, self.reference = codec._table_for(sample), None
        if self.reference is not None and self.reference.shape != sample.shape:
            raise InvalidInputError(f"sample of shape {sample.shape} in a sequence of {self.reference.shape}")
        payload, self.reference = codec._encode_with(self.table, sample, reference=self.reference, keep_symbols=True)
        self.position += 1
        return [(payload, {} if codec.table else self.table)]


class _ReuseEncoder(SequenceEncoder):
    """The default path over several samples (uncalibrated, a distortion target): the quantizer
    designed for one sample is kept for the next while its noise there meets the target and is at
    most REUSE_MARGIN_DB below what the target allows (finer would spend bits the target does not
    need); otherwise one is designed for that sample. Each sample still records its table, so every
    sample decodes alone, and a run of unlike samples (photos) designs for each as before."""

    def __init__(self, codec: Lightweight):
        super().__init__(codec)
        self.table = None

    def push(self, sample):
        codec = self.codec
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        with codec.stage("design"):  # the sample's design values: the check reads them, a design too
            dist = design_values(sample)
            kept = self.table is not None and 10 ** (-REUSE_MARGIN_DB / 10) <= codec._noise_ratio(self.table, dist) <= 1
            if not kept:
                self.table = None
        if self.table is None:
            self.table = codec._table_for(sample, dist)
        return [(codec._encode_with(self.table, sample), self.table)]


class _InterDecoder(SequenceDecoder):
    """Decodes what `_InterEncoder` wrote, sample by sample, from a group start."""

    reference: np.ndarray | None = None

    def push(self, payload, info, starts_group):
        codec = self.codec
        if starts_group:
            self.reference = None
        elif self.reference is None:
            raise CorruptStreamError("a sequence must be decoded from the start of a group")
        table = codec.table or _check_table(info, CorruptStreamError)
        values, self.reference = codec._decode_with(table, payload, self.shape, reference=self.reference,
                                                    keep_symbols=True)
        return [values]

    def finish(self):
        return []


def symbol_order(table: dict) -> np.ndarray:
    """The entropy coder's symbol for each quantizer cell.

    The coder's first stage sees min(symbol, 3), so the likeliest cells should get the smallest
    symbols. On ReLU maps cell 0 holds the zeros and cell order is already right. On signed maps
    the likeliest cell is the one around 0, in the middle: tables marked ``"order": "zigzag"``
    number cells by distance from it (0, +1, -1, +2, …; the longer side goes on alone), which on
    the reference detector's S1 codes 15-25 % faster and up to 1 % smaller at 8-14 levels.
    """
    n = len(table["levels"])
    if table.get("order") != "zigzag":
        return np.arange(n, dtype=np.uint8)
    zero = _zero_cell(table)
    cells = sorted(range(n), key=lambda cell: (abs(cell - zero), cell < zero))
    order = np.empty(n, np.uint8)
    order[cells] = np.arange(n, dtype=np.uint8)
    return order


def _zero_cell(table: dict) -> int:
    """The cell that 0 falls in (as `quantize` assigns it)."""
    return int(np.searchsorted(np.asarray(table["thresholds"], np.float64), 0.0, side="right"))


def _zero_first(table: dict) -> dict:
    """Mark a table whose zero cell is not cell 0 for zigzag symbol order (see `symbol_order`)."""
    return {**table, "order": "zigzag"} if _zero_cell(table) > 0 else table


def _levels_by_symbol(table: dict) -> np.ndarray:
    return np.asarray(table["levels"], np.float32)[np.argsort(symbol_order(table))]


def _symbols(sample: np.ndarray, table: dict) -> np.ndarray:
    cells = quantize(sample, np.asarray(table["thresholds"], np.float32))
    order = symbol_order(table)
    return cells if (order == np.arange(len(order))).all() else lookup(order, cells)


def _coder_version(table: dict) -> int:
    """The entropy coder version a table names (a hand-written table without one: the current)."""
    return table.get("coder", CODER_VERSION)


def _check_table(table, error) -> dict[str, list[float]]:
    try:
        thresholds = [float(t) for t in table["thresholds"]]
        levels = [float(v) for v in table["levels"]]
    except (KeyError, TypeError, ValueError):
        raise error(f"quantizer table needs numeric 'thresholds' and 'levels', got {table!r}") from None
    if not 1 <= len(levels) <= MAX_LEVELS or len(thresholds) != len(levels) - 1:
        raise error(f"quantizer table has {len(levels)} levels and {len(thresholds)} thresholds")
    if not all(np.isfinite(thresholds + levels)) or any(np.diff(thresholds) < 0):
        raise error("quantizer table must be finite with increasing thresholds")
    checked = {"thresholds": thresholds, "levels": levels}
    if "order" in table:
        if table["order"] != "zigzag":
            raise error(f"quantizer table order must be 'zigzag' when given, got {table['order']!r}")
        checked["order"] = "zigzag"
    version = _coder_version(table)
    if isinstance(version, bool) or version not in (1, 2, 3, *CODER_VERSIONS):
        versions = ", ".join(map(str, CODER_VERSIONS[:-1])) + f" or {CODER_VERSIONS[-1]}"
        raise error(f"quantizer table coder must be {versions}, got {table['coder']!r}")
    if version not in CODER_VERSIONS:
        # Versions 1-3 were the numpy wavefront coder (featcodec 0.1); the kernel codes versions 4-6.
        raise (UnsupportedFormatError if error is CorruptStreamError else error)(
            f"lightweight data for entropy coder version {version}, which this featcodec no longer decodes "
            f"(it codes version {CODER_VERSION}): decode it with featcodec 0.1, or recalibrate")
    checked["coder"] = version
    if "parents" in table:
        parents = table["parents"]
        if not isinstance(parents, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in parents):
            raise error("quantizer table parents must be a list of channel indices")
        try:
            partner_depths(np.asarray(parents, np.int64), len(parents))
        except ValueError as err:
            raise error(f"quantizer table parents: {err}") from None
        checked["parents"] = list(parents)
    return checked


def _check_partners(table: dict, shape, error) -> None:
    """A table with partner channels fits only maps with that many channels."""
    if "parents" in table and (len(shape) != 3 or shape[0] != len(table["parents"])):
        raise error(f"the quantizer was calibrated for {len(table['parents'])} channels, "
                    f"not for samples of shape {tuple(shape)}")


def _with_partners(table: dict, samples: np.ndarray) -> dict:
    """`table` with partner channels for the entropy coder when they cut the coded size of
    held-out calibration samples by MIN_PARTNER_GAIN (`featcodec.entropy.design_partners`
    chooses them on the even samples and checks each link on the odd ones)."""
    n_levels = len(table["levels"])
    if samples.shape[1] < 2:
        return table
    stride = _calibration_stride(samples)
    symbols = np.stack([_symbols(s, table) for s in samples[::stride]])
    version = _coder_version(table)
    parents = design_partners(symbols, n_levels, version)
    if max(parents) < 0:
        return table
    check = symbols[1::2] if len(symbols) > 1 else symbols
    alone = sum(map(len, encode_symbol_maps(check, n_levels, None, version)))
    partnered = sum(map(len, encode_symbol_maps(check, n_levels, parents, version)))
    if partnered > (1 - MIN_PARTNER_GAIN) * alone:
        return table
    return {**table, "parents": parents}


def _calibration_stride(samples: np.ndarray) -> int:
    """The stride that takes at most PARTNER_SAMPLES of `samples`, spread over them."""
    return max(1, -(-len(samples) // PARTNER_SAMPLES))


def _calibrated_bpe(table: dict, samples: np.ndarray) -> float:
    """Bits per element of up to PARTNER_SAMPLES of `samples` coded with `table` as calibrated."""
    return _coded_bpe(samples[:: _calibration_stride(samples)], table, _coder_version(table), table.get("parents"))


def design_values(data: np.ndarray) -> ValueDistribution:
    """The values a quantizer for `data` is designed on, sorted: a strided subsample of one sample
    (DESIGN_SAMPLE) or of a calibration stack (N, C, H, W) (CALIBRATION_SAMPLE)."""
    data = np.asarray(data, np.float32)
    return ValueDistribution(_subsample(data, CALIBRATION_SAMPLE if data.ndim == 4 else DESIGN_SAMPLE))


def _subsample(data: np.ndarray, size: int) -> np.ndarray:
    """About `size` values of `data`, evenly strided (all of them when it holds fewer)."""
    flat = data.ravel()
    stride = max(1, flat.size // size)
    return flat[::stride]


def _prefix_sums(values: np.ndarray) -> np.ndarray:
    """0 and the running sums of `values`, written into one new array (each large temporary costs
    its page faults again)."""
    sums = np.empty(values.size + 1)
    sums[0] = 0.0
    np.cumsum(values, out=sums[1:])
    return sums


class ValueDistribution:
    """Sorted values with prefix sums: the exact MSE of any scalar quantizer in O(L log n).

    The prefix sums are made when first read (the searches level count by level count read them);
    the default path's search reads sums below a few thousand points only (`sums_below`).
    """

    def __init__(self, values: np.ndarray):
        values = np.asarray(values)
        # float32 sorts faster, and widening after sorting gives the same sorted float64 values
        self.sorted = np.sort(values.ravel()).astype(np.float64) if values.dtype == np.float32 else \
            np.sort(np.asarray(values, np.float64).ravel())
        self.total = float(np.sum(self.sorted))
        self.square_sum = float(np.dot(self.sorted, self.sorted))
        self.clips: dict[tuple[int, bool], tuple[float, float]] = {}  # empirical_clip's, by (levels, relu)

    @functools.cached_property
    def sum1(self) -> np.ndarray:
        return _prefix_sums(self.sorted)

    @functools.cached_property
    def sum2(self) -> np.ndarray:
        return _prefix_sums(self.sorted ** 2)

    @property
    def variance(self) -> float:
        mean = self.total / self.sorted.size
        return max(self.square_sum / self.sorted.size - mean * mean, 0.0)

    def sums_below(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(count, sum) of the values below each of the increasing `points`: one pass summing the
        segments between them, where a prefix sum over every value costs several times more."""
        cuts = np.searchsorted(self.sorted, points, side="left")
        if "sum1" in self.__dict__:
            return cuts, self.sum1[cuts]
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [self.sorted.size]])
        inside = starts < self.sorted.size
        segments = np.zeros(starts.size)
        segments[inside] = np.add.reduceat(self.sorted, starts[inside])  # each up to the next start
        segments[starts == ends] = 0.0  # reduceat gives an empty segment's first value instead
        return cuts, np.cumsum(segments)[:-1]

    def quantizer_mse(self, thresholds, levels) -> float:
        """`mse`, from the counts and sums below the thresholds alone (no prefix sums):
        Σ x² - 2 Σ_j level_j · Σ_{x in cell j} x + Σ_j level_j² · (values in cell j)."""
        thresholds, levels = np.asarray(thresholds, np.float64), np.asarray(levels, np.float64)
        count, below = self.sums_below(thresholds)
        count = np.diff(np.concatenate([[0], count, [self.sorted.size]]))
        first = np.diff(np.concatenate([[0.0], below, [self.total]]))
        error = self.square_sum - 2 * float(np.dot(levels, first)) + float(np.dot(levels * levels, count))
        return max(error, 0.0) / self.sorted.size

    def uniform_mse(self, lo: float, hi: float, n_levels: int) -> float:
        """`mse` of the uniform quantizer on [lo, hi] of `n_levels` levels (`quantizer_mse`)."""
        return self.quantizer_mse(*uniform_quantizer(lo, hi, n_levels))

    def mse(self, thresholds, levels) -> float:
        """Mean of (Q(x) - x)² with cells split at `thresholds` (x ≥ t goes up, as `quantize`)."""
        cuts = np.concatenate([[0], np.searchsorted(self.sorted, thresholds, side="left"), [self.sorted.size]])
        count = np.diff(cuts)
        first, second = np.diff(self.sum1[cuts]), np.diff(self.sum2[cuts])
        levels = np.asarray(levels, np.float64)
        return float(np.sum(second - 2 * levels * first + levels ** 2 * count) / self.sorted.size)

    def _cuts(self, thresholds: np.ndarray) -> np.ndarray:
        """Where K quantizers' cells start and end in the sorted values: (K, L-1) -> (K, L+1)."""
        thresholds = np.asarray(thresholds, np.float64)
        inner = np.searchsorted(self.sorted, thresholds.ravel(), side="left").reshape(thresholds.shape)
        edges = np.zeros((len(inner), 1), inner.dtype)
        return np.concatenate([edges, inner, edges + self.sorted.size], axis=1)

    def mse_batch(self, thresholds: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """`mse` of K quantizers at once: (K, L-1) thresholds and (K, L) levels -> (K,)."""
        cuts = self._cuts(thresholds)
        count = np.diff(cuts, axis=1)
        first, second = np.diff(self.sum1[cuts], axis=1), np.diff(self.sum2[cuts], axis=1)
        return np.sum(second - 2 * levels * first + levels ** 2 * count, axis=1) / self.sorted.size

    def entropy_batch(self, thresholds: np.ndarray) -> np.ndarray:
        """Order-0 entropy (bits per value) of the cells of K quantizers: (K, L-1) thresholds -> (K,)."""
        share = np.diff(self._cuts(thresholds), axis=1) / self.sorted.size
        return -np.sum(share * np.log2(np.where(share > 0, share, 1.0)), axis=1)


def empirical_clip(values: np.ndarray, n_levels: int, relu: bool) -> tuple[float, float]:
    """The clip range minimising the measured MSE (clipping + granular) of a uniform quantizer.

    The paper's criterion, evaluated exactly on the observed distribution instead of a Gaussian
    model. ReLU data keep lo = 0; signed data alternate between optimising hi and lo.
    """
    dist = values if isinstance(values, ValueDistribution) else ValueDistribution(values)
    if (n_levels, relu) not in dist.clips:  # a search weighs each level count several times
        dist.clips[n_levels, relu] = _empirical_clip(dist, n_levels, relu)
    return dist.clips[n_levels, relu]


def _empirical_clip(dist: ValueDistribution, n_levels: int, relu: bool) -> tuple[float, float]:
    vmin, vmax = float(dist.sorted[0]), float(dist.sorted[-1])
    if vmax <= vmin:
        return vmin, vmax
    lo, hi = (0.0 if relu else vmin), vmax

    def best(candidates, make):
        lo, hi = np.broadcast_arrays(*make(np.asarray(candidates, np.float64)))
        errors = dist.mse_batch(*uniform_quantizers(lo, hi, n_levels))
        return float(candidates[int(np.argmin(errors))])

    def refine(grid, make):
        value = best(grid, make)
        i = int(np.searchsorted(grid, value))
        low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        return best(np.linspace(low, high, 33), make)

    for _ in range(1 if relu else 3):
        top_grid = max(lo, 0.0) + (vmax - max(lo, 0.0)) * np.geomspace(1e-3, 1.0, 96)
        hi = refine(top_grid[top_grid > lo], lambda h, lo=lo: (lo, h))
        if not relu and vmin < 0:
            bottom_grid = min(hi, 0.0) + (vmin - min(hi, 0.0)) * np.geomspace(1.0, 1e-3, 96)
            lo = refine(bottom_grid[bottom_grid < hi], lambda low, hi=hi: (low, hi))
    return lo, hi


def rate_clip(values, n_levels: int, relu: bool) -> tuple[float, float]:
    """The clip range of an N-level uniform quantizer that is best for the bits it costs.

    `empirical_clip` minimises the error at a fixed number of levels, as if every cell cost the
    same bits. Entropy-coded, a rare outer cell costs almost nothing, so a wider clip, whose
    coarser step costs fewer bits, can give less error at the same rate. This one minimises
    D + λ·H: the measured MSE plus λ times the order-0 entropy of the cells, with λ the slope of an
    entropy-coded uniform quantizer's distortion-rate curve at the step of the fixed-N clip (at
    high rate -dD/dR = (ln 2 / 6)·Δ²). Given these clips too, the SNR search codes the reference
    detector's layers in 2-23 % fewer bits at equal SNR (`bench/results/lightweight_rate_clip.md`).
    """
    dist = values if isinstance(values, ValueDistribution) else ValueDistribution(values)
    lo, hi = empirical_clip(dist, n_levels, relu)
    vmin, vmax = float(dist.sorted[0]), float(dist.sorted[-1])
    if vmax <= vmin or hi <= lo:
        return lo, hi
    weight = math.log(2) / 6 * ((hi - lo) / (n_levels - 1)) ** 2

    def best(candidates, make):
        low, high = np.broadcast_arrays(*make(candidates))
        thresholds, levels = uniform_quantizers(low, high, n_levels)
        cost = dist.mse_batch(thresholds, levels) + weight * dist.entropy_batch(thresholds)
        return float(candidates[int(np.argmin(cost))])

    def widths(end, limit):  # from a little inside the fixed-N clip out to the data's extreme
        return end * np.geomspace(0.8, max(limit / end, 1.0), 65) if end else np.zeros(1)

    for _ in range(1 if relu else 3):
        hi = best(widths(hi, vmax), lambda h, lo=lo: (lo, h))
        if not relu and vmin < 0 < hi:
            lo = best(widths(lo, vmin), lambda low, hi=hi: (low, hi))
    return lo, hi


class BinnedDistribution:
    """A `ValueDistribution` in SEARCH_BINS equal bins over its range: the count of values below each
    bin edge t, C(t), and G(t) = Σ_{x < t} (t - x), read between edges by linear interpolation.

    A uniform quantizer on [lo, hi] with step Δ and thresholds t_j has squared error
    Σ (x - hi)² - 2Δ Σ_j G(t_j) (summing its cells' errors by parts), and cells of C(t_j) - C(t_{j-1})
    values: the MSE and order-0 entropy of many quantizers of every level count at once in a few
    array operations, where `ValueDistribution` runs a binary search over the values per threshold.
    This makes the default path's quantizer search cheap (`snr_search`); off by at most a share of
    a bin at each threshold, so the search checks what it chooses exactly.
    """

    def __init__(self, dist: ValueDistribution, bins: int):
        values = dist.sorted
        self.low, self.bins, self.size = float(values[0]), bins, values.size
        self.width = (float(values[-1]) - self.low) / bins
        edges = self.low + self.width * np.arange(bins + 1)
        cuts, below = dist.sums_below(edges[:-1])
        count = np.append(cuts, values.size).astype(np.float64)
        gap = np.maximum(edges * count - np.append(below, dist.total), 0.0)
        # each table with its slope per bin (0 past the last edge, where positions are clipped to)
        self.tables = {name: (table, np.append(np.diff(table), 0.0)) for name, table in
                       (("count", count), ("gap", gap))}
        self.total, self.square_sum = dist.total, dist.square_sum

    def _positions(self, lo, hi, n_levels):
        """Where the thresholds of uniform quantizers on [lo, hi] (R, K) of `n_levels` (R, 1) levels
        fall, in bins from the lowest value: (R, K, MAX_LEVELS - 1), a row's unused thresholds first
        (`_USED` weighs them 0). Also the steps (R, K)."""
        slot = _SLOTS - (MAX_LEVELS - n_levels) + 0.5  # (R, MAX_LEVELS - 1): < 0 unused
        step = (hi - lo) / (n_levels - 1)
        position = ((lo - self.low) / self.width)[..., None] + (step / self.width)[..., None] * slot[:, None, :]
        return np.clip(position, 0, self.bins, out=position), step

    def _at(self, name: str, position: np.ndarray) -> np.ndarray:
        table, slope = self.tables[name]
        index = position.astype(np.intp)
        return table[index] + (position - index) * slope[index]

    def cost(self, lo: np.ndarray, hi: np.ndarray, n_levels: np.ndarray, weight=None) -> np.ndarray:
        """MSE of the uniform quantizers on [lo, hi] (R, K) of `n_levels` (R, 1) levels, plus `weight`
        (R, 1) times the order-0 entropy of their cells in bits when given: (R, K)."""
        position, step = self._positions(lo, hi, n_levels)
        used = _USED[n_levels[:, 0]]  # (R, MAX_LEVELS - 1)
        outer = self.square_sum - 2 * hi * self.total + hi * hi * self.size  # Σ (x - hi)²
        error = outer - 2 * step * np.matmul(self._at("gap", position), used[..., None])[..., 0]
        mse = np.maximum(error, 0.0) / self.size
        return mse if weight is None else mse + weight * self._entropy(position, used)

    def mse(self, lo: np.ndarray, hi: np.ndarray, n_levels: np.ndarray) -> np.ndarray:
        """`cost` without the entropy: the MSE alone."""
        return self.cost(lo, hi, n_levels)

    def entropy(self, lo: np.ndarray, hi: np.ndarray, n_levels: np.ndarray) -> np.ndarray:
        """Order-0 entropy in bits of the cells of the same quantizers as `cost`: (R, K)."""
        return self._entropy(self._positions(lo, hi, n_levels)[0], _USED[n_levels[:, 0]])

    def _entropy(self, position: np.ndarray, used: np.ndarray) -> np.ndarray:
        below = self._at("count", position) * used[:, None, :]
        ends = np.zeros(below.shape[:-1] + (1,))
        share = np.maximum(np.diff(np.concatenate([ends, below, ends + self.size], axis=-1), axis=-1), 0) / self.size
        return -np.sum(share * np.log2(np.where(share > 0, share, 1.0)), axis=-1)


_SLOTS = np.arange(MAX_LEVELS - 1)
_USED = (_SLOTS >= MAX_LEVELS - np.arange(MAX_LEVELS + 1)[:, None]).astype(np.float64)  # [levels]: 1 where used


def _zoom(cost, grid: np.ndarray) -> np.ndarray:
    """Per row of `grid` (R, K) the candidate of least `cost(candidates)` (R, K), refined ZOOM_ROUNDS
    times on ZOOM_POINTS evenly spaced between the best one's neighbours. Returns (R, 1)."""
    rows, between = np.arange(len(grid)), np.linspace(0.0, 1.0, ZOOM_POINTS)
    for round_ in range(ZOOM_ROUNDS + 1):
        best = np.argmin(cost(grid), axis=1)
        if round_ == ZOOM_ROUNDS:
            break
        last = grid.shape[1] - 1
        low, high = grid[rows, np.maximum(best - 1, 0)], grid[rows, np.minimum(best + 1, last)]
        grid = low[:, None] + (high - low)[:, None] * between
    return grid[rows, best][:, None]


def snr_search(dist: ValueDistribution, allowed: float, relu: bool, rate_clips: bool = True) -> dict[str, list[float]]:
    """The default path's quantizer: the uniform quantizer of fewest bits (order-0 entropy) whose MSE
    is at most `allowed`, over 2-16 levels, at each the clip of least error (`empirical_clip`) and the
    one clipped for its bits (`rate_clip`); none that close: the 16-level one of least error.

    The choice `Lightweight._search_snr` makes level count by level count on the sorted values, made
    for all level counts at once on a `BinnedDistribution` (a geometric grid for each clip end, then
    zooming in; signed maps alternate between the ends), and the winner checked on the exact
    distribution. On the reference detector's signed S1 it is 6-7x faster for 0.5 % more bits
    (either search wins some near ties), which brings the default path within 0.7x of a calibrated
    codec's speed (`bench/results/lightweight_default_speed.md`).
    """
    binned = BinnedDistribution(dist, SEARCH_BINS)
    vmin, vmax = float(dist.sorted[0]), float(dist.sorted[-1])
    n_levels = np.arange(2, MAX_LEVELS + 1)[:, None]
    rows = len(n_levels)
    lo, hi = np.full((rows, 1), 0.0 if relu else vmin), np.full((rows, 1), vmax)
    fractions = np.geomspace(1e-3, 1.0, COARSE_POINTS)
    for _ in range(1 if relu else ALTERNATIONS):  # least error: alternate between the ends, as empirical_clip
        base = np.maximum(lo, 0.0)
        hi = _zoom(lambda h, lo=lo: binned.cost(lo, h, n_levels), base + (vmax - base) * fractions)
        if not relu and vmin < 0:
            top = np.minimum(hi, 0.0)
            lo = _zoom(lambda low, hi=hi: binned.cost(low, hi, n_levels), top + (vmin - top) * fractions[::-1])
    # Only level counts whose least error meets the target (binned, with a margin) can meet it at all.
    error = binned.mse(lo, hi, n_levels)[:, 0]
    meeting = np.flatnonzero(error <= allowed * (1 + BINNED_MARGIN))
    first = int(meeting[0]) if meeting.size else rows - 1
    candidates = [np.hstack([n_levels, lo, hi])[first:]]  # (level count, lo, hi) rows
    if rate_clips:
        # Clipped for bits (rate_clip): D + λ·H, λ the slope at the least-error clip's step, from a
        # little inside that clip out to the data's extreme.
        counts, wide_lo, wide_hi = n_levels[first:], lo[first:], hi[first:]
        weight = math.log(2) / 6 * ((wide_hi - wide_lo) / (counts - 1)) ** 2

        def widths(end, limit):  # end · 0.8 … end · max(limit / end, 1), geometric; a zero end stays
            ratio = np.maximum(limit / np.where(end != 0, end, np.inf), 1.0)
            return end * 0.8 * (ratio / 0.8) ** np.linspace(0.0, 1.0, COARSE_POINTS)

        for _ in range(1 if relu else RATE_ALTERNATIONS):
            wide_hi = _zoom(lambda h, low=wide_lo: binned.cost(low, h, counts, weight),
                            widths(wide_hi, vmax))
            if not relu and vmin < 0:
                wide_lo = _zoom(lambda low, h=wide_hi: binned.cost(low, h, counts, weight),
                                widths(wide_lo, vmin))
        candidates.append(np.hstack([counts, wide_lo, wide_hi]))
    candidates = np.concatenate(candidates)
    sizes, lows, highs = candidates[:, :1].astype(int), candidates[:, 1:2], candidates[:, 2:3]
    mse, bits = binned.mse(lows, highs, sizes)[:, 0], binned.entropy(lows, highs, sizes)[:, 0]
    chosen = rows - 1 - first  # none meets the target: the 16-level one of least error
    for i in np.argsort(bits, kind="stable"):
        if mse[i] > allowed * (1 + BINNED_MARGIN):
            continue
        if dist.uniform_mse(lows[i, 0], highs[i, 0], sizes[i, 0]) <= allowed:  # exact
            chosen = i
            break
    thresholds, levels = uniform_quantizer(float(lows[chosen, 0]), float(highs[chosen, 0]), int(sizes[chosen, 0]))
    return {"thresholds": [float(t) for t in thresholds], "levels": [float(v) for v in levels]}


def _rate_probe(data: np.ndarray) -> np.ndarray:
    """Whole channels of a few samples: the context coder needs real spatial neighbourhoods."""
    data = data if data.ndim == 4 else data[None]
    samples = data[:: max(1, len(data) // 2)][:2]
    channels = samples.shape[1]
    return np.ascontiguousarray(samples[:, :: max(1, channels // 16)])


def _coded_bpe(probe: np.ndarray, table: dict[str, list[float]], version: int, parents=None) -> float:
    symbols = np.stack([_symbols(s, _zero_first(table)) for s in probe])
    return sum(len(p) for p in encode_symbol_maps(symbols, len(table["levels"]), parents, version)) * 8 / probe.size
