"""Choose a model's local-ensemble blend band on held-out CT: PSNR gain over linear interpolation on the
generated slices, and the noise dip ratio, for each band (0.5 = LIIF's linear weights; small = nearest
plane except near mid-cell). The band changes decoding only, not the weights.

    python Testing/benchmarks/blend_band.py runs/data/head_test_crop.nrrd --model fast --bands 0.5 0.25 0.1
"""

import argparse
import dataclasses
import time

import numpy as np

from cycleinr.baselines import interpolate
from cycleinr.degrade import simulate_thick
from cycleinr.evaluate import new_slice_mask
from cycleinr.inference import upsample
from cycleinr.metrics import psnr, snli
from cycleinr.model import CycleINR
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model


def with_band(model: CycleINR, band: float) -> CycleINR:
    """The same weights decoded with another blend band."""
    copy = CycleINR(dataclasses.replace(model.config, blend_band=band))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def central_crop(volume: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` in-plane part of a (z, y, x) volume (0: all of it)."""
    if not size:
        return volume
    y0, x0 = (volume.shape[1] - size) // 2, (volume.shape[2] - size) // 2
    return volume[:, y0:y0 + size, x0:x0 + size]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--model", default="fast")
    ap.add_argument("--bands", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    ap.add_argument("--scales", type=float, nargs="+", default=[2, 3, 5])
    ap.add_argument("--crop", type=int, default=0, help="central in-plane crop (0: whole plane)")
    args = ap.parse_args()
    hr, _, _ = read_volume(args.volume)
    hr = central_crop(hr.astype(np.float32), args.crop)
    base = load_model(args.model)
    print("scale | band | PSNR gain vs linear (generated slices, dB) | dip ratio | SNLI | seconds")
    for s in args.scales:
        lr, _ = simulate_thick(hr, s)
        lin = interpolate(lr, (1, 1, s), factor=s, method="linear").array
        ref = hr[:len(lin)]
        new = new_slice_mask(len(ref), s)
        for band in args.bands:
            start = time.perf_counter()
            out = upsample(lr, (1, 1, s), factor=s, model=with_band(base, band), device="cpu").array
            seconds = time.perf_counter() - start
            gain = psnr(ref[new], out[new]) - psnr(ref[new], lin[new])
            sig = snli(out)
            ratio = sig.sigmas[new].mean() / sig.sigmas[~new].mean()
            print(f"x{s:g} | {band:g} | {gain:+.3f} | {ratio:.3f} | {sig.value:.3f} | {seconds:.1f}", flush=True)


if __name__ == "__main__":
    main()
