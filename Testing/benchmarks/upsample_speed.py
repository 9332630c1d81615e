"""Output voxels per second of ``upsample()`` for one model on a synthetic or real volume, in this
process. Uses only the public API, so the same script times an older checkout for before/after figures
(PYTHONPATH=<old checkout>/CycleINRSR python Testing/benchmarks/upsample_speed.py ...).

    python Testing/benchmarks/upsample_speed.py --model default --slices 8 --size 256 --factor 5
    python Testing/benchmarks/upsample_speed.py --model fast --volume ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd --factor 5
    python Testing/benchmarks/upsample_speed.py --model default --precision float32 bfloat16    # and how far apart

With several ``--precision`` values each is timed and the outputs' differences from the first are printed.
"""

import argparse
import inspect
import time

import numpy as np
import torch

from cycleinr.bench import synthetic_volume
from cycleinr.inference import upsample
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fast")
    ap.add_argument("--volume")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", default=["auto"], help="upsample's precision option(s)")
    args = ap.parse_args()
    if args.volume:
        vol, geometry, _ = read_volume(args.volume)
        vol, spacing = vol.astype(np.float32), geometry.spacing
    else:
        vol, spacing = synthetic_volume(args.slices, args.size), (0.8, 0.8, 5.0)
    model = load_model(args.model, args.device)
    first = None
    options = inspect.signature(upsample).parameters        # older checkouts lack some options
    for precision in args.precision:
        run = dict(factor=args.factor, model=model, device=args.device)
        if "noise" in options:                              # the network's own output is timed and compared
            run["noise"] = "none"
        if precision != "auto":
            run["precision"] = precision
        upsample(vol[:3, :32, :32], spacing, **run)                                             # warm-up
        start = time.perf_counter()
        out = upsample(vol, spacing, **run).array
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"{args.model} on {args.device} ({torch.get_num_threads()} threads, {precision}): {vol.shape} "
              f"x{args.factor:g} -> {out.shape}, {seconds:.1f} s, {out.size / seconds / 1e6:.3f} M output voxels/s")
        if first is None:
            first = out
        else:
            diff = np.abs(out - first)
            print(f"  vs {args.precision[0]}: mean {diff.mean():.3f}, p99 {np.percentile(diff, 99):.3f}, "
                  f"max {diff.max():.2f} (intensity units)")


if __name__ == "__main__":
    main()
