"""``cycleinr bench``: speed, peak memory and arithmetic efficiency of ``upsample()`` vs linear interpolation.

Each case runs in a fresh subprocess, so the CPU peak memory is that process's resident high-water mark
(``VmHWM``) growth during the call (tracemalloc misses torch's allocations); on CUDA it is
``torch.cuda.max_memory_allocated``. Model FLOPs are counted analytically from the configuration (ideal:
each LR voxel encoded once, no sliding-window overlap) and compared with a measured dense matmul peak on
the same device (float32 on CPU, bfloat16 on CUDA, where inference runs under bfloat16 autocast).
A benchmark, not a test: numbers depend on the machine and on other load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .geometry import slices_at_scale

BASELINE = "linear"


# ------------------------------------------------------------------------------------- FLOP model

def decoder_plan(config, n_lr_slices: int, z) -> tuple[int, int, int]:
    """(decoder entries, anchor planes, most entries on one anchor) of decoding positions ``z`` in
    one group: the local ensemble decodes a query once on an LR plane or outside the blend band, twice
    inside it; the attention works on a (planes x most entries) grid of slots (``model.entry_slots``)."""
    import torch

    from .model import bracket, ensemble_entries
    _, lo, hi, t = bracket(torch.as_tensor(np.asarray(z), dtype=torch.float32), n_lr_slices)
    _, anchor, _ = ensemble_entries(lo, hi, t, config.blend_band)
    counts = torch.bincount(anchor)
    return len(anchor), int((counts > 0).sum()), int(counts.max())


def flops_breakdown(config, n_lr_slices: int, n_out_slices: int, plane: int, z=None) -> dict[str, float]:
    """FLOPs (multiply + add = 2) of one whole-volume forward pass at positions ``z`` (default: the
    ``n_out_slices`` evenly spaced over the volume), by kind.

    ``conv``: encoder 3x3x3 convolutions per LR voxel; ``linear``: per LR voxel (and one replicated plane
    on each side) [W_K^T q, q . b_K] as one map of the code (its weights folded from W_Q and W_K once per
    pass), per slot W_V, per decoder entry the decoder layers; ``attention``: per slot of an anchor
    plane's LR voxel its query (a blend of 3 planes' [W_K^T q, q . b_K]), its 27 scores and its value sum;
    without attention the blend of 3 planes' codes (Eq. 3). These are all matmuls, which torch's FlopCounterMode counts too. Biases,
    softmax and activations are ignored.
    """
    c = config
    if z is None:
        z = np.linspace(0, n_lr_slices - 1, n_out_slices) if n_out_slices > 1 else np.zeros(n_out_slices)
    entries, anchors, most = decoder_plan(c, n_lr_slices, z) if n_out_slices else (0, 0, 0)
    slots = anchors * most
    conv = 27 * (1 * c.features + c.encoder_blocks * c.convs_per_block * c.features ** 2 + c.features * c.code_length)
    dims_in = [c.code_length + 1] + [c.decoder_width] * (c.decoder_layers - 1)   # code + local z (its two
    dims_in[c.skip_layer] = c.decoder_width + c.code_length + 1                  # zero channels are dropped)
    dims_out = [c.decoder_width] * (c.decoder_layers - 1) + [1]
    decoder = sum(i * o for i, o in zip(dims_in, dims_out, strict=True))
    attention = c.neighbours > 0
    queries = (c.code_length + 1) * c.code_length * (n_lr_slices + 2 + c.code_length / plane)   # + the fold
    linear = (queries if attention and n_out_slices else 0) + \
        decoder * entries + (c.code_length ** 2 * slots if attention else 0)
    per_slot = (2 * 27 * c.code_length + 3 * c.code_length + 3) if attention else 3 * c.code_length
    return {"conv": 2.0 * conv * n_lr_slices * plane, "linear": 2.0 * linear * plane,
            "attention": 2.0 * per_slot * slots * plane}


def flops_per_output_voxel(config, factor: float, n_lr_slices: int = 64) -> float:
    """Model FLOPs per output voxel when upsampling ``n_lr_slices`` slices by ``factor`` in one window
    (no sliding-window overlap): the ideal the bench compares wall time with. Per-pass constants (the
    query weights' fold) are spread over a 512 x 512 plane."""
    n_out = slices_at_scale(n_lr_slices, factor)
    z = np.arange(n_out) / factor
    plane = 512 * 512
    return sum(flops_breakdown(config, n_lr_slices, n_out, plane, z=z).values()) / (n_out * plane)


# -------------------------------------------------------------------------------------- measuring

def _vm_hwm_mb() -> float:
    """This process's peak resident memory so far (MB), from /proc/self/status; NaN where absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def matmul_peak(device: str, size: int | None = None, dtype: str = "float32", repeats: int = 5) -> float:
    """Best measured FLOP/s of a square matmul on ``device`` (the reference for "fraction of peak")."""
    import torch
    dev = torch.device(device)
    size = size or (8192 if dev.type == "cuda" else 2048)
    dt = getattr(torch, dtype)
    a = torch.randn(size, size, device=dev, dtype=dt)
    b = torch.randn(size, size, device=dev, dtype=dt)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def synthetic_volume(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A CT-like float32 volume in HU: air, a noisy soft-tissue ellipse, a bone ring."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1) - 0.5
    r = np.hypot(yy / 0.45, xx / 0.38)
    plane = np.where(r < 1.0, 40.0, -1000.0) + np.where(np.abs(r - 0.93) < 0.05, 900.0, 0.0)
    return (plane[None] + rng.normal(0, 15, (slices, size, size))).astype(np.float32)


def _load_model(spec: str, device):
    """Bundled/given weights if present, else the preset's architecture with random weights (same cost)."""
    from .config import preset
    from .model import CycleINR
    from .weights import WeightsError, load_model
    try:
        return load_model(spec, device), "trained"
    except WeightsError:
        name = {"default": "paper"}.get(spec, spec)
        return CycleINR(preset(name)).to(device).eval(), "random"


def measure(method: str, device: str, size: int, slices: int, factor: float, repeats: int = 1,
            volume: str | None = None) -> dict:
    """Time one upsampling case in this process; returns the numbers of one table row. ``volume``: a
    real CT file instead of the synthetic one (its own spacing; ``factor`` still applies)."""
    from .baselines import interpolate
    spacing = (0.8, 0.8, 5.0)
    vol = synthetic_volume(slices, size)
    if volume:
        from .volume_io import read_volume
        vol, geometry, _ = read_volume(volume)
        vol, spacing = vol.astype(np.float32), geometry.spacing
    small = synthetic_volume(4, min(size, 32), seed=1)
    row = {"method": method, "device": device, "size": vol.shape[-1], "slices": vol.shape[0], "factor": factor}
    if method == BASELINE:
        def call(v):
            return interpolate(v, spacing, factor=factor, method="linear").array
        row["weights"] = "-"
        row["flops_per_voxel"] = 3.0  # two multiplies and an add per output voxel
    else:
        import torch

        from .inference import select_device, upsample
        dev = select_device(device)
        model, row["weights"] = _load_model(method, dev)
        row["flops_per_voxel"] = flops_per_output_voxel(model.config, factor, vol.shape[0])
        row["threads"] = torch.get_num_threads()

        def call(v):
            return upsample(v, spacing, factor=factor, model=model, device=dev).array
    cuda = device.startswith("cuda") and method != BASELINE
    if cuda:
        import torch
        call(vol)  # warm-up at full size: kernel selection and allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        call(small)
    before = _vm_hwm_mb()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        out = call(vol)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    row["seconds"] = best
    row["out_voxels"] = int(out.size)
    row["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else _vm_hwm_mb() - before
    row["memory_kind"] = "cuda alloc" if cuda else "RSS growth"
    return row


# ---------------------------------------------------------------------------------------- running

def _run_case(method: str, device: str, args) -> dict:
    """``measure`` in a fresh interpreter, so that peak-memory readings belong to this case alone."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    case = {"method": method, "device": device, "size": args.size, "slices": args.slices, "factor": args.factor,
            "repeats": args.repeats, "volume": args.volume}
    proc = subprocess.run([sys.executable, "-m", "cycleinr.bench", "--worker", json.dumps(case)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**case, "error": last}
    return json.loads(lines[-1])


def format_table(rows: list[dict], peaks: dict) -> str:
    head = ["device", "method", "weights", "wall s", "Mvox/s", "peak MB", "FLOP/vox", "GFLOP/s", "% of mm peak",
            "bound s", "wall / bound"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['device']} | {r['method']} | error: {r['error']}")
            continue
        rate = r["out_voxels"] / r["seconds"]
        gflops = r["flops_per_voxel"] * rate / 1e9
        peak = peaks.get(r["device"])
        frac = f"{100 * gflops * 1e9 / peak:.1f}" if peak else "-"
        bound = r["flops_per_voxel"] * r["out_voxels"] / peak if peak else None
        lines.append(" | ".join([r["device"], r["method"], r["weights"], f"{r['seconds']:.3g}", f"{rate / 1e6:.3g}",
                                 f"{r['peak_mb']:.0f} ({r['memory_kind']})", f"{r['flops_per_voxel']:.3g}",
                                 f"{gflops:.3g}", frac, f"{bound:.3g}" if bound else "-",
                                 f"{r['seconds'] / bound:.2f}" if bound else "-"]))
    return "\n".join(lines)


def run(args) -> int:
    import torch
    devices = []
    for device in args.device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"bench: note: {device} requested but no CUDA GPU is available; skipped", file=sys.stderr)
            continue
        devices.append(device)
    if not devices:
        print("bench: error: no usable device", file=sys.stderr)
        return 2
    peaks, rows = {}, []
    for device in devices:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        peaks[device] = matmul_peak(device, size=args.matmul_size, dtype=dtype)
        print(f"bench: {device} {dtype} matmul peak {peaks[device] / 1e9:.1f} GFLOP/s", file=sys.stderr)
        for method in [*args.presets, BASELINE] if device == devices[0] else args.presets:
            where = "cpu" if method == BASELINE else device  # interpolation is numpy: CPU only
            shape = args.volume or f"{args.slices}x{args.size}x{args.size}"
            print(f"bench: {where} {method} ({shape}, x{args.factor:g})...",
                  file=sys.stderr)
            rows.append(_run_case(method, where, args))
    shape = f"{args.volume}" if args.volume else f"{args.slices} x {args.size} x {args.size} LR voxels"
    print(f"CycleINR bench: input {shape}, factor {args.factor:g}; FLOPs analytic (no window overlap); "
          "compute bound = FLOPs / the matmul peak measured in this run")
    print(format_table(rows, peaks))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "matmul_peak": peaks}, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="speed, memory and FLOP efficiency of upsample() vs linear interpolation",
                              description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--presets", nargs="*", default=["default", "fast"],
                   help="models to time: default, fast or weights paths (random weights if not installed)")
    p.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda (default cpu)")
    p.add_argument("--size", type=int, default=256, help="in-plane size of the synthetic LR volume (default 256)")
    p.add_argument("--slices", type=int, default=16, help="LR slices (default 16)")
    p.add_argument("--factor", type=float, default=5.0, help="upsampling factor (default 5)")
    p.add_argument("--volume", metavar="PATH", help="time a real volume (e.g. a 512x512 5 mm CT) instead of "
                   "the synthetic one")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case; the best is reported")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the square matmul that measures the peak (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    p.set_defaults(func=run)
    return p


def _worker(argv: list[str]) -> int:
    from .cli import keep_freed_memory

    keep_freed_memory()                    # as `cycleinr upsample` runs (each case is its own process)
    case = json.loads(argv[argv.index("--worker") + 1])
    print(json.dumps(measure(**case)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv))
