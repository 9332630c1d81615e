"""Output grids and physical geometry of slice-axis upsampling.

Conventions (used everywhere in the package):

* Arrays are (z, y, x) = (k, j, i) in ITK/Slicer terms: axis 0 is the slice axis K.
* ``Geometry`` stores spacing and origin in ITK (x, y, z) order and the 3x3 direction row-major, exactly as
  SimpleITK's ``GetSpacing/GetOrigin/GetDirection`` return them, so a Geometry round-trips through any reader.
* Slice positions are measured in *input slice-index units*: 0 is the centre of the first input slice,
  ``n - 1`` the centre of the last. Upsampling never moves the first slice: output slice ``k`` sits at
  index ``k * target / spacing``, and the last output slice never lies past the last input slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

# Positions closer than this (in slice-index units) to the last input slice count as on it, so that
# 5.0 mm -> 1.0 mm on 10 slices gives exactly 46 slices despite floating-point rounding.
_EPS = 1e-6


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (z, y, x) array: ITK (x, y, z) spacing and origin, row-major direction."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def slice_spacing(self) -> float:
        return float(self.spacing[2])

    def with_slice_spacing(self, slice_spacing: float) -> Geometry:
        """Same origin and direction, new spacing along K: the geometry of an upsampled output."""
        sx, sy, _ = self.spacing
        return replace(self, spacing=(float(sx), float(sy), float(slice_spacing)))

    def index_to_physical(self, ijk) -> np.ndarray:
        """Physical (LPS, as ITK) position of continuous index (i, j, k)."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin, dtype=float) + d @ (np.asarray(self.spacing, dtype=float) * np.asarray(ijk, dtype=float))


def resolve_target_spacing(slice_spacing: float, target_spacing: float | None = None,
                           factor: float | None = None) -> float:
    """Turn either a target slice spacing (mm) or an upsampling factor into a validated target spacing."""
    if (target_spacing is None) == (factor is None):
        raise ValueError("give exactly one of target slice spacing (thickness, mm) or factor")
    if not (math.isfinite(slice_spacing) and slice_spacing > 0):
        raise ValueError(f"input slice spacing must be a positive number of mm, got {slice_spacing}")
    if factor is not None:
        if not (math.isfinite(factor) and factor > 1):
            raise ValueError(f"upsampling factor must be > 1, got {factor}; a factor <= 1 would not add slices")
        return slice_spacing / float(factor)
    if not (math.isfinite(target_spacing) and target_spacing > 0):
        raise ValueError(f"target slice spacing must be a positive number of mm, got {target_spacing}")
    if target_spacing >= slice_spacing - 1e-9:
        raise ValueError(
            f"target slice spacing {target_spacing:g} mm is not smaller than the input's {slice_spacing:g} mm; "
            "choose a thinner target (upsampling only adds slices)")
    return float(target_spacing)


def output_slice_count(n_slices: int, slice_spacing: float, target_spacing: float) -> int:
    """Number of output slices: from the first input slice up to, never past, the last one."""
    if n_slices < 1:
        raise ValueError("the volume has no slices")
    return int(math.floor((n_slices - 1) * slice_spacing / target_spacing + _EPS)) + 1


def slices_at_scale(n_slices: int, scale: float) -> int:
    """Thin slices from the first to the last of ``n_slices`` thick ones, ``scale`` thin per thick slice
    (the count ``output_slice_count`` gives when the target spacing is the thick one over ``scale``)."""
    return int(math.floor((n_slices - 1) * scale + _EPS)) + 1


def thin_slices_touched(n_slices: int, scale: float) -> int:
    """Thin slices that ``n_slices`` simulated thick ones at ``scale`` are made from: at a decimal scale
    the last thick slice is interpolated from the thin slice after its position too."""
    return int(math.ceil((n_slices - 1) * scale - _EPS)) + 1


def output_slice_positions(n_slices: int, slice_spacing: float, target_spacing: float) -> np.ndarray:
    """Positions of the output slices in input slice-index units (float64, first = 0, last <= n - 1)."""
    m = output_slice_count(n_slices, slice_spacing, target_spacing)
    pos = np.arange(m, dtype=np.float64) * (target_spacing / slice_spacing)
    return np.minimum(pos, n_slices - 1)


@dataclass
class UpsampleResult:
    """An upsampled (z, y, x) float32 array and where its slices are.

    ``spacing`` is the output's ITK (x, y, z) spacing; ``positions`` are the output slices' positions in
    input slice-index units (``positions[0] == 0``). Origin and direction are the input's. With
    ``upsample(adapt=...)``: ``adaptation`` is what per-scan adaptation did (iterations, seconds, loss
    before/after, ``kept``: which weights were used) and ``adapted_model`` the network that upsampled.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    adaptation: dict | None = None
    adapted_model: object | None = None       # a CycleINR (not imported here: this module needs no torch)

    def geometry(self, input_geometry: Geometry) -> Geometry:
        return input_geometry.with_slice_spacing(self.spacing[2])
