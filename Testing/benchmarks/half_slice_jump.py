"""How much the output jumps at half-slice positions k + 1/2 (where the nearest LR plane switches), on
real CT: decode just below and just above every k + 1/2 and print mean / p99 / max of the difference in HU,
for the model's own blend band and for band 1e-6 (nearest-plane decoding, the form before issue 10).

    python Testing/benchmarks/half_slice_jump.py Testing/data/head_heldout_slab.nrrd --every 3 --models default fast
"""

import argparse

import numpy as np
import torch
from blend_band import with_band

from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--every", type=int, default=3, help="take every n-th slice as the thick input")
    ap.add_argument("--models", nargs="+", default=["default", "fast"])
    args = ap.parse_args()
    hr, _, _ = read_volume(args.volume)
    for name in args.models:
        model = load_model(name)
        lr = torch.from_numpy(hr[::args.every].astype(np.float32) / model.config.intensity_scale)[None, None]
        halves = torch.arange(lr.shape[2] - 1) + 0.5
        for band in (1e-6, model.config.blend_band):
            probe = with_band(model, band)
            with torch.no_grad():
                jump = (probe(lr, halves - 1e-6)[0] - probe(lr, halves + 1e-6)[0]).abs()
            jump = jump.numpy() * model.config.intensity_scale
            print(f"{name} band {band:g}: mean {jump.mean():.3f} HU, p99 {np.percentile(jump, 99):.2f}, "
                  f"max {jump.max():.1f}")


if __name__ == "__main__":
    main()
