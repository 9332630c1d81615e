"""What ``noise="match"`` does on real CT: noise dip ratio (generated/acquired sigma), SNLI and PSNR cost.

With ground truth (a thin-slice volume, thick slices simulated by interval sampling):
    python Testing/benchmarks/noise_match.py runs/data/head_test_crop.nrrd --models fast --scales 2 3 5
On a thick CT's in-plane check (its y axis as the slice axis, thin truth at the pixel spacing):
    python Testing/benchmarks/noise_match.py ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd --transpose --crop 192
As another scanner might give it (``--blur 1.0``: a soft kernel; ``--extra-noise 40``: low dose):
    python Testing/benchmarks/noise_match.py runs/data/head_test_crop.nrrd --blur 1.0
On a real thick CT (no ground truth; dip ratio and SNLI of the output vs the input's SNLI):
    python Testing/benchmarks/noise_match.py Resources/SampleData/CycleINRSampleChestCT5mm.nrrd --thick --scales 2 3 5

With truth, each scale starts with the SNLI that ideal noise-level matching would give (HR's own sigma at
the acquired slices, linear in between). Linear interpolation is the next row; ``--models`` takes names or
weights files (e.g. an older model kept under runs/ for a before/after table). PSNR is over the generated
slices only.
"""

import argparse
from collections import defaultdict

import numpy as np
from adapt_gain import shifted
from blend_band import central_crop

from cycleinr.baselines import interpolate
from cycleinr.degrade import simulate_thick
from cycleinr.evaluate import new_slice_mask
from cycleinr.geometry import slices_at_scale
from cycleinr.inference import upsample
from cycleinr.metrics import psnr, snli
from cycleinr.volume_io import read_volume


def outputs(lr, spacing, scale, models, ensemble=1, device="cpu"):
    """(method, noise mode, output) for linear interpolation, then each model without and with matching."""
    yield "linear", "none", interpolate(lr, spacing, factor=scale, method="linear").array
    for model in models:
        name = model if ensemble == 1 else f"{model} ensemble {ensemble}"
        for noise in ("none", "match"):
            yield name, noise, upsample(lr, spacing, factor=scale, model=model, device=device, noise=noise,
                                        ensemble=ensemble).array


def level_matched_snli(hr_sigmas: np.ndarray, scale: float) -> float:
    """SNLI that ideal level matching would give: HR's own noise sigmas at the acquired slices, linear in
    between (what ``noise="match"`` aims at; a generated slice's own scatter about that level is not
    predictable). Printed as a row, so a scale's SNLI target can be read against it."""
    sigmas = np.asarray(hr_sigmas)
    acquired = np.flatnonzero(~new_slice_mask(len(sigmas), scale))
    return float(np.std(np.interp(np.arange(len(sigmas)), acquired, sigmas[acquired])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--models", nargs="+", default=["fast"])
    ap.add_argument("--scales", type=float, nargs="+", default=[2, 3, 5])
    ap.add_argument("--thick", action="store_true", help="the volume is a real thick-slice scan (no truth)")
    ap.add_argument("--crop", type=int, default=0, help="central in-plane crop (0: whole plane)")
    ap.add_argument("--blur", type=float, default=0.0, help="blur the volume isotropically first (Gaussian "
                    "sigma, mm): a softer kernel than the training CT's")
    ap.add_argument("--extra-noise", type=float, default=0.0, help="add white noise first (sigma, HU)")
    ap.add_argument("--transpose", action="store_true", help="in-plane check of a thick scan: its y axis "
                    "(thin truth at the pixel spacing) becomes the slice axis")
    ap.add_argument("--ensemble", type=int, default=1, help="self-ensemble passes of the models (1, 2, 4, 8)")
    ap.add_argument("--all-phases", action="store_true", help="with truth: repeat each scale with the first "
                    "thick slice at every thin slice the thick spacing spans (truth cut to match), then print the "
                    "mean distance of each method's SNLI to HR's over the phases")
    ap.add_argument("--device", default="cpu", help="where the models run (cuda: bf16, so not the CPU's figures)")
    args = ap.parse_args()
    volume, geometry, _ = read_volume(args.volume)
    sx, sy, sz = geometry.spacing
    volume = shifted(volume.astype(np.float32), (sz, sy, sx), args.blur, args.extra_noise, seed=0)
    volume = central_crop(volume, args.crop)
    if args.transpose:
        volume = np.ascontiguousarray(np.moveaxis(volume, 1, 0))
    phase_count = (lambda s: int(np.ceil(s))) if args.all_phases and not args.thick else (lambda s: 1)
    print("scale | phase | method | noise | dip ratio | SNLI out | SNLI in/HR | PSNR generated (dB)")
    for s in args.scales:
        distances = defaultdict(list)                               # |SNLI - HR's| per method, over phases
        for phase in range(phase_count(s)):
            for method, distance in rows(volume[phase:], geometry.spacing, s, phase, args):
                distances[method].append(distance)
        if phase_count(s) > 1:
            for method, values in distances.items():
                print(f"x{s:g} | mean over {len(values)} phases | {method} | |SNLI - HR| = {np.mean(values):.3f} "
                      f"(max {np.max(values):.3f})")


def rows(volume, thick_spacing, s, phase, args):
    """Print one scale's rows (one phase); yield (method, |SNLI - HR's|) where there is truth."""
    if args.thick:
        lr, spacing, ref = volume, thick_spacing, None
    else:
        lr, _ = simulate_thick(volume, s)
        spacing, ref = (1.0, 1.0, float(s)), volume
    count = slices_at_scale(len(lr), s)                         # output slices: first to last input slice
    reference = snli(lr if ref is None else ref[:count])          # the input's, or HR's over the output grid
    if ref is not None:
        ideal = level_matched_snli(reference.sigmas, s)
        print(f"x{s:g} | {phase} | HR level at acquired slices | - | - | {ideal:.3f} | {reference.value:.3f} | -")
        yield "HR level at acquired slices", abs(ideal - reference.value)
    for name, noise, out in outputs(lr, spacing, s, args.models, args.ensemble, args.device):
        new = new_slice_mask(len(out), s)
        result = snli(out)
        ratio = result.sigmas[new].mean() / result.sigmas[~new].mean()
        score = "-" if ref is None else f"{psnr(ref[:count][new], out[new]):.2f}"
        print(f"x{s:g} | {phase} | {name} | {noise} | {ratio:.3f} | {result.value:.3f} | {reference.value:.3f} | "
              f"{score}", flush=True)
        if ref is not None:
            yield f"{name} {noise}", abs(result.value - reference.value)


if __name__ == "__main__":
    main()
