"""Train a bundled model on the provided real CT split (runs/data from split_data.py), on the CPU or
(recipe ``gpu``, ``--device cuda``: issue 12, run by Testing/benchmarks/train_gpu.sh) on a GPU.

    python Testing/benchmarks/train_bundled.py paper runs/models/cycleinr_paper.safetensors --minutes 70
    python Testing/benchmarks/train_bundled.py paper runs/models/cycleinr_paper.safetensors --minutes 85 \
        --resume runs/models/cycleinr_paper.ckpt.safetensors --halve-every 75      # continue, slower decay
    python Testing/benchmarks/train_bundled.py fast runs/models/fast_tuned.safetensors --minutes 25 \
        --init Resources/Models/cycleinr_fast.safetensors --lr 2.5e-4 --blend-band 0.25   # fine-tune a bundled one

Head CT training slab in every orientation (slices 0-75; in-plane axes as extra slice axes) plus the
5 mm chest CT's in-plane axes only (``--chest ''`` leaves the chest out: a head-only model, for which the
chest is a scanner never seen; ``--no-head`` leaves the head out, for which it is one). Scales 2.0-6.0,
cycle loss and local attention on; degradation and loss margin are TrainSettings' defaults (noise-matched interval sampling, loss on the patch core since
issue 11; the models bundled before it used plain interval sampling and no margin). The learning rate is higher than the paper's 1e-4 and the loss is L2, not L1, because a CPU
run has an hour, not 3000 epochs: L1's gradient is the same for every voxel, so the noise of flat regions
drowns the edges that linear interpolation gets wrong, and L1 runs stayed at linear interpolation.
"""

import argparse
import json
import signal
import sys

import torch

from cycleinr.data import load_volumes
from cycleinr.inference import select_device
from cycleinr.train import TRAIN_PRECISIONS, TrainSettings, train

RECIPES = {
    "paper": dict(preset="paper", patch=24, batch_size=2, lr_slices=6, learning_rate=3e-4,
                  iterations_per_epoch=10, halve_every=40, loss="l2"),
    "fast": dict(preset="fast", patch=32, batch_size=4, lr_slices=6, learning_rate=1e-3,
                 iterations_per_epoch=20, halve_every=40, loss="l2"),
    # the paper preset sized for one GPU (issue 12's H100 probe: batch 16, 48x48, L2, bf16), with the bundled
    # default model's z context (10 thick slices: its stage 4 moved x5) and blend band, so --init can fine-tune it
    "gpu": dict(preset="paper", patch=48, batch_size=16, lr_slices=10, learning_rate=3e-4,
                iterations_per_epoch=50, halve_every=40, loss="l2", precision="bfloat16",
                model_overrides={"blend_band": 0.25}),
}


ABLATIONS = {                   # the paper's Table 3 rows: (model overrides, cycle-loss weight)
    "inr": ({"neighbours": 0}, 0.0),
    "inr_lam": ({}, 0.0),
    "inr_ccl": ({"neighbours": 0}, 1.0),
    "inr_lam_ccl": ({}, 1.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", choices=RECIPES)
    ap.add_argument("output")
    ap.add_argument("--data", default="runs/data")
    ap.add_argument("--chest", default="../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd",
                    help="chest CT whose in-plane axes are trained on; '' leaves it out (a head-only model, for "
                    "which the chest is a scanner never seen)")
    ap.add_argument("--no-head", action="store_true",
                    help="leave the head out: a chest-only model, for which the head is a scanner never seen")
    ap.add_argument("--head-axes", default="zyx",
                    help="head axes used as slice axes (default zyx; yx: its in-plane axes only, so every patch "
                    "has the 1.5 mm z in-plane, as every chest patch has its 5 mm z)")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--epochs", type=int, default=100000, help="stop after this many epochs (or --minutes)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resume")
    ap.add_argument("--init", help="fine-tune: start from these weights (same architecture), new optimizer")
    ap.add_argument("--lr", type=float, help="learning rate (overrides the recipe)")
    ap.add_argument("--blend-band", type=float, help="decoding blend band to train with (model override)")
    ap.add_argument("--halve-every", type=int, help="epochs per learning-rate halving (overrides the recipe; "
                    "the schedule counts from epoch 1, also on resume)")
    ap.add_argument("--batch", type=int, help="batch size (overrides the recipe)")
    ap.add_argument("--patch", type=int, help="in-plane patch size (overrides the recipe)")
    ap.add_argument("--iterations", type=int, help="iterations per epoch (overrides the recipe)")
    ap.add_argument("--lr-slices", type=int, help="thick slices per training patch (overrides the recipe; "
                    "more give the codes more z context)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the gpu recipe's)")
    ap.add_argument("--precision", choices=TRAIN_PRECISIONS,
                    help="bfloat16: mixed precision (2.5x faster on this CPU's AMX units for the paper preset)")
    ap.add_argument("--blur-max", type=float, help="kernel jitter: blur half the patches up to this Gaussian "
                    "sigma in voxels (TrainSettings.blur_max; off by default)")
    ap.add_argument("--noise-hu", type=float, help="dose jitter: add white noise of sigma up to this many HU to "
                    "every patch (TrainSettings.noise_hu; the recipe's 10 by default)")
    ap.add_argument("--ablation", choices=ABLATIONS, help="train an ablation variant of the recipe")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # kill = interrupt: checkpoint first
    signal.signal(signal.SIGINT, signal.default_int_handler)      # even when started in the background
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_head and not args.chest:
        ap.error("--no-head with --chest '' leaves nothing to train on")
    if not args.head_axes or set(args.head_axes) - set("zyx") or len(set(args.head_axes)) < len(args.head_axes):
        ap.error(f"--head-axes takes distinct letters from zyx, got {args.head_axes!r}")
    head_axes = tuple("zyx".index(a) for a in args.head_axes)
    volumes = [] if args.no_head else load_volumes([f"{args.data}/head_train.nrrd"], slice_axes=head_axes)
    if args.chest:
        volumes += load_volumes([args.chest], slice_axes=(1, 2))
    recipe = dict(RECIPES[args.recipe])
    if args.ablation:
        recipe["model_overrides"], recipe["cycle_weight"] = ABLATIONS[args.ablation]
    overrides = {"halve_every": "halve_every", "lr": "learning_rate", "batch": "batch_size", "patch": "patch",
                 "iterations": "iterations_per_epoch", "lr_slices": "lr_slices", "blur_max": "blur_max",
                 "noise_hu": "noise_hu"}
    recipe.update({key: getattr(args, option) for option, key in overrides.items() if getattr(args, option)})
    if args.blend_band:
        recipe["model_overrides"] = {**recipe.get("model_overrides", {}), "blend_band": args.blend_band}
    precision = recipe.pop("precision", "float32")
    settings = TrainSettings(**recipe, epochs=args.epochs, checkpoint_every=5, max_minutes=args.minutes,
                             precision=args.precision or precision)
    parts = [] if args.no_head else [f"head CT slices 0-75 (axes {', '.join(args.head_axes)})"]
    if args.chest:
        parts.append("chest CT 5 mm (axes y, x)")
    data = " + ".join(parts) + (" only" if len(parts) == 1 else "")
    device = select_device(args.device)          # a clear error where CUDA is asked for and absent
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} threads")
    info = {"data": data, "recipe": args.recipe, "ablation": args.ablation, "hardware": hardware}
    if args.init:
        info["initialised_from"] = args.init
    summary = train(volumes, settings, args.output, resume=args.resume, device=device, info=info, init=args.init,
                    log=lambda r: print(json.dumps(r), flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}), file=sys.stderr)


if __name__ == "__main__":
    main()
