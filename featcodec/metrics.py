"""Distortion metrics on activation tensors: MSE, PSNR, SNR, SSIM, and rate summaries."""

from __future__ import annotations

import numpy as np


def mse(original: np.ndarray, decoded: np.ndarray) -> float:
    diff = np.asarray(decoded, np.float64) - np.asarray(original, np.float64)
    return float(np.mean(diff * diff))


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB with the original's value range (max - min) as the peak."""
    error = mse(original, decoded)
    peak = float(np.max(original) - np.min(original))
    if error == 0:
        return float("inf")
    return 10 * np.log10(max(peak, 1e-30) ** 2 / error)


def snr(original: np.ndarray, decoded: np.ndarray) -> float:
    """Signal (variance) to quantization-noise ratio in dB."""
    error = mse(original, decoded)
    return float("inf") if error == 0 else 10 * np.log10(max(float(np.var(original)), 1e-30) / error)


def _box(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over every size×size window of the last two axes ('valid' positions), via summed areas."""
    c = np.cumsum(np.cumsum(x, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., size:, size:] - c[..., :-size, size:] - c[..., size:, :-size] + c[..., :-size, :-size]
    return s / (size * size)


def ssim(original: np.ndarray, decoded: np.ndarray, window: int = 7) -> float:
    """Mean SSIM over every channel map (..., H, W), 7×7 uniform window (as scikit-image's default).

    The data range is the original tensor's max - min, so SSIM is comparable across codecs.
    Maps smaller than the window are compared with a window of their own size.
    """
    x = np.asarray(original, np.float64)
    y = np.asarray(decoded, np.float64)
    window = max(1, min(window, x.shape[-1], x.shape[-2]))
    data_range = float(x.max() - x.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _box(x, window), _box(y, window)
    n = window * window
    correction = n / (n - 1) if n > 1 else 1.0  # sample covariance, as scikit-image
    vx = (_box(x * x, window) - mx * mx) * correction
    vy = (_box(y * y, window) - my * my) * correction
    cxy = (_box(x * y, window) - mx * my) * correction
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def pareto(rates, quality) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats (less or equal rate and higher quality), by rising rate."""
    points = sorted((r, q) for r, q in zip(rates, quality) if r > 0 and q is not None and np.isfinite(q))
    front: list[tuple[float, float]] = []
    for r, q in points:
        if not front or q > front[-1][1]:
            front.append((r, q))
    return np.array([p[0] for p in front]), np.array([p[1] for p in front])


def bd_rate(rates_a, quality_a, rates_b, quality_b) -> float | None:
    """Bjøntegaard delta rate (%) of curve b against curve a: negative means b needs fewer bits.

    Each curve is reduced to its Pareto front; log-rate is interpolated piecewise-linearly in the
    quality and averaged over the quality interval both cover (no polynomial extrapolation, which
    goes wild on the step-like curves of coarse quantizers). None when they do not overlap.
    """
    ra, qa = pareto(rates_a, quality_a)
    rb, qb = pareto(rates_b, quality_b)
    overlap = _overlap(qa, qb)
    if overlap is None:
        return None
    grid = np.linspace(*overlap, 201)
    mean_a = np.mean(np.interp(grid, qa, np.log(ra)))
    mean_b = np.mean(np.interp(grid, qb, np.log(rb)))
    return float((np.exp(mean_b - mean_a) - 1) * 100)


def bd_range(rates_a, quality_a, rates_b, quality_b) -> tuple[float, float] | None:
    """The quality interval `bd_rate` averages over: what both Pareto fronts cover (None: no overlap)."""
    return _overlap(pareto(rates_a, quality_a)[1], pareto(rates_b, quality_b)[1])


def _overlap(qa: np.ndarray, qb: np.ndarray) -> tuple[float, float] | None:
    if len(qa) < 2 or len(qb) < 2:
        return None
    low, high = max(qa.min(), qb.min()), min(qa.max(), qb.max())
    return (float(low), float(high)) if high > low else None


def rate_at(rates, quality, level: float) -> float | None:
    """Smallest rate at which a (rate, quality) curve reaches `level`, interpolated linearly."""
    points = sorted(zip(rates, quality))
    for (r0, q0), (r1, q1) in zip([(0.0, -np.inf)] + points, points):
        if q1 >= level:
            if not np.isfinite(q0) or q1 == q0:
                return float(r1)
            return float(r0 + (level - q0) * (r1 - r0) / (q1 - q0))
    return None


def effective_cr_range(crs, quality, fraction: float = 0.85, maximum: float = 1.0):
    """(min, max) compression ratio among points whose quality is ≥ fraction × maximum (the paper's
    'effective CR range'; for agreement metrics the network's maximum is 1.0). None if no point qualifies."""
    good = [c for c, q in zip(crs, quality) if q is not None and q >= fraction * maximum]
    return (float(min(good)), float(max(good))) if good else None
