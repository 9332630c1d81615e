"""Training pairs synthesized on the fly from thin-slice (HR) volumes.

Each draw picks a scale r in [scale_min, scale_max] with one decimal (the paper's protocol), a volume, a
slice axis, and a random block; it degrades the block to ``lr_slices`` thick slices (``degrade``; matched
modes draw their noise from the same generator) and keeps every HR slice from the first to the last LR
slice as the target. The target slice positions, in LR
slice-index units, are ``k / r``: decimal r needs no coincidence between LR and HR slices.
Only numpy's Generator is used, so a saved generator state resumes the exact same stream of pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .degrade import degrade_block, lr_positions
from .geometry import slices_at_scale, thin_slices_touched
from .volume_io import VolumeError, read_volume

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class Volume:
    """A thin-slice training volume in HU and the array axes that may serve as the slice axis."""

    array: np.ndarray
    name: str
    slice_axes: tuple[int, ...] = (0,)


@dataclass
class Batch:
    lr: np.ndarray        # (B, 1, L, P, P) normalized
    hr: np.ndarray        # (B, Q, P, P) normalized
    z_hr: np.ndarray      # (Q,) target positions in LR slice-index units
    z_lr: np.ndarray      # (L,) LR positions in HR-target index units (for the cycle)
    scale: float


def find_volumes(paths) -> list[Path]:
    """Volume files and DICOM folders named by ``paths`` (files, or folders searched one level deep)."""
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            files = sorted(c for c in p.iterdir() if c.is_file() and c.name.lower().endswith(VOLUME_SUFFIXES))
            dicom_dirs = sorted(c for c in p.iterdir() if c.is_dir())
            found += files + dicom_dirs if files or dicom_dirs else [p]  # a folder of .dcm is one series
        else:
            raise VolumeError(f"{p}: no such file or folder")
    return found


def load_volumes(paths, slice_axes=(0,), min_slices: int = 8) -> list[Volume]:
    """Read training volumes, rejecting unusable ones with a reason."""
    volumes = []
    for path in find_volumes(paths):
        array, _, _ = read_volume(path)
        if array.shape[0] < min_slices:
            raise VolumeError(f"{path}: {array.shape[0]} slices; training needs at least {min_slices} thin slices")
        volumes.append(Volume(array.astype(np.float32), Path(path).name, tuple(slice_axes)))
    if not volumes:
        raise VolumeError(f"no readable volumes in {', '.join(map(str, paths))}")
    return volumes


def draw_scale(rng: np.random.Generator, lo: float = 2.0, hi: float = 6.0) -> float:
    """A scale in [lo, hi] with one decimal, uniformly over the decimals."""
    steps = int(round((hi - lo) * 10))
    return round(lo + rng.integers(0, steps + 1) / 10, 1)


def _augment(rng, block: np.ndarray, noise_hu: float, blur_max: float = 0.0, units: float = 1.0) -> np.ndarray:
    """In-plane flips and quarter turns, intensity jitter, added noise and, with ``blur_max`` > 0, a softer
    kernel for half the blocks (an isotropic Gaussian of sigma U(0, blur_max) voxels over the block, noise
    included, as a soft reconstruction kernel smooths both). All before degradation, so the LR input and
    the HR target share it, as in a real scan. Without ``blur_max`` the random stream is as before.
    ``units``: data units per HU (1 for CT; the model's intensity scale / 1000 for other data), so shift
    and noise are the same fraction of the data's range as on CT."""
    if rng.random() < 0.5:
        block = block[:, ::-1]
    if rng.random() < 0.5:
        block = block[:, :, ::-1]
    turns = int(rng.integers(0, 4))
    if block.shape[1] != block.shape[2]:
        turns = 2 * (turns % 2)              # rectangular patches keep their shape: half turns only
    block = np.rot90(block, k=turns, axes=(1, 2))
    gain, shift = 1 + rng.uniform(-0.05, 0.05), rng.uniform(-20, 20) * units
    block = block * gain + shift
    if noise_hu > 0:
        block = block + rng.normal(0, rng.uniform(0, noise_hu) * units, size=block.shape).astype(np.float32)
    if blur_max > 0 and rng.random() < 0.5:
        block = ndimage.gaussian_filter(np.asarray(block, dtype=np.float32), rng.uniform(0, blur_max), mode="nearest")
    return np.ascontiguousarray(block, dtype=np.float32)


def sample_batch(rng: np.random.Generator, volumes: list[Volume], batch_size: int, lr_slices: int,
                 patch: int | tuple[int, int],
                 scale_range=(2.0, 6.0), mode: str = "interval", augment: bool = True, noise_hu: float = 10.0,
                 offset: float = 0.0, scale_hu: float = 1000.0, min_tissue: float = 0.25,
                 blur_max: float = 0.0) -> Batch:
    """A batch of LR/HR pairs sharing one scale (so their shapes match). Patch positions are redrawn
    (up to 10 times) until at least ``min_tissue`` of the block is denser than -500 HU (normalised -0.5:
    the same fraction of the range for data in other units). ``patch`` is the in-plane size, square or
    (height, width) (per-scan adaptation: a thick axis with few slices)."""
    units, tissue = scale_hu / 1000.0, offset - 0.5 * scale_hu          # CT: 1 and -500 HU
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    scale = draw_scale(rng, *scale_range)
    span = slices_at_scale(lr_slices, scale)             # HR targets: first to last LR slice
    need = thin_slices_touched(lr_slices, scale)         # HR slices the LR slices are made from
    lrs, hrs = [], []
    for _ in range(batch_size):
        vol = volumes[int(rng.integers(0, len(volumes)))]
        axis = vol.slice_axes[int(rng.integers(0, len(vol.slice_axes)))]
        arr = np.moveaxis(vol.array, axis, 0)
        if augment and rng.random() < 0.5:
            arr = arr[::-1]                                              # head-to-feet flip
        n, h, w = arr.shape
        if n < need or h < ph or w < pw:
            raise VolumeError(f"{vol.name}: shape {arr.shape} along axis {axis} is too small for {lr_slices} "
                              f"thick slices at scale {scale} with {ph}x{pw} patches")
        pad = int(math.ceil(scale / 2)) + 1                              # room for a full slab
        for _ in range(10):                      # prefer patches with tissue: air teaches nothing
            z0 = int(rng.integers(0, n - need + 1))
            y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            if (arr[z0:z0 + need:2, y0:y0 + ph:2, x0:x0 + pw:2] > tissue).mean() >= min_tissue:
                break
        lo, hi = max(z0 - pad, 0), min(z0 + need + pad, n)
        block = arr[lo:hi, y0:y0 + ph, x0:x0 + pw]
        block = _augment(rng, block, noise_hu, blur_max, units) if augment else np.ascontiguousarray(block, dtype=np.float32)
        first = z0 - lo
        pos = lr_positions(block.shape[0], scale, first)[:lr_slices]
        lrs.append(degrade_block(block, pos, scale, mode, rng))
        hrs.append(block[first:first + span])
    norm = lambda a: ((np.stack(a) - offset) / scale_hu).astype(np.float32)  # noqa: E731
    z_hr = np.arange(span, dtype=np.float32) / scale
    z_lr = (np.arange(lr_slices) * scale).astype(np.float32)
    return Batch(norm(lrs)[:, None], norm(hrs), z_hr, z_lr, scale)

