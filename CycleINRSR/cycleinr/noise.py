"""Generated slices with the noise of acquired ones (``upsample(..., noise="match")``, the default).

A generated slice is close to the conditional mean of its neighbours, so it is smoother than an acquired
slice: scrolling shows a noise dip at every generated slice (what SNLI and the dip ratio measure). No
training recipe tried removed it: the fine-tuned fast model's generated slices keep 0.82 / 0.86 / 0.91 of
the acquired noise at x2 / x3 / x5 on held-out head CT, 0.74 on the thick chest CT. ``match_noise`` adds to each generated slice zero-mean Gaussian noise with the
variance it lacks: the target sigma is the acquired slices' own sigma, interpolated along z, and the
missing part is ``sqrt(target^2 - sigma^2)``, both measured with the Donoho-Johnstone estimator that SNLI
uses (``noise_sigmas``: the same estimate as ``metrics.noise_sigma_per_slice``, in torch, batched, so
that it runs on the model's device; on a GPU the per-slice numpy loop took 5 s of a 2 s budget for a
64 x 512 x 512 CT at x5). The added noise is white, so it restores the noise *level* (finest-scale
wavelet band), not the in-plane texture of the scanner's correlated noise. Seeded, so a run is
reproducible on a given device (CPU and CUDA draw different noise).

The match goes both ways. On a scan softer than the training CT the network adds detail the scan does not
have: on the held-out head slab blurred by 1 mm (a soft kernel), generated slices had 1.11 / 1.22 / 1.27x
the acquired sigma at x2 / x3 / x5, which added noise cannot undo. A slice above its target, generated or
acquired (the network re-decodes acquired positions too, and sharpened them there as well), is blended
towards its in-plane 3 x 3 binomial smoothing until it is at the target: dip ratio 1.01 / 1.02 / 1.03,
PSNR of the generated slices +0.09 / +0.11 / +0.15 dB. Noise is never added to an acquired slice. The
sigma is measured after clipping to the input's range, which otherwise took ~3 % of the added noise
where air lies at the range's floor (generated slices ended 0.93-1.0x their target on the head slab).

Why it is the default: slices that look acquired when scrolling are the point of the method. It costs
PSNR only where the noise is strong (added noise is independent of the truth): -0.38 dB on the chest
CT's in-plane check at x3, under 0.01 dB on head CT (``Testing/benchmarks/noise_match.py``). ``"none"``
gives the network's own output, for PSNR-optimal results.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NOISE_MODES = ("none", "match")        # upsample's noise option: the network's output, or matched noise
SLICES_PER_STEP = 16                   # fixed, so that the noise drawn does not depend on memory

# Daubechies-2 high-pass decomposition filter (PyWavelets' db2 dec_hi) and the Gaussian 75th percentile
# (scipy.stats.norm.ppf(0.75)): sigma = median |HH detail| / 0.6745, Donoho & Johnstone 1994.
DB2_HIGH = (-0.48296291314453416, 0.8365163037378079, -0.2241438680420134, -0.12940952255126037)
GAUSS_Q75 = 0.6744897501960817


def generated_mask(positions: np.ndarray) -> np.ndarray:
    """True for output slices that do not lie on an input slice (positions in input slice-index units)."""
    return np.abs(positions - np.round(positions)) > 1e-6


def noise_sigmas(images: torch.Tensor) -> torch.Tensor:
    """Donoho-Johnstone noise sigma of each image of a (B, H, W) tensor, float32 on its device: median
    |diagonal detail| / 0.6745 of a one-level db2 transform with symmetric extension, exactly-zero
    coefficients ignored (as ``skimage.restoration.estimate_sigma`` does); 0 for a constant image."""
    images = images.float()
    flat = images.flatten(1)
    constant = flat.amax(dim=1) == flat.amin(dim=1)
    # PyWavelets' arithmetic, so that the same coefficients come out exactly zero (left out of the median):
    # float64, columns then rows, products summed in its order without fused multiply-adds
    detail = _db2_high(_db2_high(images.double(), -2), -1).abs().flatten(1)
    size = detail.shape[1]
    if bool((detail != 0).all()):                  # the usual case: a selection, faster than a sort
        median = (detail.kthvalue((size + 1) // 2, dim=1).values + detail.kthvalue(size // 2 + 1, dim=1).values) / 2
        return torch.where(constant, 0.0, median / GAUSS_Q75).float()
    detail = torch.where(detail == 0, torch.nan, detail)              # NaN sorts last
    ordered = detail.sort(dim=1).values
    count = (~torch.isnan(detail)).sum(dim=1, keepdim=True)
    middle = torch.cat([(count - 1) // 2, count // 2], dim=1).clamp(min=0)
    median = ordered.gather(1, middle).mean(dim=1)
    return torch.where((count[:, 0] > 0) & ~constant, median / GAUSS_Q75, 0.0).float()


def _db2_high(images: torch.Tensor, dim: int) -> torch.Tensor:
    """One level of db2 high-pass filtering and decimation along ``dim`` (PyWavelets' 'symmetric' mode:
    (n + 3) // 2 outputs, the i-th from extended samples 2i + 1 ... 2i + 4)."""
    n = images.shape[dim]
    extended = np.pad(np.arange(n), 3, mode="symmetric")[1:]
    outputs = (n + 3) // 2
    picks = torch.as_tensor(extended[:2 * outputs + len(DB2_HIGH) - 2], device=images.device)
    x = images.index_select(dim, picks)
    step = [slice(None)] * x.dim()
    out = None
    # output i = sum_j tap_j x[2 i + 3 - j], summed in PyWavelets' order on strided views (a matmul with
    # the unfolded windows cloned every row: 1.2 s of noise matching for a 316 x 112 x 512 output)
    for j, tap in enumerate(DB2_HIGH):
        step[dim] = slice(3 - j, 3 - j + 2 * outputs, 2)
        product = x[tuple(step)] * tap
        out = product if out is None else out.add_(product)
    return out


def match_noise(output: torch.Tensor, positions: np.ndarray, input_sigmas: np.ndarray, seed: int = 0,
                device: str | torch.device | None = None, bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Match, in place, the noise sigma of ``output``'s slices (z, y, x; float32 tensor) to the input's at
    their positions: generated slices get the noise a smoother slice lacks, and any slice, acquired ones
    too, loses the fine detail it has in excess. Values are kept within ``bounds`` (the input's range)
    while the sigma is measured, so that clipping does not undo the match. Works on ``device`` (default:
    the tensor's) a few slices at a time; returns ``output``."""
    generated = generated_mask(positions)
    if not generated.any():
        return output
    target = np.interp(positions, np.arange(len(input_sigmas)), input_sigmas)
    device = torch.device(device) if device is not None else output.device
    low, high = bounds if bounds is not None else (-math.inf, math.inf)
    rng = torch.Generator(device).manual_seed(seed)
    for rows_of_kind, add in ((np.nonzero(generated)[0], True), (np.nonzero(~generated)[0], False)):
        for start in range(0, len(rows_of_kind), SLICES_PER_STEP):
            chosen = rows_of_kind[start:start + SLICES_PER_STEP]
            rows = torch.as_tensor(chosen, device=output.device)
            images = output.index_select(0, rows).to(device).clamp_(low, high)
            wanted = torch.as_tensor(target[chosen], dtype=torch.float32, device=device)
            images, have = _remove_excess_detail(images, wanted, noise_sigmas(images))
            if add:                          # acquired slices keep their own noise
                unit = torch.randn(images.shape, generator=rng, device=device)
                images = _add_missing_noise(images, wanted, unit, (low, high), have)
            output.index_copy_(0, rows, images.to(output.device))
    return output


def input_noise_sigmas(volume: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """``noise_sigmas`` of every slice of a (z, y, x) numpy volume, computed on ``device``."""
    parts = [noise_sigmas(torch.from_numpy(np.asarray(volume[k:k + SLICES_PER_STEP], dtype=np.float32))
                          .to(device)).cpu()
             for k in range(0, len(volume), SLICES_PER_STEP)]
    return torch.cat(parts).double().numpy()


def _add_missing_noise(images: torch.Tensor, target: torch.Tensor, unit: torch.Tensor,
                       bounds: tuple[float, float], have: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """``images + a * unit`` (per image, clipped to ``bounds``) whose estimated sigma is ``target``. The
    robust estimator is not additive on real anatomy (edges fill the detail band) nor under clipping (air
    at the range's floor), so ``a`` starts at the Gaussian guess and is corrected a few times by the ratio
    of the variance still missing to the variance the noise added. Images already as noisy as their
    target are left as they are. ``have``: the images' own sigmas."""
    missing = (target ** 2 - have ** 2).clamp(min=0)
    amount = missing.sqrt()
    for _ in range(steps):
        got = noise_sigmas((images + amount.view(-1, 1, 1) * unit).clamp_(*bounds))
        settled = (got - target).abs() < 0.01 * target
        if bool(settled.all()):
            break
        ratio = (missing / (got ** 2 - have ** 2).clamp(min=1e-12)).sqrt()
        amount = torch.where(settled, amount, amount * ratio)
    return (images + amount.view(-1, 1, 1) * unit).clamp_(*bounds)


def _remove_excess_detail(images: torch.Tensor, target: torch.Tensor, have: torch.Tensor,
                          steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``images - b * detail`` (per image; ``detail`` = the image minus its in-plane 3 x 3 binomial
    smoothing, ``b`` in [0, 1]) whose estimated sigma is ``target``, for images more than 1 % above it.
    A model trained on sharper CT than the scan in hand adds detail a soft-kernel scan does not have
    (generated slices 1.2-1.3x the acquired sigma on head CT blurred by 1 mm), which added noise cannot
    undo. ``b`` starts at the linear guess and is corrected by the ratio of the excess still to remove
    to the excess removed. Other images are returned as they are. ``have``: the images' own sigmas;
    returns the images and their sigmas."""
    excess = have > 1.01 * target
    if not bool(excess.any()):
        return images, have
    detail = images - _binomial_smoothing(images)
    low = noise_sigmas(images - detail)
    wanted = (have - target).clamp(min=0)
    amount = torch.where(excess, (wanted / (have - low).clamp(min=1e-12)).clamp(0, 1), 0.0)
    for step in range(steps + 1):
        got = noise_sigmas(images - amount.view(-1, 1, 1) * detail)
        settled = ~excess | ((got - target).abs() < 0.01 * target) | ((amount >= 1) & (got > target))
        if step == steps or bool(settled.all()):
            break
        ratio = wanted / (have - got).clamp(min=1e-12)
        amount = torch.where(settled, amount, (amount * ratio).clamp(0, 1))
    return images - amount.view(-1, 1, 1) * detail, got


def _binomial_smoothing(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) images filtered in-plane by [1, 2, 1] / 4 along each axis, edges replicated: zero
    response at the highest frequency, where the noise estimate's diagonal detail band lies."""
    x = images.float()[:, None]
    taps = torch.tensor([0.25, 0.5, 0.25], device=x.device)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 0, 0), mode="replicate"), taps.view(1, 1, 1, 3))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 1, 1), mode="replicate"), taps.view(1, 1, 3, 1))
    return x[:, 0].to(images.dtype)
