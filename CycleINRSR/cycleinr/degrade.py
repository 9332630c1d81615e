"""Simulating thick-slice acquisitions from thin-slice volumes (training pairs and evaluation inputs).

Two models of a thick slice at HR slice-index position ``p`` for scale ``r``:

* ``interval`` (the paper's protocol): the HR slice at ``p``. For a decimal ``r`` positions fall between HR
  slices and are linearly interpolated from the two neighbours.
* ``slab``: the mean of the HR signal over the slab ``[p - r/2, p + r/2]``, each HR slice covering
  ``[i - 1/2, i + 1/2]`` and weighted by its overlap; a closer model of thick-slice reconstruction.

LR slice ``j`` sits at ``offset + j * r``, so LR slice 0 is on HR slice ``offset`` and the LR spacing is
``r`` times the HR spacing.
"""

from __future__ import annotations

import numpy as np

MODES = ("interval", "slab")


def lr_positions(n_hr: int, scale: float, offset: float = 0.0) -> np.ndarray:
    """HR slice-index positions of the LR slices that fit inside ``[offset, n_hr - 1]``."""
    if scale <= 1:
        raise ValueError(f"scale must be > 1, got {scale}")
    count = int(np.floor((n_hr - 1 - offset) / scale + 1e-6)) + 1
    if count < 2:
        raise ValueError(f"{n_hr} slices are too few to simulate 2 thick slices at scale {scale:g}")
    return offset + scale * np.arange(count, dtype=np.float64)


def degradation_matrix(n_hr: int, positions: np.ndarray, scale: float, mode: str = "interval") -> np.ndarray:
    """(n_lr, n_hr) weights whose rows average HR slices into LR slices (rows sum to 1)."""
    if mode not in MODES:
        raise ValueError(f"degradation mode must be one of {MODES}, got {mode!r}")
    w = np.zeros((len(positions), n_hr), dtype=np.float64)
    for row, p in enumerate(positions):
        if mode == "interval":
            lo = int(np.floor(p + 1e-9))
            t = p - lo
            if t < 1e-9 or lo + 1 >= n_hr:
                w[row, min(lo, n_hr - 1)] = 1.0
            else:
                w[row, lo], w[row, lo + 1] = 1.0 - t, t
        else:
            a, b = p - scale / 2, p + scale / 2
            i = np.arange(n_hr)
            w[row] = np.clip(np.minimum(b, i + 0.5) - np.maximum(a, i - 0.5), 0, None)
        w[row] /= w[row].sum()
    return w


def simulate_thick(hr: np.ndarray, scale: float, mode: str = "interval",
                   offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Thick-slice (LR) version of a (z, y, x) HR volume and the HR positions of its slices."""
    positions = lr_positions(hr.shape[0], scale, offset)
    w = degradation_matrix(hr.shape[0], positions, scale, mode)
    lr = np.tensordot(w, hr.astype(np.float64, copy=False), axes=(1, 0))
    if mode == "interval" and np.allclose(positions, np.round(positions)):
        lr = hr[np.round(positions).astype(int)].astype(np.float64)  # exact copies, no float round-off
    return lr.astype(np.float32), positions
