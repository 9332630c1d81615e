"""Sliding-window upsampling of a whole volume along its slice axis.

The volume is cut into z windows (``window`` LR slices, neighbours sharing ``overlap`` slices) and, when
wider than ``tile`` voxels, in-plane tiles. Each window is encoded with ``margin`` extra LR voxels of
context on every side that exists, decoded at the output slices inside it, and blended with Gaussian
weights that fall off towards the window's edges. Peak memory is set by the window, not the volume.
With ``margin >= config.context_radius`` every window sees exactly what the whole volume would show
it, and the result equals whole-volume inference to float precision.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from .geometry import Geometry, UpsampleResult, output_slice_positions, resolve_target_spacing
from .model import CycleINR
from .volume_io import check_volume
from .weights import load_model

# Defaults: a window of 24 thick slices keeps the paper preset's encoder activations near 1 GB while most
# clinical volumes (<= 24 slices of a 5 mm series) need few windows; 2 shared slices plus 4 slices of context
# per side keep the seams invisible. Tiles and decode chunks depend on the device: on a CPU, 112-pixel tiles
# decoded 16k points at a time ran 1.8x faster than 384-pixel tiles with 64k-point chunks (cache-sized
# tensors instead of page-faulting ones; Testing/benchmarks/tile_sizes.py, 2 cores); a GPU wants big tiles.
DEFAULT_WINDOW, DEFAULT_OVERLAP = 24, 2
DEFAULT_TILE = {"cpu": 112, "cuda": 384}
POINTS_PER_CHUNK = {"cpu": 1 << 14, "cuda": 1 << 16}


class Cancelled(RuntimeError):
    """The caller's cancel flag was raised; nothing was written."""


def select_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available to torch; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def spans(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Inclusive index ranges of length ``size`` covering 0..n-1, neighbours sharing ``overlap``."""
    size = max(1, min(size, n))
    overlap = min(max(overlap, 0), size - 1)
    if size >= n:
        return [(0, n - 1)]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return [(a, a + size - 1) for a in sorted(set(starts))]


def gaussian(coords: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Blending weight over a window [lo, hi]: Gaussian centred on it, sigma = a quarter of its length."""
    centre, sigma = (lo + hi) / 2, max(hi - lo + 1, 1) / 4
    return np.exp(-0.5 * ((coords - centre) / sigma) ** 2).astype(np.float32)


def _check_cancel(cancel) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Cancelled("upsampling cancelled")


def _resolve_model(model, device: torch.device) -> CycleINR:
    if isinstance(model, CycleINR):
        return model.to(device).eval()
    return load_model(model, device)


def _spacing_xyz(spacing) -> tuple[float, float, float]:
    if isinstance(spacing, Geometry):
        spacing = spacing.spacing
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing}")
    return spacing


def upsample(volume: np.ndarray, spacing, target_spacing: float | None = None, factor: float | None = None,
             model="default", device="auto", window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP,
             tile: int | None = None,
             margin: int | None = None, progress: Callable[[int, int], None] | None = None,
             cancel=None) -> UpsampleResult:
    """Upsample a (z, y, x) volume along z to ``target_spacing`` mm (or by ``factor``).

    ``spacing`` is ITK (x, y, z) in mm (or a Geometry). The first output slice lies on the first input
    slice, the output spacing is exactly the target, and no slice lies past the last input slice; origin
    and direction are unchanged (see ``UpsampleResult.geometry``). ``model`` is 'default', 'fast', a
    weights path or a loaded CycleINR. ``progress(done, total)`` is called after each window; ``cancel``
    (a threading.Event or a callable returning True) stops the run with ``Cancelled``. The input array
    is never modified. Deterministic on CPU; bfloat16 autocast on CUDA.
    """
    check_volume(volume)
    spacing = _spacing_xyz(spacing)
    target = resolve_target_spacing(spacing[2], target_spacing, factor)
    if window < 2:
        raise ValueError(f"window must hold at least 2 LR slices, got {window}")
    dev = select_device(device)
    net = _resolve_model(model, dev)
    cfg = net.config
    tile = tile or DEFAULT_TILE.get(dev.type, DEFAULT_TILE["cuda"])
    margin = min(cfg.context_radius, 4) if margin is None else max(int(margin), 0)
    n, h, w = volume.shape
    positions = output_slice_positions(n, spacing[2], target)

    norm = (np.asarray(volume, dtype=np.float32) - cfg.intensity_offset) / cfg.intensity_scale
    numerator = np.zeros((len(positions), h, w), dtype=np.float32)
    denominator = np.zeros_like(numerator)
    z_spans = spans(n, window, overlap)
    y_spans, x_spans = spans(h, tile, 2 * margin), spans(w, tile, 2 * margin)
    total, done = len(z_spans) * len(y_spans) * len(x_spans), 0
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    with torch.inference_mode(), amp:
        for za, zb in z_spans:
            inside = np.nonzero((positions >= za - 1e-9) & (positions <= zb + 1e-9))[0]
            ez0, ez1 = max(za - margin, 0), min(zb + margin, n - 1)
            wz = gaussian(positions[inside], za, zb)
            for ya, yb in y_spans:
                ey0, ey1 = max(ya - margin, 0), min(yb + margin, h - 1)
                wy = gaussian(np.arange(ya, yb + 1), ya, yb)
                for xa, xb in x_spans:
                    _check_cancel(cancel)
                    ex0, ex1 = max(xa - margin, 0), min(xb + margin, w - 1)
                    wx = gaussian(np.arange(xa, xb + 1), xa, xb)
                    lr = torch.from_numpy(np.ascontiguousarray(norm[ez0:ez1 + 1, ey0:ey1 + 1, ex0:ex1 + 1]))
                    pred = _decode_window(net, lr.to(dev)[None, None], positions[inside] - ez0)
                    pred = pred[:, ya - ey0:yb - ey0 + 1, xa - ex0:xb - ex0 + 1]
                    weight = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
                    numerator[inside, ya:yb + 1, xa:xb + 1] += weight * pred
                    denominator[inside, ya:yb + 1, xa:xb + 1] += weight
                    done += 1
                    if progress is not None:
                        progress(done, total)
    out = numerator / denominator * cfg.intensity_scale + cfg.intensity_offset
    spacing_out = (spacing[0], spacing[1], float(target))
    return UpsampleResult(out.astype(np.float32), spacing_out, positions)


def _decode_window(net: CycleINR, lr: torch.Tensor, z: np.ndarray) -> np.ndarray:
    """Encode one window once, then decode its output slices in chunks that bound memory."""
    codes = net.encode(lr)
    kv = net.keys_values(codes)
    plane = lr.shape[-1] * lr.shape[-2]
    default = POINTS_PER_CHUNK.get(lr.device.type, POINTS_PER_CHUNK["cuda"])
    budget = int(os.environ.get("CYCLEINR_POINTS_PER_CHUNK", default))
    step = max(1, budget // plane)
    zt = torch.as_tensor(z, dtype=torch.float32)
    parts = [net.decode(lr, codes, kv, zt[i:i + step]).float()[0].cpu() for i in range(0, len(zt), step)]
    return torch.cat(parts).numpy()


def timed_upsample(*args, **kwargs) -> tuple[UpsampleResult, float]:
    """``upsample`` and its wall time in seconds (for reports and benchmarks)."""
    start = time.perf_counter()
    result = upsample(*args, **kwargs)
    return result, time.perf_counter() - start
