"""HEVC rate control's model: the x265 CRF at which frames take a given number of bits.

Stream size against CRF is an S-shaped curve, and its shape differs from frame to frame: the
tiled S4 maps of the reference detector lose a steady 0.19 log2 of size per CRF unit, a tiled S1
map is flat to CRF 25, then drops 0.6 per unit around CRF 36, then flattens at the stream's floor.
One slope for all (what the search used before) misses by ±40 % on the second encode. The model
here is a table of measured curves (`rate_curves.json`: log2 bits per pixel over a CRF grid, with
the frames' activity and geometry, built by ``bench/rate_curves.py`` from tiling, FPC and
auto-tiler frames of training photos and of video clips) and predicts from the curves that
resemble the frames:

- the first encode is at the median CRF where the `NEIGHBOURS` curves of nearest activity and
  geometry take the target's bits per pixel;
- the second: the curves that took the first encode's bits per pixel at about the same CRF have
  the frames' complexity there, and their median distance (in CRF) from that rate to the target's
  is the step.

How often two encodes meet ±10 % on held-out photos and clips: bench/results/rate_control.md.

>>> tiled = (1, 1152, 1024)  # one frame, S2's 72 maps of 128 x 128 tiled
>>> crf = first_crf(goal_bpp=-5.0, frames_activity=8.0, geometry=tiled, inter=False)
>>> 20 < crf < 45
True
>>> next_crf(crf, seen_bpp=-4.0, goal_bpp=-5.0, frames_activity=8.0, geometry=tiled, inter=False) > crf
True
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

TABLE = Path(__file__).with_name("rate_curves.json")
NEIGHBOURS = 4  # curves a prediction takes the median of (4 to 8 did equally well, 16 worse)
# Frames of twice the contrast are, to x265, the same frames at a quantizer step twice as fine, 6
# QP lower; with CRF's own complexity correction a doubling of activity moves a curve by about
# ACTIVITY_SHIFT CRF units. Curves are compared at CRFs shifted so, which lets frames more active
# than any in the table borrow the shape of the most active ones.
ACTIVITY_SHIFT = 2.0
ACTIVITY_WEIGHT = 0.5
# Streams of another geometry (frames per stream, pixels per frame) spend their bits otherwise
# (FPC's 128 small frames carry 128 frame headers): a doubling of either weighs as a doubling of
# activity. Measured on the table, leaving each photo out: 99 % of targets within ±10 % in two
# encodes with it, 96 % without (FPC 99 % against 91 %).
GEOMETRY_WEIGHT = 1.0
# Beyond this (in doublings of activity, frames per stream or frame area) from every curve the
# table knows no frames like these, and the second encode takes a typical slope instead
# (`featcodec.video`): a group of 8 frames of 192 x 384 at activity 0.2, 2.8 doublings from every
# curve, took four encodes with the table's step and three with the slope.
SUPPORT = 2.0
CRF_RANGE = (0.0, 51.0)


class RateModel:
    """Curves of one kind (intra frames, or groups coded inter): `grid` the CRFs, `rows` the table's
    entries (``activity``; ``geometry``: frames per stream, height, width; ``log2_bpp`` at each
    CRF of the grid)."""

    def __init__(self, grid: list[float], rows: list[dict]):
        if not rows:
            raise ValueError("a rate model needs at least one curve")
        self.grid = np.asarray(grid, np.float64)
        # non-increasing: x265's size can rise by a hair from one CRF to the next
        self.curves = np.minimum.accumulate(np.asarray([row["log2_bpp"] for row in rows], np.float64), axis=1)
        self.activity = np.log2([row["activity"] + 1e-3 for row in rows])
        self.geometry = np.asarray([_geometry(row["geometry"]) for row in rows])

    def _crf_where(self, level: float) -> np.ndarray:
        """Per curve, the CRF at which it takes `level` log2 bpp (NaN where it never does)."""
        out = np.full(len(self.curves), np.nan)
        for i, curve in enumerate(self.curves):
            if curve[-1] <= level <= curve[0]:
                out[i] = np.interp(-level, -curve, self.grid)
        return out

    def _unlike(self, frames_activity: float, geometry) -> tuple[float, np.ndarray, np.ndarray]:
        """The frames' log2 activity, and per curve how far its activity and geometry are from theirs."""
        activity = math.log2(frames_activity + 1e-3)
        shape = GEOMETRY_WEIGHT * np.abs(self.geometry - _geometry(geometry)).sum(axis=1)
        return activity, np.abs(self.activity - activity), shape

    def first_crf(self, goal_bpp: float, frames_activity: float, geometry) -> float:
        """The CRF to try first for `goal_bpp` (log2 bits per pixel) on frames of this activity and
        `geometry` (frames per stream, height, width)."""
        crfs = self._crf_where(goal_bpp)
        reach = ~np.isnan(crfs)
        if not reach.any():  # beyond every curve: the end of the range the target lies towards
            return CRF_RANGE[0] if goal_bpp > self.curves[:, 0].max() else CRF_RANGE[1]
        activity, activity_gap, shape_gap = self._unlike(frames_activity, geometry)
        shifted = (crfs - ACTIVITY_SHIFT * self.activity)[reach]
        nearest = np.argsort((activity_gap + shape_gap)[reach], kind="stable")[:NEIGHBOURS]
        return float(np.median(shifted[nearest])) + ACTIVITY_SHIFT * activity

    def next_crf(self, crf: float, seen_bpp: float, goal_bpp: float, frames_activity: float,
                 geometry) -> float | None:
        """The CRF to try after an encode at `crf` took `seen_bpp`; None where no curve spans both
        rates, or none is within `SUPPORT` of the frames."""
        seen_at, goal_at = self._crf_where(seen_bpp), self._crf_where(goal_bpp)
        both = ~np.isnan(seen_at) & ~np.isnan(goal_at)
        if not both.any():
            return None
        # A curve resembles the frames if it took the same rate at a similar shifted CRF (3 CRF units
        # weigh as much as two doublings of activity) and has their geometry.
        activity, activity_gap, shape_gap = self._unlike(frames_activity, geometry)
        if (ACTIVITY_WEIGHT * activity_gap + shape_gap).min() > SUPPORT:
            return None
        shifted_gap = (seen_at - ACTIVITY_SHIFT * self.activity) - (crf - ACTIVITY_SHIFT * activity)
        distance = np.abs(shifted_gap) / 3 + ACTIVITY_WEIGHT * activity_gap + shape_gap
        nearest = np.argsort(distance[both], kind="stable")[:NEIGHBOURS]
        return crf + float(np.median((goal_at - seen_at)[both][nearest]))


def _geometry(geometry) -> np.ndarray:
    """log2 frames per stream and log2 pixels per frame."""
    count, height, width = geometry
    return np.log2([count, height * width])


@functools.cache
def model(inter: bool) -> RateModel:
    """The shipped table's model for intra frames or for groups coded inter."""
    table = json.loads(TABLE.read_text())
    return RateModel(table["grid"], [row for row in table["curves"] if row["inter"] == inter])


def first_crf(goal_bpp: float, frames_activity: float, geometry, inter: bool) -> float:
    return model(inter).first_crf(goal_bpp, frames_activity, geometry)


def next_crf(crf: float, seen_bpp: float, goal_bpp: float, frames_activity: float, geometry,
             inter: bool) -> float | None:
    return model(inter).next_crf(crf, seen_bpp, goal_bpp, frames_activity, geometry)
