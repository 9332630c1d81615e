"""The measured context a sliding window needs: the model's effective receptive field.

The encoder's theoretical reach (``config.context_radius``, 21 LR voxels for the paper preset) is far
wider than what actually moves an output: a trained ReLU network's influence decays fast with distance.
``effective_radius`` measures it on real data: the gradient of one decoded value with respect to every
LR voxel around it, summed over shells of Chebyshev distance ``d``. Cutting the context at ``m`` changes
the output by at most about ``sum_{d > m} |grad_d| * (largest change of the input)``, to first order, so
the smallest ``m`` that keeps that bound under ``tolerance_hu`` is the margin windows need.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import CycleINR


def influence_by_distance(model: CycleINR, volume: np.ndarray) -> np.ndarray:
    """Sum of |d output / d input| over each shell of Chebyshev distance 0..R around the centre of a
    (2R+2, 2R+1, 2R+1) crop of ``volume`` (HU), for the output between its two central slices."""
    radius = model.config.context_radius
    shape = (2 * radius + 2, 2 * radius + 1, 2 * radius + 1)
    if any(n < s for n, s in zip(volume.shape, shape, strict=True)):
        raise ValueError(f"volume {volume.shape} is smaller than the {shape} the measurement needs")
    starts = [(n - s) // 2 for n, s in zip(volume.shape, shape, strict=True)]
    crop = volume[tuple(slice(a, a + s) for a, s in zip(starts, shape, strict=True))].astype(np.float32)
    cfg = model.config
    lr = torch.from_numpy((crop - cfg.intensity_offset) / cfg.intensity_scale)[None, None].requires_grad_()
    model = model.eval()
    z = torch.tensor([radius + 0.5, radius + 0.25, radius + 0.75, float(radius)])
    out = model(lr, z)[0, :, radius, radius]
    grads = [torch.autograd.grad(value, lr, retain_graph=True)[0][0, 0].abs() for value in out]
    grad = torch.stack(grads).amax(0).numpy()                  # the most sensitive of the four positions
    dz = np.minimum(np.abs(np.arange(shape[0]) - radius), np.abs(np.arange(shape[0]) - radius - 1))
    dy = np.abs(np.arange(shape[1]) - radius)
    distance = np.maximum(dz[:, None, None], np.maximum(dy[None, :, None], dy[None, None, :]))
    return np.bincount(distance.ravel(), weights=grad.ravel(), minlength=radius + 1)


def effective_radius(model: CycleINR, volume: np.ndarray, tolerance_hu: float = 0.1,
                     input_range_hu: float = 2000.0) -> int:
    """Smallest margin m whose first-order truncation bound (influence beyond m times the input range,
    in HU) is below ``tolerance_hu``. Always >= 2 (the attention block's own reach)."""
    shells = influence_by_distance(model, volume)
    beyond = np.cumsum(shells[::-1])[::-1]                    # beyond[m] = influence at distance >= m
    bound = np.append(beyond[1:], 0.0) * input_range_hu       # influence at distance > m, in HU
    return int(max(2, np.nonzero(bound <= tolerance_hu)[0][0]))
