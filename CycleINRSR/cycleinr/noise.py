"""Generated slices with the noise of acquired ones (``upsample(..., noise="match")``, the default).

A generated slice is close to the conditional mean of its neighbours, so it is smoother than an acquired
slice: scrolling shows a noise dip at every generated slice (what SNLI and the dip ratio measure). No
training recipe tried removed it: the fine-tuned fast model's generated slices keep 0.82 / 0.86 / 0.91 of
the acquired noise at x2 / x3 / x5 on held-out head CT, 0.74 on the thick chest CT. ``match_noise`` adds to each generated slice zero-mean Gaussian noise with the
variance it lacks: the target sigma is the acquired slices' own sigma, interpolated along z, and the
missing part is ``sqrt(target^2 - sigma^2)``, both measured with the Donoho-Johnstone estimator that SNLI
uses. The added noise is white, so it restores the noise *level* (finest-scale wavelet band), not the
in-plane texture of the scanner's correlated noise. Acquired positions are left as they are. Seeded, so
a run is reproducible.

Why it is the default: slices that look acquired when scrolling are the point of the method. It costs
PSNR only where the noise is strong (added noise is independent of the truth): -0.36 dB on the chest
CT's in-plane check at x3, under 0.01 dB on head CT (``Testing/benchmarks/noise_match.py``). ``"none"``
gives the network's own output, for PSNR-optimal results.
"""

from __future__ import annotations

import numpy as np

from .metrics import noise_sigma_per_slice

NOISE_MODES = ("none", "match")        # upsample's noise option: the network's output, or matched noise


def generated_mask(positions: np.ndarray) -> np.ndarray:
    """True for output slices that do not lie on an input slice (positions in input slice-index units)."""
    return np.abs(positions - np.round(positions)) > 1e-6


def match_noise(output: np.ndarray, positions: np.ndarray, input_sigmas: np.ndarray,
                seed: int = 0) -> np.ndarray:
    """``output`` (z, y, x) with noise added to its generated slices so that each one's noise sigma
    matches the input's at its position. Returns a new float32 array."""
    out = np.array(output, dtype=np.float32, copy=True)
    generated = generated_mask(positions)
    if not generated.any():
        return out
    target = np.interp(positions, np.arange(len(input_sigmas)), input_sigmas)
    rng = np.random.default_rng(seed)
    for k in np.nonzero(generated)[0]:
        out[k] = _add_missing_noise(out[k], target[k], rng.standard_normal(out.shape[1:]).astype(np.float32))
    return out


def _add_missing_noise(image: np.ndarray, target: float, unit: np.ndarray, steps: int = 4) -> np.ndarray:
    """``image + a * unit`` whose estimated sigma is ``target``. The robust estimator is not additive on
    real anatomy (edges fill the detail band), so ``a`` starts at the Gaussian guess and is corrected a
    few times by the ratio of the variance still missing to the variance the noise added."""
    have = float(noise_sigma_per_slice(image[None])[0])
    if target <= have:
        return image
    amount = np.sqrt(target ** 2 - have ** 2)
    for _ in range(steps):
        got = float(noise_sigma_per_slice((image + amount * unit)[None])[0])
        if abs(got - target) < 0.01 * target:
            break
        amount *= np.sqrt(max(target ** 2 - have ** 2, 0.0) / max(got ** 2 - have ** 2, 1e-12))
    return image + amount * unit
