"""How much a model changes the acquired slices, and what restoring them would buy.

With interval sampling, an output slice that lies on an input slice has the input slice as its truth, yet
the network (linear residual + decoder correction) changes it. This prints, per scale and model: the mean
and p99 |output - input| on acquired slices, and the PSNR of generated slices as decoded and after a
continuous data-consistency correction (subtracting the error at the two bracketing acquired slices,
interpolated linearly, so the output equals the input on acquired slices and stays continuous in z).

    python Testing/benchmarks/acquired_slices.py runs/data/head_test_crop.nrrd --models fast default
"""

import argparse

import numpy as np

from cycleinr.baselines import interpolate
from cycleinr.degrade import simulate_thick
from cycleinr.inference import upsample
from cycleinr.metrics import psnr
from cycleinr.noise import generated_mask
from cycleinr.volume_io import read_volume


def corrected(out: np.ndarray, positions: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """``out`` minus its error on acquired slices, linearly interpolated between them."""
    acquired = ~generated_mask(positions)
    planes = np.round(positions[acquired]).astype(int)
    error = np.zeros_like(lr)
    error[planes] = out[acquired] - lr[planes]
    lo = np.minimum(np.floor(positions).astype(int), len(lr) - 2)
    t = (positions - lo)[:, None, None]
    return out - (error[lo] * (1 - t) + error[lo + 1] * t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume", help="thin-slice volume (ground truth)")
    ap.add_argument("--models", nargs="+", default=["fast", "default"])
    ap.add_argument("--scales", type=float, nargs="+", default=[2, 3, 5])
    args = ap.parse_args()
    hr = read_volume(args.volume)[0].astype(np.float32)
    print("scale | model | acquired |out-in| mean / p99 HU | PSNR generated: linear / model / corrected (dB)")
    for s in args.scales:
        lr, _ = simulate_thick(hr, s)
        spacing = (1.0, 1.0, float(s))
        linear = interpolate(lr, spacing, factor=s, method="linear").array
        for model in args.models:
            result = upsample(lr, spacing, factor=s, model=model, device="cpu", noise="none")
            out, positions = result.array, result.positions
            acquired = ~generated_mask(positions)
            change = np.abs(out[acquired] - lr[np.round(positions[acquired]).astype(int)])
            ref, new = hr[:len(out)], ~acquired
            print(f"x{s:g} | {model} | {change.mean():.2f} / {np.percentile(change, 99):.1f} | "
                  f"{psnr(ref[new], linear[new]):.2f} / {psnr(ref[new], out[new]):.2f} / "
                  f"{psnr(ref[new], corrected(out, positions, lr)[new]):.2f}", flush=True)


if __name__ == "__main__":
    main()
