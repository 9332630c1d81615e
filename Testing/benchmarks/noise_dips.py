"""How much quieter generated slices are than acquired ones: mean noise sigma of generated slices over
that of slices on thick-slice positions (HR's own ratio ~1; linear interpolation's is well below 1).

SNLI (the std of all per-slice sigmas) also carries the anatomy's trend along z; this ratio isolates the
interpolation dip that the cycle loss is meant to remove.

    python Testing/benchmarks/noise_dips.py runs/data/head_test_crop.nrrd --scales 2 5 --models default fast
"""

import argparse

import numpy as np

from cycleinr.baselines import interpolate
from cycleinr.degrade import simulate_thick
from cycleinr.evaluate import new_slice_mask
from cycleinr.inference import upsample
from cycleinr.metrics import snli
from cycleinr.volume_io import read_volume


def dip_ratio(sigma: np.ndarray, scale: float) -> float:
    """Mean per-slice noise sigma of generated slices over that of slices on thick-slice positions."""
    generated = new_slice_mask(len(sigma), scale)
    return float(sigma[generated].mean() / sigma[~generated].mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--scales", type=float, nargs="+", default=[2, 3, 5])
    ap.add_argument("--models", nargs="*", default=["default", "fast"])
    args = ap.parse_args()
    hr, _, _ = read_volume(args.volume)
    hr = hr.astype(np.float32)
    print("scale | method | generated/acquired sigma | SNLI (HU)")
    for s in args.scales:
        lr, _ = simulate_thick(hr, s)
        outputs = {m: interpolate(lr, (1, 1, s), factor=s, method=m).array for m in ("linear", "cubic")}
        outputs.update({m: upsample(lr, (1, 1, s), factor=s, model=m, device="cpu").array for m in args.models})
        outputs = {"HR": hr[:len(outputs["linear"])], **outputs}     # the HR slices the outputs land on
        for name, volume in outputs.items():
            result = snli(volume)
            print(f"x{s:g} | {name} | {dip_ratio(result.sigmas, s):.3f} | {result.value:.3f}", flush=True)


if __name__ == "__main__":
    main()
