"""Training-step speed: iterations/s (and peak memory) of one optimizer step of the real training loss
(fit + cycle) on synthetic CT-like patches, for a preset and batch shape. Uses only the public training
API, so the same script times an older checkout (PYTHONPATH=<old>/CycleINRSR) for before/after figures.

    python Testing/benchmarks/train_step.py --preset paper --batch 2 --patch 24 --slices 6 --iterations 10
    python Testing/benchmarks/train_step.py --device cuda --batch 16 --patch 48 --slices 6 --amp
"""

import argparse
import time

import numpy as np
import torch

from cycleinr.config import preset
from cycleinr.data import Volume, sample_batch
from cycleinr.model import CycleINR
from cycleinr.train import losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, default=24)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--scale", type=float, default=4.0, help="fixed scale, so every step does the same work")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (autocast), as train's precision=bfloat16")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (80, 96, 96)], indexing="ij")
    vol = np.where(np.sqrt(z ** 2 + y ** 2 + x ** 2) < 0.9, 40.0, -1000.0) + rng.normal(0, 15, z.shape)
    volumes = [Volume(vol.astype(np.float32), "synthetic", (0,))]
    model = CycleINR(preset(args.preset)).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    # as train(precision="bfloat16") does through inference.autocast_for, which older checkouts lack
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.iterations + 2):                          # two warm-up steps
        batch = sample_batch(rng, volumes, args.batch, args.slices, args.patch, (args.scale, args.scale))
        start = time.perf_counter()
        with amp:
            total = losses(model, batch, 1.0, dev, "l2")["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.type == "cuda" else "-"
    print(f"{args.preset} on {dev} ({torch.get_num_threads()} threads), batch {args.batch}, {args.patch}^2, "
          f"{args.slices} thick slices, x{args.scale:g}: {1 / np.median(times):.3f} it/s "
          f"(median of {len(times)}), peak GPU memory {peak}")


if __name__ == "__main__":
    main()
