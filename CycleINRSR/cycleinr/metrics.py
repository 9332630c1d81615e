"""Image-quality and downstream-proxy metrics for upsampled volumes: numpy arrays in, numbers out.

All volumes are (z, y, x) arrays in HU; axis 0 is the slice axis, so "per slice" means per axial slice.

* ``noise_sigma_per_slice`` / ``snli``: the paper's slice-wise noise level inconsistency (section 3.3, Eq. 10).
* ``psnr`` / ``ssim``: both volumes are clipped to a HU window first, and the window width is the data
  range, so that scores do not depend on how much air or metal a scan holds (the paper's PSNR in dB).
* ``threshold_masks``, ``dice``, ``normalized_surface_dice``: a downstream-segmentation proxy without a
  trained segmenter: bone and soft tissue by HU threshold, compared with DSC and NSD (paper section 4.1).

LPIPS needs torch and network weights, so it lives in ``cycleinr.lpips``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.restoration import estimate_sigma

HU_WINDOW = (-1024.0, 2048.0)   # clip window of PSNR/SSIM/LPIPS; its width (3072 HU) is the data range
BONE_HU = 300.0                  # bone: HU > 300
SOFT_TISSUE_HU = (-100.0, 300.0)  # soft tissue: -100 <= HU <= 300 (fat, muscle, organs, blood)


# ----------------------------------------------------------------------------------------------- SNLI

@dataclass
class SNLIResult:
    """SNLI ``value`` (intensity units, e.g. HU) and the per-slice noise sigmas it summarises."""

    value: float
    sigmas: np.ndarray


def noise_sigma_per_slice(volume: np.ndarray) -> np.ndarray:
    """Per axial slice, the Donoho-Johnstone robust noise sigma, in the volume's intensity units (HU).

    Uses ``skimage.restoration.estimate_sigma`` (median |diagonal detail| / 0.6745 of a one-level
    Daubechies-2 wavelet transform; exactly-zero coefficients, e.g. zero padding, are ignored, but padding
    at another constant such as -1024 HU counts and lowers sigma by a near-constant factor: model card,
    Limitations), as the paper's reference [10]. A slice with no non-zero detail (constant) has sigma 0. Returns float64, (z,).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"noise_sigma_per_slice needs a (z, y, x) volume, got shape {volume.shape}")
    sigmas = np.zeros(volume.shape[0], dtype=np.float64)
    for k in range(volume.shape[0]):
        image = volume[k].astype(np.float64, copy=False)
        if image.min() == image.max():
            continue
        with np.errstate(invalid="ignore"):
            s = estimate_sigma(image, channel_axis=None)
        sigmas[k] = 0.0 if not np.isfinite(s) else float(s)
    return sigmas


def snli(volume: np.ndarray) -> SNLIResult:
    """Slice-wise noise level inconsistency (Eq. 10): population std over slices of the per-slice noise
    sigmas, in intensity units (HU). 0 means every slice has the same noise level; lower is better."""
    sigmas = noise_sigma_per_slice(volume)
    return SNLIResult(value=float(np.std(sigmas)), sigmas=sigmas)


# ----------------------------------------------------------------------------------------- PSNR, SSIM

def _select(ref: np.ndarray, test: np.ndarray, window, slices) -> tuple[np.ndarray, np.ndarray, float]:
    """Shape check, optional slice selection, then clip both to ``window``; returns the data range too."""
    ref, test = np.asarray(ref), np.asarray(test)
    if ref.shape != test.shape:
        raise ValueError(f"reference and test shapes differ: {ref.shape} vs {test.shape}")
    if ref.ndim != 3:
        raise ValueError(f"metrics need (z, y, x) volumes, got shape {ref.shape}")
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must be (low, high) with high > low, got {window}")
    if slices is not None:
        idx = np.asarray(slices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.size == 0:
            raise ValueError("no slices selected to score")
        ref, test = ref[idx], test[idx]
    ref = np.clip(ref.astype(np.float64), lo, hi)
    test = np.clip(test.astype(np.float64), lo, hi)
    return ref, test, hi - lo


def psnr(ref: np.ndarray, test: np.ndarray, window=HU_WINDOW, slices=None) -> float:
    """Peak signal-to-noise ratio in dB over the (selected) slices, after clipping both volumes to
    ``window`` (HU); peak = window width (3072 HU by default). Identical volumes give ``inf``.

    ``slices``: axial slice indices (or a boolean mask) to score, e.g. only the newly generated ones.
    """
    ref, test, data_range = _select(ref, test, window, slices)
    mse = float(np.mean((ref - test) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(ref: np.ndarray, test: np.ndarray, window=HU_WINDOW, slices=None) -> float:
    """Structural similarity (unitless, 1 = identical): the mean over the (selected) axial slices of 2D
    SSIM (skimage defaults: 7x7 uniform window, K1 0.01, K2 0.03), after clipping to ``window`` (HU) with
    data range = window width.

    2D per axial slice rather than 3D because the paper scores axial images and because a 3D window would
    mix scored and unscored slices when only newly generated slices are selected.
    """
    ref, test, data_range = _select(ref, test, window, slices)
    values = [structural_similarity(r, t, data_range=data_range) for r, t in zip(ref, test, strict=True)]
    return float(np.mean(values))


# ------------------------------------------------------------------------------- downstream proxy

def threshold_masks(volume: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks ``bone`` (HU > 300) and ``soft`` (-100 <= HU <= 300): a segmentation stand-in whose
    agreement with the HR masks measures whether upsampling keeps anatomy where it belongs."""
    volume = np.asarray(volume)
    lo, hi = SOFT_TISSUE_HU
    return {"bone": volume > BONE_HU, "soft": (volume >= lo) & (volume <= hi)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient 2|A and B| / (|A| + |B|) of two boolean masks (unitless, 0..1);
    two empty masks agree perfectly (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-neighbour outside the mask (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CONNECTIVITY, border_value=0)


def normalized_surface_dice(a: np.ndarray, b: np.ndarray, spacing_zyx, tolerance_mm: float = 1.0) -> float:
    """Normalized surface Dice (Nikolov et al. 2021; unitless, 0..1): the fraction of the two masks'
    surface voxels lying within ``tolerance_mm`` (physical mm, using ``spacing_zyx``) of the other mask's
    surface. Surfaces are voxel sets (mask minus its 6-connected erosion), distances are Euclidean between
    voxel centres. Both empty: 1.0; exactly one empty: 0.0.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != a.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx must hold {a.ndim} positive values, got {spacing_zyx}")
    sa, sb = _surface(a), _surface(b)
    na, nb = int(sa.sum()), int(sb.sum())
    if na + nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    # Every surface voxel lies inside the bounding box of both surfaces, so cropping to it changes no
    # distance and keeps the distance transforms small on large volumes.
    nz = np.nonzero(sa | sb)
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in nz)
    sa, sb = sa[box], sb[box]
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    tol = float(tolerance_mm) + 1e-9
    close = int((dist_to_b[sa] <= tol).sum()) + int((dist_to_a[sb] <= tol).sum())
    return float(close / (na + nb))
