"""Sliding-window upsampling of a whole volume along its slice axis.

The volume is cut into z windows of equal size (``window`` LR slices, neighbours sharing ``overlap``
slices) and, when wider than ``tile`` voxels, equal in-plane tiles sharing ``overlap`` pixels. Each window
is encoded with ``margin`` extra LR voxels of context on every side that exists, but only its own core is
decoded: the output slices inside it, at the pixels of its tile. Results are blended with Gaussian weights
that fall off towards the window's edges; the in-plane blend is done on the device, so each z window
crosses to the host once. Peak memory is set by the window and tile, not the volume.

The default margin is the model's measured context (``config.window_margin``, from the effective receptive
field, see ``receptive.py``), else the full ``config.context_radius``, with which every window sees
exactly what the whole volume would show it. The output is clamped to the input's own value range.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from .config import preset
from .geometry import Geometry, UpsampleResult, output_slice_positions, resolve_target_spacing
from .model import CycleINR
from .noise import NOISE_MODES, input_noise_sigmas, match_noise
from .volume_io import check_volume
from .weights import load_model

# Defaults: a window of 24 thick slices keeps the paper preset's encoder activations near 1 GB on a CPU while
# most clinical volumes need few windows; smaller encoders get proportionally more slices in the same memory
# (the fast preset 84: a 64-slice CT is one window, with no z margins to encode twice; 7 % faster on a
# 64 x 224 x 224 chest CT crop at x5, 2 threads). On a CPU, 112-pixel tiles decoded 16k points at a time ran 1.8x
# faster than 384-pixel tiles with 64k-point chunks (cache-sized tensors instead of page-faulting ones;
# Testing/benchmarks/tile_sizes.py, 2 cores). On CUDA, window and tile are sized from free memory.
DEFAULT_WINDOW, DEFAULT_OVERLAP = 24, 2
DEFAULT_TILE = {"cpu": 112, "cuda": 512}
POINTS_PER_CHUNK = {"cpu": 1 << 14, "cuda": 1 << 20}
# Decoder activation values (points x width) per call on a CPU, see ``decoder_points``.
DECODER_VALUES_CPU = 1 << 22
CUDA_MEMORY_SHARE = 0.5                   # of the free GPU memory that one window may take
OUTPUT_MEMORY_SHARE = 0.25                # of the free GPU memory that the output volume may take
PRECISIONS = ("auto", "float32", "bfloat16")
# Self-ensemble (EDSR's "+", Lim et al. 2017): the network's outputs on flipped copies of the input, flipped
# back and averaged. Flips of the slice axis (z) first, then x, then y (dims of a (z, y, x) array): 2 passes
# average z, 4 add x, 8 add y. Training flips every axis, yet the networks are not flip-symmetric: the passes
# differ, and their mean usually scores higher (not always: the paper-size model at x5, model card).
SELF_ENSEMBLE_FLIPS = ((), (0,), (2,), (0, 2), (1,), (0, 1), (1, 2), (0, 1, 2))
ENSEMBLE_SIZES = (1, 2, 4, 8)


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
    """Inclusive index ranges covering 0..n-1: as few as fit ``size`` with neighbours sharing at least
    ``overlap``, all of (nearly) equal length, so no part of the volume is computed twice over."""
    size = max(1, min(size, n))
    overlap = min(max(overlap, 0), size - 1)
    if size >= n:
        return [(0, n - 1)]
    count = math.ceil((n - overlap) / (size - overlap))
    length = math.ceil((n + (count - 1) * overlap) / count)
    starts = [round(i * (n - length) / (count - 1)) for i in range(count)]
    return [(a, a + length - 1) for a in starts]


def gaussian(coords: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Blending weight over a window [lo, hi]: Gaussian centred on it, sigma = a quarter of its length."""
    centre, sigma = (lo + hi) / 2, max(hi - lo + 1, 1) / 4
    return np.exp(-0.5 * ((coords - centre) / sigma) ** 2).astype(np.float32)


def _check_cancel(cancel, what: str = "upsampling") -> None:
    """Raise ``Cancelled`` if ``cancel`` (a threading.Event or a callable returning True) is set."""
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Cancelled(f"{what} cancelled")


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
             model="auto", device="auto", window: int | None = None, overlap: int = DEFAULT_OVERLAP,
             tile: int | None = None, margin: int | None = None,
             progress: Callable[[int, int], None] | None = None, cancel=None,
             noise: str = "match", seed: int = 0, adapt: float | None = None, degradation: str = "interval",
             adapt_progress: Callable[[float, float], None] | None = None,
             precision: str = "auto", ensemble: int = 1) -> UpsampleResult:
    """Upsample a (z, y, x) volume along z to ``target_spacing`` mm (or by ``factor``).

    ``spacing`` is ITK (x, y, z) in mm (or a Geometry). The first output slice lies on the first input
    slice, the output spacing is exactly the target, and no slice lies past the last input slice; origin
    and direction are unchanged (see ``UpsampleResult.geometry``). ``model`` is 'auto' (the bundled
    model for the device, as the CLI's default), 'default', 'fast', a weights path or a loaded CycleINR.
    ``window``/``tile`` default to sizes that suit the device.
    ``progress(done, total)`` is called after each tile; ``cancel`` (a threading.Event or a callable
    returning True) stops the run with ``Cancelled``. The input array is never modified; the output stays
    within its value range. Deterministic on CPU. ``precision``: 'auto' is bfloat16 autocast on CUDA and
    float32 on a CPU; 'bfloat16' also on a CPU (faster where it has bf16 matrix units, e.g. AMX; see
    ``autocast_for``). Interpolation weights, residual and blending always stay float32.
    ``noise="match"`` (the default) gives generated slices the noise level of the acquired ones
    (``noise.py``; seeded by ``seed``); ``"none"`` returns the network's output. ``ensemble`` (1, 2, 4 or
    8) averages the network's output over that many flipped copies of the input (``SELF_ENSEMBLE_FLIPS``):
    higher PSNR for that many times the time, and one more output-sized buffer.

    ``adapt=SECONDS`` first fine-tunes a copy of the model on this volume's own in-plane axes for at most
    that long (``adapt.adapt_model``: ``degradation`` is the input's slice profile, interval or slab;
    ``seed`` seeds it; ``cancel`` stops it; ``adapt_progress(elapsed, seconds)`` follows it), then
    upsamples with the copy. The model given (or its file) is never modified; the result's
    ``adaptation`` holds the report (iterations, seconds, loss before/after, which weights were kept)
    and ``adapted_model`` the copy (``adapt.save_adapted`` writes it).
    """
    check_volume(volume)
    spacing = _spacing_xyz(spacing)
    target = resolve_target_spacing(spacing[2], target_spacing, factor)
    if window is not None and window < 2:
        raise ValueError(f"window must hold at least 2 LR slices, got {window}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(ensemble, bool) or ensemble not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES} (passes over flipped copies), got {ensemble!r}")
    if adapt is not None:                     # adapt imports this module: loaded only when asked for
        from .adapt import adapt_model, check_budget

        check_budget(adapt)                   # a bad budget fails before the model is loaded
    dev = select_device(device)
    net = _resolve_model(model, dev)
    report = None
    if adapt is not None:
        net, report = adapt_model(net, volume, spacing, adapt, target_spacing=target, degradation=degradation,
                                  seed=seed, device=dev, progress=adapt_progress, cancel=cancel)
    cfg = net.config
    margin = default_margin(cfg) if margin is None else max(int(margin), 0)
    n, h, w = volume.shape
    auto_window, auto_tile = window_and_tile(cfg, dev, volume.shape, margin)
    window, tile = window or auto_window, tile or auto_tile
    positions = output_slice_positions(n, spacing[2], target)
    chunk = int(os.environ.get("CYCLEINR_POINTS_PER_CHUNK", POINTS_PER_CHUNK[dev.type]))
    points = int(os.environ.get("CYCLEINR_DECODER_POINTS", decoder_points(cfg, dev, chunk)))

    norm = torch.from_numpy((np.asarray(volume, dtype=np.float32) - cfg.intensity_offset) / cfg.intensity_scale)
    home = output_device(dev, (len(positions), h, w))
    passes = SELF_ENSEMBLE_FLIPS[:int(ensemble)]
    out = None
    with torch.inference_mode(), autocast_for(dev, precision):
        for i, dims in enumerate(passes):          # self-ensemble: the same network on flipped copies
            def step(done, total, i=i):           # every pass has the same number of tiles
                if progress is not None:
                    progress(i * total + done, len(passes) * total)
            at = (n - 1) - positions[::-1] if 0 in dims else positions  # ascending in the flipped volume
            view = torch.flip(norm, dims) if dims else norm
            one = _network_output(net, view, at, dev, home, window, overlap, tile, margin, step, cancel, chunk,
                                  points)
            one = torch.flip(one, dims) if dims else one                # z: back to ascending positions
            out = one if out is None else out.add_(one)
            del one
        if len(passes) > 1:
            out.div_(len(passes))
        out.mul_(cfg.intensity_scale).add_(cfg.intensity_offset)
        bounds = float(np.min(volume)), float(np.max(volume))       # output values stay in the input's range
        out.clamp_(*bounds)
        if noise == "match":                                        # on the model's device
            match_noise(out, positions, input_noise_sigmas(volume, dev), seed, dev, bounds)
    out = out.cpu().numpy()
    spacing_out = (spacing[0], spacing[1], float(target))
    return UpsampleResult(out, spacing_out, positions, adaptation=report,
                          adapted_model=net if report is not None else None)


def _network_output(net, norm: torch.Tensor, positions: np.ndarray, dev, home, window: int, overlap: int,
                    tile: int, margin: int, progress, cancel, chunk: int, points: int) -> torch.Tensor:
    """The network's output (normalised units) at ``positions`` (ascending, in LR slice units) of the whole
    (z, y, x) ``norm`` volume: z windows and in-plane tiles, each encoded with ``margin`` voxels of context and
    decoded in its core only, blended with Gaussian weights (the module docstring)."""
    n, h, w = norm.shape
    z_spans = spans(n, window, overlap)
    y_spans, x_spans = spans(h, tile, overlap), spans(w, tile, overlap)
    wy, wx = _tile_weights(y_spans, h, dev), _tile_weights(x_spans, w, dev)
    out = torch.zeros((len(positions), h, w), dtype=torch.float32, device=home) if len(z_spans) > 1 else None
    weight_sum = torch.zeros(len(positions), dtype=torch.float32, device=home)
    total, done = len(z_spans) * len(y_spans) * len(x_spans), 0
    for za, zb in z_spans:
        inside = np.nonzero((positions >= za - 1e-9) & (positions <= zb + 1e-9))[0]
        ez0, ez1 = max(za - margin, 0), min(zb + margin, n - 1)
        z_local = torch.as_tensor(positions[inside] - ez0, dtype=torch.float32)
        blended = torch.zeros((len(inside), h, w), dtype=torch.float32, device=dev)
        for ya, yb in y_spans:
            ey0, ey1 = max(ya - margin, 0), min(yb + margin, h - 1)
            for xa, xb in x_spans:
                _check_cancel(cancel)
                ex0, ex1 = max(xa - margin, 0), min(xb + margin, w - 1)
                lr = norm[ez0:ez1 + 1, ey0:ey1 + 1, ex0:ex1 + 1].to(dev)[None, None]
                core = (ya - ey0, yb - ey0 + 1, xa - ex0, xb - ex0 + 1)
                pred = net.decode(lr, net.encode(lr), z_local, region=core, chunk=chunk, points=points)[0]
                blended[:, ya:yb + 1, xa:xb + 1] += pred * (wy[ya, yb][:, None] * wx[xa, xb][None, :])
                done += 1
                if progress is not None:
                    progress(done, total)
        if out is None:                            # one z window: nothing to blend along z
            out, weight_sum = blended.to(home), torch.ones(len(positions), device=home)
            continue
        if not len(inside):
            continue
        wz = torch.from_numpy(gaussian(positions[inside], za, zb)).to(home)
        rows = slice(int(inside[0]), int(inside[-1]) + 1)      # a window's slices are consecutive
        out[rows] += wz[:, None, None] * blended.to(home)
        weight_sum[rows] += wz
    out /= weight_sum[:, None, None]
    return out


def decoder_points(config, device: torch.device, chunk: int) -> int:
    """Decoder points per call: one chunk on CUDA; on a CPU ``DECODER_VALUES_CPU`` activations, more than
    the attention's chunk for narrow decoders. Bigger inner products ran faster up to there (fast preset,
    width 64, a 112 x 112 tile of 64 LR slices to 316: decode 3.3 -> 2.6 s from 16k to 64k points; 8k:
    3.7 s), not past it (paper preset, width 256: 64k points 1.2x slower than 16k); 27-code blocks as big
    as 64k points did not pay (2.7 s)."""
    return chunk if device.type == "cuda" else max(chunk, DECODER_VALUES_CPU // config.decoder_width)


def output_device(device: torch.device, shape, free_bytes: int | None = None) -> torch.device:
    """Where the output volume is assembled: on the model's device, so that blending, noise matching and
    clamping run there and the result crosses to the host once; on the host for a CUDA output larger
    than ``OUTPUT_MEMORY_SHARE`` of the free GPU memory."""
    if device.type != "cuda":
        return torch.device("cpu")
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return device if 4 * math.prod(shape) <= OUTPUT_MEMORY_SHARE * free_bytes else torch.device("cpu")


def autocast_for(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The network's precision. bfloat16 halves memory traffic and uses bf16 matrix units: on by default
    on CUDA; opt-in on a CPU, where it pays on CPUs with bf16 matrix units (AMX: paper preset 2.1x, fast
    1.43x faster than float32 through oneDNN) and changes outputs by ~0.1 HU on average, but up to 16 HU
    at a few strong edges on real CT (fast preset; ``Testing/benchmarks/upsample_speed.py --precision
    float32 bfloat16``)."""
    use_bf16 = precision == "bfloat16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def default_margin(config) -> int:
    """LR voxels of context per window side: the measured effective receptive field, else the exact one."""
    return config.window_margin or config.context_radius


def _tile_weights(tile_spans, n: int, device) -> dict:
    """Gaussian weights of each tile over its own pixels, normalized so that the tiles covering a pixel
    sum to one: the in-plane blend is complete on the device, and only z windows blend on the host."""
    coords = np.arange(n)
    raw = {s: np.where((coords >= s[0]) & (coords <= s[1]), gaussian(coords, *s), 0.0) for s in tile_spans}
    total = sum(raw.values())
    return {s: torch.from_numpy((r / total)[s[0]:s[1] + 1].astype(np.float32)).to(device) for s, r in raw.items()}


def window_and_tile(config, device: torch.device, shape, margin: int,
                    free_bytes: int | None = None) -> tuple[int, int]:
    """Default z window and in-plane tile. CPU: a cache-friendly tile and a window whose encoder
    activations match the paper preset's 24 slices (more slices for smaller encoders). CUDA: the largest tile and
    window whose encoder activations (with margins) fit ``CUDA_MEMORY_SHARE`` of the free memory, after
    what one decode step needs (the 27-code blocks of a group of anchor planes and the decoder's
    activations for ``POINTS_PER_CHUNK`` points)."""
    if device.type != "cuda" and free_bytes is None:
        paper = preset("paper")
        return max(DEFAULT_WINDOW, DEFAULT_WINDOW * _values_per_voxel(paper) // _values_per_voxel(config)), \
            DEFAULT_TILE["cpu"]
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    points = POINTS_PER_CHUNK["cuda"]
    decode = 2 * points * (27 * config.code_length + 8 * config.decoder_width)       # bf16 bytes
    budget = max(CUDA_MEMORY_SHARE * free_bytes - decode, 0)
    per_voxel = 2 * _values_per_voxel(config)                          # bf16
    n, h, w = shape
    tile = min(max(h, w), DEFAULT_TILE["cuda"])
    while tile > 64 and (tile + 2 * margin) ** 2 * min(n, 2 + 2 * margin) * per_voxel > budget:
        tile //= 2
    window = n
    while window > 2 and (min(window + 2 * margin, n)) * (tile + 2 * margin) ** 2 * per_voxel > budget:
        window = max(2, window // 2)
    return window, tile


def _values_per_voxel(config) -> int:
    """Encoder values alive per LR voxel at once: a few feature maps and the codes."""
    return 3 * config.features + 4 * config.code_length


def timed_upsample(*args, **kwargs) -> tuple[UpsampleResult, float]:
    """``upsample`` and its wall time in seconds (for reports and benchmarks)."""
    start = time.perf_counter()
    result = upsample(*args, **kwargs)
    return result, time.perf_counter() - start
