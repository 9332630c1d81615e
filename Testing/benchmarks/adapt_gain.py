"""What per-scan adaptation (``--adapt SECONDS``) buys: PSNR and noise-dip ratio, adapted vs not.

Thick slices are simulated from a thin-slice volume (the held-out head slab by default); the model is
adapted on the *thick* input only (its in-plane axes, never the thin truth), then both the original and
the adapted model upsample it back, scored against the thin slices the output lands on. The dip ratio is
the mean noise sigma of generated slices over that of acquired ones (``noise_dips.py``; HR's own ~1).

    python Testing/benchmarks/split_data.py /work/shared/data runs/data
    python Testing/benchmarks/adapt_gain.py runs/data/head_test_crop.nrrd --scales 3 5 --budgets 15 30 60 120 300 --threads 2

A scan unlike the training data (the models saw only the provided head and chest CT): ``--extra-noise HU``
adds isotropic white noise (a low-dose scan) and ``--blur MM`` an isotropic Gaussian blur (a soft kernel) to
the thin volume before thick slices are simulated, so truth and input carry the same shift:

    python Testing/benchmarks/adapt_gain.py runs/data/head_test_crop.nrrd --extra-noise 40 --budgets 60 120

``--oracle`` adds, per budget, an upper bound: the same recipe (``cycleinr.adapt``'s trained parameters,
rate, schedule, step cap, batch, patch) fitted to the thin *truth* along K itself, i.e. the very task and
slices it is then scored on: what this recipe can learn in that time from the best pairs there are (a
bound for the recipe, not for every training method). ``--oracle-whole RATE [RATE ...]`` adds another
recipe's bound: the whole network (encoder too) fitted to the truth at each rate, with no step cap.
``--no-adapt`` leaves out the product's own adaptation when only these bounds are wanted.

``--internal S`` adds another: the same recipe fitted to the *thick input* along K as its own truth at
scale S (its slices S times further apart as input): the inference geometry, at a coarser physical scale.

``--trained all``, ``--no-anchor``, ``--lr RATE`` and ``--steps N`` run the product's adaptation with
another recipe (the whole network instead of attention + decoder, no anchor volume, another rate or
step cap), to measure what ``cycleinr.adapt``'s choices cost or buy on a given scan. A scan a model never
saw: ``--model`` a head-only (``train_bundled.py --chest ''``) model with the chest's ``--transpose``, or a
chest-only (``train_bundled.py --no-head``) model on the head slab.

``--transpose`` evaluates a thick-slice scan on its in-plane check instead: the array's y axis becomes
the slice axis (thin truth at the in-plane pixel spacing), so the adaptation can only use x.
"""

import argparse
import copy
import time

import numpy as np
import torch
from noise_dips import dip_ratio
from scipy import ndimage

from cycleinr import adapt
from cycleinr.baselines import interpolate
from cycleinr.data import Volume, sample_batch
from cycleinr.degrade import simulate_thick
from cycleinr.geometry import slices_at_scale, thin_slices_touched
from cycleinr.inference import upsample
from cycleinr.metrics import psnr, snli
from cycleinr.train import losses
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model


def score(hr, out, scale) -> tuple[float, float]:
    """PSNR against the thin slices the output lands on, and the noise-dip ratio of the output."""
    return psnr(hr[:len(out)], out), dip_ratio(snli(out).sigmas, scale)


def shifted(hr, spacing_zyx, blur_mm: float, noise_hu: float, seed: int) -> np.ndarray:
    """The thin volume as another scanner might give it: blurred isotropically, then with white noise."""
    if blur_mm > 0:
        hr = ndimage.gaussian_filter(hr, [blur_mm / s for s in spacing_zyx])
    if noise_hu > 0:
        hr = hr + np.random.default_rng(seed + 1).normal(0, noise_hu, hr.shape)
    return hr.astype(np.float32)


def fit_along_k(model, thin, scale, seconds, degradation, device, seed, whole_rate=0.0) -> tuple:
    """``adapt``'s recipe trained along K on ``thin`` at ``scale``: the thin truth itself (the oracle), or
    the thick input as its own truth at a coarser scale (``--internal``). ``whole_rate`` > 0: another
    recipe, the whole network (encoder too) at that rate with no step cap."""
    net = copy.deepcopy(model).to(device)
    rate, cap = (whole_rate, float("inf")) if whole_rate else (adapt.LEARNING_RATE, adapt.STEPS)
    opt = torch.optim.Adam(net.parameters() if whole_rate else adapt.trainable(net), lr=rate)
    cfg, batch = net.config, adapt.BATCH.get(torch.device(device).type, adapt.BATCH["cuda"])
    lr_slices = next(k for k in adapt.LR_SLICES if thin_slices_touched(k, scale) <= len(thin))
    draw = dict(batch_size=batch, lr_slices=lr_slices, patch=adapt.PATCH, scale_range=(scale, scale),
                mode=degradation, noise_hu=0.0, offset=cfg.intensity_offset, scale_hu=cfg.intensity_scale)
    volumes, norm = [Volume(thin, "along K")], adapt._training_loss(model)
    rng, steps, start = np.random.default_rng(seed), 0, time.perf_counter()
    net.train()
    while steps < cap and time.perf_counter() - start < seconds:
        done = max((time.perf_counter() - start) / seconds, steps / cap)
        for group in opt.param_groups:
            group["lr"] = adapt.annealed(rate, done)
        loss = losses(net, sample_batch(rng, volumes, augment=True, **draw), 0.0, device, norm)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps, time.perf_counter() - start


def adapted_upsample(lr, spacing, run, budget, degradation, args):
    """``upsample(..., adapt=budget)``, or with ``--trained/--no-anchor/--lr/--steps`` the same two steps
    (``adapt.adapt_model``, then upsampling with the copy) with that recipe."""
    if not (args.trained == "all" or args.no_anchor or args.lr or args.steps):
        return upsample(lr, spacing, **run, adapt=budget, degradation=degradation)
    saved = adapt.TRAINED, adapt.ANCHOR_CROP
    try:
        if args.trained == "all":
            adapt.TRAINED = ("",)                           # every parameter name starts with ""
        if args.no_anchor:
            adapt.ANCHOR_CROP = (0, 0, 0)                   # no crop holds a patch: no anchor volume
        net, report = adapt.adapt_model(run["model"], lr, spacing, budget, target_spacing=run["target_spacing"],
                                        degradation=degradation, seed=run["seed"], device=run["device"],
                                        max_iterations=args.steps or None,
                                        learning_rate=args.lr or adapt.LEARNING_RATE)
    finally:
        adapt.TRAINED, adapt.ANCHOR_CROP = saved
    result = upsample(lr, spacing, **{**run, "model": net})
    result.adaptation = report
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume", help="thin-slice volume (ground truth)")
    ap.add_argument("--scales", type=float, nargs="+", default=[3, 5])
    ap.add_argument("--budgets", type=float, nargs="+", default=[30, 120], help="adaptation seconds")
    ap.add_argument("--model", default="fast")
    ap.add_argument("--degradation", default="interval", choices=["interval", "slab"])
    ap.add_argument("--transpose", action="store_true", help="use the array's y axis as the slice axis")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-noise", type=float, default=0.0, help="isotropic white noise sigma added (HU)")
    ap.add_argument("--blur", type=float, default=0.0, help="isotropic Gaussian blur sigma applied (mm)")
    ap.add_argument("--oracle", action="store_true", help="also fit the thin truth itself (an upper bound)")
    ap.add_argument("--oracle-whole", type=float, nargs="+", default=[], metavar="RATE",
                    help="also fit the thin truth with the whole network at each RATE, no step cap")
    ap.add_argument("--no-adapt", action="store_true", help="skip the product's adaptation (variants only)")
    ap.add_argument("--internal", type=float, default=0.0,
                    help="also fit the thick input along K as its own truth at this scale (e.g. 2)")
    ap.add_argument("--trained", default="decoder", choices=["decoder", "all"],
                    help="parameters adaptation trains: attention + decoder (the product's) or all")
    ap.add_argument("--no-anchor", action="store_true", help="adapt without the anchor volume")
    ap.add_argument("--lr", type=float, default=0.0, help="adaptation learning rate (0: the product's)")
    ap.add_argument("--steps", type=int, default=0, help="adaptation step cap (0: the product's)")
    ap.add_argument("--noise", default="none", choices=["none", "match"],
                    help="upsample's noise option (default none: the network's own output, whose dip ratio "
                         "adaptation may change; match restores the noise level either way)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hr, geometry, _ = read_volume(args.volume)
    hr = hr.astype(np.float32)
    sx, sy, sz = geometry.spacing
    if args.transpose:
        hr, (sy, sz) = np.ascontiguousarray(np.moveaxis(hr, 1, 0)), (sz, sy)
    hr = shifted(hr, (sz, sy, sx), args.blur, args.extra_noise, args.seed)
    base = load_model(args.model, args.device)
    print(f"{args.volume} {hr.shape} spacing x {sx:.3f} y {sy:.3f} z {sz:.3f} mm, model {args.model}, "
          f"{args.degradation}, blur {args.blur:g} mm, extra noise {args.extra_noise:g} HU, torch threads {torch.get_num_threads()}, "
          f"adaptation: trained {args.trained}, anchor {not args.no_anchor}, lr {args.lr or adapt.LEARNING_RATE:g}, "
          f"steps {args.steps or adapt.STEPS}")
    print("scale | adapt s | iterations | used s | loss on fixed patches before -> after | PSNR dB | gain dB | dip ratio")
    for s in args.scales:
        lr, _ = simulate_thick(hr, s, args.degradation)
        spacing = (sx, sy, sz * s)

        run = dict(target_spacing=sz, model=base, device=args.device, noise=args.noise, seed=args.seed)
        p0, d0 = score(hr, upsample(lr, spacing, **run).array, s)
        hr_dip = dip_ratio(snli(hr[:slices_at_scale(len(lr), s)]).sigmas, s)
        p_lin, d_lin = score(hr, interpolate(lr, spacing, target_spacing=sz).array, s)
        print(f"x{s:g} | 0 | - | - | - | {p0:.2f} | - | {d0:.3f}  (HR's own dip ratio {hr_dip:.3f}; linear "
              f"{p_lin:.2f} dB, dip {d_lin:.3f})", flush=True)
        for budget in args.budgets:
            if not args.no_adapt:
                result = adapted_upsample(lr, spacing, run, budget, args.degradation, args)
                rep = result.adaptation
                p, d = score(hr, result.array, s)
                print(f"x{s:g} | {budget:g} | {rep['iterations']} | {rep['seconds']:.1f} | {rep['loss_before']:.3e} -> "
                      f"{rep['loss_after']:.3e} ({rep['kept'].split()[0]}) | {p:.2f} | {p - p0:+.2f} | {d:.3f}", flush=True)
            variants = [("oracle", hr, s, "fits the thin truth", 0.0)] if args.oracle else []
            variants += [(f"oracle whole {r:g}", hr, s, f"whole network at {r:g}", r) for r in args.oracle_whole]
            if args.internal:
                variants.append(("internal", lr, args.internal, f"fits the thick input at x{args.internal:g}", 0.0))
            for name, thin, scale, what, whole_rate in variants:
                net, steps, used = fit_along_k(base, thin, scale, budget, args.degradation, args.device, args.seed,
                                               whole_rate)
                p, d = score(hr, upsample(lr, spacing, **{**run, "model": net}).array, s)
                print(f"x{s:g} | {budget:g} {name} | {steps} | {used:.1f} | ({what}) | {p:.2f} | "
                      f"{p - p0:+.2f} | {d:.3f}", flush=True)


if __name__ == "__main__":
    main()
