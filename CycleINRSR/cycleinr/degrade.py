"""Simulating thick-slice acquisitions from thin-slice volumes (training pairs and evaluation inputs).

Two models of a thick slice at HR slice-index position ``p`` for scale ``r``:

* ``interval`` (the paper's protocol): the HR slice at ``p``. For a decimal ``r`` positions fall between HR
  slices and are linearly interpolated from the two neighbours.
* ``slab``: the mean of the HR signal over the slab ``[p - r/2, p + r/2]``, each HR slice covering
  ``[i - 1/2, i + 1/2]`` and weighted by its overlap; a closer model of thick-slice reconstruction.

**Noise-matched variants** (``interval_matched``, ``slab_matched``; ``interval_matched`` is the training
default). A weighted mean of independent slices has noise variance ``sum_i w_i^2 sigma_i^2``: a linear
blend at ``t = 1/2`` keeps only 0.71 of a slice's noise sigma, so at decimal scales the simulated slices
alternate between real-slice and smoothed noise, slice to slice, which real thick slices never do (and
which teaches the network smooth inputs). The matched variants keep the same weights, so the signal,
the positions and integer-scale interval pairs are unchanged, and add zero-mean Gaussian noise of variance
``target - sum_i w_i^2 sigma_i^2`` per LR slice, with ``target = c * sum_i w_i sigma_i^2`` (the local noise
variance) and ``c`` the largest ``sum w^2`` any slice of that mode and scale can have: 1 for interval (a
single HR slice), so every LR slice carries real-slice noise; for slab, every slice gets the noise of the
least-averaging slab alignment. ``sigma_i`` is the noise of HR slice ``i`` as SNLI measures it
(``metrics.noise_sigma_per_slice``, a high-pass wavelet estimate). Compensating the blend was chosen over
sampling the nearest thin slice because nearest sampling moves content by up to half a thin slice, a
position error the network would learn as blur; compensation keeps positions exact and restores exactly
the high-frequency noise energy that the noise estimate (and so SNLI) sees. The added noise is white, so
the in-plane texture of the top-up is not the scanner's (its low-frequency part stays slightly smoothed
for strongly correlated noise).

LR slice ``j`` sits at ``offset + j * r``, so LR slice 0 is on HR slice ``offset`` and the LR spacing is
``r`` times the HR spacing.
"""

from __future__ import annotations

import numpy as np

MODES = ("interval", "slab", "interval_matched", "slab_matched")
MATCHED = "_matched"


def base_mode(mode: str) -> str:
    """The weighting of ``mode`` ('interval' or 'slab'), without the noise matching."""
    if mode not in MODES:
        raise ValueError(f"degradation mode must be one of {MODES}, got {mode!r}")
    return mode.removesuffix(MATCHED)


def lr_positions(n_hr: int, scale: float, offset: float = 0.0) -> np.ndarray:
    """HR slice-index positions of the LR slices that fit inside ``[offset, n_hr - 1]``."""
    if scale <= 1:
        raise ValueError(f"scale must be > 1, got {scale}")
    count = int(np.floor((n_hr - 1 - offset) / scale + 1e-6)) + 1
    if count < 2:
        raise ValueError(f"{n_hr} slices are too few to simulate 2 thick slices at scale {scale:g}")
    return offset + scale * np.arange(count, dtype=np.float64)


def degradation_matrix(n_hr: int, positions: np.ndarray, scale: float, mode: str = "interval") -> np.ndarray:
    """(n_lr, n_hr) weights whose rows average HR slices into LR slices (rows sum to 1); matched modes
    use their base mode's weights."""
    mode = base_mode(mode)
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


def noise_target(scale: float, mode: str) -> float:
    """``c`` of the module docstring: the largest ``sum w^2`` of one LR slice over all alignments of the
    slice grid to the HR grid (1 for interval; for slab, the least-averaging slab of width ``scale``)."""
    if base_mode(mode) == "interval":
        return 1.0
    n = int(np.ceil(scale)) + 4
    centre = n // 2 + np.linspace(0.0, 1.0, 101)          # every sub-slice alignment, in 1/100 steps
    w = degradation_matrix(n, centre, scale, "slab")
    return float((w ** 2).sum(1).max())


def matched_noise_std(hr_sigmas: np.ndarray, weights: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """Per LR slice, the std of the noise to add so that it carries ``target`` noise (module docstring),
    given the noise sigma of every HR slice; zero where the weights already do (e.g. integer positions)."""
    var = np.asarray(hr_sigmas, dtype=np.float64) ** 2
    missing = noise_target(scale, mode) * (weights @ var) - (weights ** 2) @ var
    return np.sqrt(np.clip(missing, 0.0, None))


def degrade_block(hr: np.ndarray, positions: np.ndarray, scale: float, mode: str,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """LR slices (float64) of a (z, y, x) HR block at HR positions ``positions``. Matched modes draw the
    compensating noise from ``rng`` (required for them)."""
    w = degradation_matrix(hr.shape[0], positions, scale, mode)
    lr = np.tensordot(w, hr.astype(np.float64, copy=False), axes=(1, 0))
    if mode.endswith(MATCHED):
        if rng is None:
            raise ValueError(f"degradation mode {mode!r} adds noise and needs a random generator")
        from .metrics import noise_sigma_per_slice  # skimage: imported only where noise is matched

        used = np.nonzero(w.any(0))[0]
        sigmas = np.zeros(hr.shape[0])
        sigmas[used] = noise_sigma_per_slice(hr[used])
        std = matched_noise_std(sigmas, w, scale, mode)
        if std.any():
            lr += rng.standard_normal(lr.shape) * std[:, None, None]
    return lr


def simulate_thick(hr: np.ndarray, scale: float, mode: str = "interval", offset: float = 0.0,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Thick-slice (LR) version of a (z, y, x) HR volume and the HR positions of its slices. ``seed``
    fixes the noise of matched modes, so a simulation is reproducible."""
    positions = lr_positions(hr.shape[0], scale, offset)
    if base_mode(mode) == "interval" and np.allclose(positions, np.round(positions)):
        lr = hr[np.round(positions).astype(int)].astype(np.float64)  # exact copies, no float round-off
    else:
        lr = degrade_block(hr, positions, scale, mode, np.random.default_rng(seed))
    return lr.astype(np.float32), positions
