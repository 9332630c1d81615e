"""Where ``upsample()`` spends its time on a CPU: torch's profiler over one run, top operators by self time.

    python Testing/benchmarks/profile_upsample.py ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd \\
        --slices 0 16 --rows 200 312 --model fast --factor 5

Read with the model code: ``mkldnn_convolution`` (``slow_conv3d`` if ATen's oneDNN threshold is missed) is
the encoder, ``addmm``/``addcmul``/``clamp_min`` the decoder MLP, ``bmm``/``_softmax``/``index_select`` and
most ``copy_`` the attention's 27-code blocks. A benchmark, not a test: shares depend on the machine.
"""

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from cycleinr.inference import upsample
from cycleinr.volume_io import read_volume


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--slices", type=int, nargs=2, default=None, metavar=("FIRST", "STOP"))
    ap.add_argument("--rows", type=int, nargs=2, default=None, metavar=("FIRST", "STOP"))
    ap.add_argument("--model", default="fast")
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--noise", default="none", choices=["none", "match"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    volume, geometry, _ = read_volume(args.volume)
    z = slice(*args.slices) if args.slices else slice(None)
    y = slice(*args.rows) if args.rows else slice(None)
    volume = np.ascontiguousarray(volume[z, y])
    run = dict(factor=args.factor, model=args.model, device="cpu", noise=args.noise)
    upsample(volume[:3, :64, :64], geometry.spacing, **run)             # warm-up: weights, oneDNN primitives
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        out = upsample(volume, geometry.spacing, **run).array
        seconds = time.perf_counter() - start
    print(f"{args.volume} {volume.shape} -> {out.shape}, model {args.model}, x{args.factor:g}, "
          f"{args.threads} threads: {seconds:.1f} s, {out.size / seconds / 1e6:.3f} M voxels/s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
