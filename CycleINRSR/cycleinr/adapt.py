"""Per-scan self-supervised adaptation: fine-tune a copy of the model on the input's own in-plane axes.

No pretrained model has seen this scanner, kernel or patient, but a thick-slice scan carries its own
thin-slice truth: its in-plane axes are sampled at 0.5-1 mm. As in SMORE, each in-plane axis (y, then x)
serves in turn as the "slice axis": its profiles are resampled to the thin spacing the model will be asked
for (a box of that width, i.e. a slice of that thickness), thick slices are simulated from them at the
input's real slice spacing (``degrade``: interval sampling, or ``slab`` for the slice thickness), and the
copy is trained with the model's own loss norm (``train.losses`` on ``data.sample_batch`` batches) for at
most the given wall time. So the network sees, at training, the physical scale and slice profile it meets
along K.

But not the geometry: an in-plane patch has K, the coarse axis (4.5-7.5 mm), as one of its in-plane axes,
which the network never meets at inference. Fitting that task harder makes the real result worse. The
choices below were made on the training split only (head_train slices 22-53, cropped like the held-out
slab; thick slices by interval sampling at x3 / x5; PSNR gain in dB of the adapted over the unadapted
fast model, steps capped, one thread on a loaded 2-core CPU, seed 0):

* Only attention and decoder learn (``TRAINED``); the encoder, which sees the patch geometry, is frozen.
  Whole network, 100 steps at lr 1e-4 / 3e-4 / 1e-3: +0.22 / +0.12 / -0.11 at x3, -0.02 / -0.23 / -0.51
  at x5 (the in-plane loss falls more at each higher rate). Encoder frozen, 3e-4: +0.25 / +0.04;
  decoder frozen instead: +0.12 / -0.19. Steps are also 2-3x faster (no backward through the encoder).
* Anchor (``anchor_volume``): the unadapted model's own output on a central crop of the scan is one more
  training volume, pairs in the inference geometry that hold the copy to what it did there. Without it,
  longer runs drift back (encoder frozen, 300 steps at 3e-4 or 1000 at 1e-4: +0.21 / -0.02); with it,
  600 steps: +0.28 / -0.02 (whole network with the anchor, 1e-4: +0.25 / +0.03).
* At most ``STEPS`` = 600 steps, however long the budget: with the anchor, 300 / 600 / 1500 steps gave
  +0.22 / +0.28 / +0.26 at x3 and -0.01 / -0.02 / -0.12 at x5.
* ``LEARNING_RATE`` 3e-4, annealed to 0 over the budget or the steps, whichever ends first (cosine): 1e-3 with the anchor, 600 steps,
  +0.29 / -0.14; without it, 100 steps, +0.20 / -0.06.
* ``CYCLE_WEIGHT`` 0: the same gain with the cycle term (+0.258 / +0.040 against +0.254 / +0.040 at 100
  steps) at twice the time per step.
* Kept as they were, each worse or no better: L1 instead of the model's L2 (+0.15 / +0.01), no
  augmentation (+0.15 / -0.08), batches of 8 (no gain per second), a linear instead of a box profile
  (+0.22 / +0.04), K interpolated to the thin spacing before the profiles are taken (+0.22 / +0.03 at
  2-4x the step time), the loss on the patch core only (+0.25 / +0.07, within the noise).

At x5 nothing tried helped on this split, where even fitting the true thin slices themselves for 100
steps gave only +0.43 (x3) / +0.17 dB (x5): the model was trained on this head. Held out, the gain did
not carry over: -0.05 to -0.09 dB at x3 and -0.11 to -0.15 at x5 on the head slab for 15-300 s, -0.07 /
-0.02 dB on the chest's in-plane check (model card, "Per-scan adaptation"). The split was a poor place
to choose: the model was trained on its very in-plane profiles, so there adaptation re-fits them.

Checked on two scans a model never saw (a head-only model on the chest's in-plane check, a chest-only
model on the head slab; model card, "Two scanners never seen"): these settings gain +0.04 / +0.26 and
+0.26 / +0.14 dB (x3 / x5, 120 s). The whole network at 1e-4 gains +0.17 / +0.29 and +0.19 / +0.45; no
anchor, no step cap, and in-plane profiles of the anchor's upsampled crop added to the training volumes
(commit 0eb263e) moved the gains by -0.05 to +0.09 dB (those profiles alone: -0.05 to -0.12). No variant
was better on both scans at both scales, so these settings stay. Neither was the encoder at a third of the
others' rate (+0.13 / +0.26, +0.18 / +0.45) nor the whole network at 3e-4 (+0.10 / +0.19, +0.22 / +0.39). The
budget is not the limit: fitted to the thin truth itself for 120 s, the whole network at 3e-4 gains +0.64 /
+0.83 dB on the first scan; the in-plane pairs are what fall short.

The thin spacing is the input's slice spacing over the ratio rounded to one decimal (the scales
``data.sample_batch`` draws), so the simulated thick slices are exactly the input's slice spacing apart
and the thin spacing is within 2.5 % of the target. The loss on a fixed set of patches (own seed, no
augmentation) is measured before and after; if adaptation did not lower it, the original weights are kept
and the report says so. These patches come from the whole scan, not a held-out band: a central band was
tried and was unrepresentative (its loss 14x below the training patches' on the head slab, all brain, no
skull), and the aim is to fit this one scan. The model passed in is never modified.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .data import Volume, sample_batch
from .degrade import MODES, degradation_matrix
from .geometry import output_slice_count, thin_slices_touched
from .inference import Cancelled, _check_cancel, select_device, upsample
from .model import CycleINR
from .train import NORMS, losses
from .volume_io import check_volume

MAX_SECONDS = 24 * 3600          # a larger budget is a typo (ms for s?), not a plan
LR_SLICES = (6, 5, 4, 3)         # thick slices per training patch: 6 as in training, fewer for small scans
PATCH = 32                       # in-plane patch edge (capped by the number of input slices along K)
MIN_PATCH = 4                    # the smallest in-plane patch edge the network is trained on
EVAL_PATCHES = 12                # the fixed evaluation set, drawn once per run with its own seed
LEARNING_RATE = 3e-4
BATCH = {"cpu": 2, "cuda": 16}   # on a CPU more, smaller steps did better within a budget
PROFILE = "slab"                 # in-plane resampling kernel: a box as wide as the thin spacing
TRAINED = ("attention.", "decoder.")   # parameters the adaptation trains; the encoder stays as it was
CYCLE_WEIGHT = 0.0               # the cycle term changed nothing here and cost half the steps
ANCHOR_CROP = (16, 128, 128)     # central crop (slices, pixels) the unadapted model upsamples as anchor
STEPS = 600                      # at most this many steps, whatever the budget: more lost at x5
AXIS_NAMES = {1: "y", 2: "x"}


def check_budget(seconds) -> float:
    """The adaptation budget in seconds, or a ValueError saying what a usable one is."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"adaptation budget must be a number of seconds, got {seconds!r}") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"adaptation budget must be more than 0 and at most {MAX_SECONDS} s (24 h), got "
                         f"{seconds:g} s; e.g. --adapt 120 for two minutes")
    return seconds


def thin_grid(slice_spacing: float, target_spacing: float) -> tuple[float, float]:
    """(scale, thin spacing) of the simulated pairs: scale is the ratio rounded to one decimal."""
    if not (math.isfinite(target_spacing) and 0 < target_spacing < slice_spacing):
        raise ValueError(f"target spacing {target_spacing:g} mm must be positive and smaller than the slice "
                         f"spacing {slice_spacing:g} mm")
    scale = round(slice_spacing / target_spacing, 1)
    if scale <= 1.0:
        raise ValueError(f"target {target_spacing:g} mm is too close to the slice spacing {slice_spacing:g} mm "
                         "to adapt (factor below 1.1); upsample without --adapt")
    return scale, slice_spacing / scale


def resample_axis(volume: np.ndarray, axis: int, spacing: float, thin: float) -> np.ndarray:
    """``volume`` resampled along ``axis`` from ``spacing`` to the coarser ``thin`` mm with a box of width
    ``thin`` (a slice of that thickness), returned with that axis first."""
    arr = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, 0)
    ratio = thin / spacing
    if ratio <= 1 + 1e-6:
        return np.ascontiguousarray(arr)
    positions = np.arange(output_slice_count(arr.shape[0], spacing, thin)) * ratio
    weights = degradation_matrix(arr.shape[0], positions, ratio, PROFILE)
    out = np.empty((len(positions),) + arr.shape[1:], dtype=np.float32)
    for row, w in enumerate(weights):                       # a few taps per row: no dense product
        taps = np.nonzero(w)[0]
        out[row] = np.tensordot(w[taps].astype(np.float32), arr[taps], axes=(0, 0))
    return out


def prepare(volume: np.ndarray, spacing_xyz, target_spacing: float) -> dict:
    """Thin in-plane profiles of ``volume`` (axis 0 = K), one training volume per usable in-plane axis."""
    check_volume(volume)
    spacing_xyz = tuple(float(s) for s in spacing_xyz)
    if len(spacing_xyz) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_xyz):
        raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing_xyz}")
    scale, thin = thin_grid(spacing_xyz[2], float(target_spacing))
    axis_spacing = {1: spacing_xyz[1], 2: spacing_xyz[0]}
    usable = [a for a in (1, 2) if axis_spacing[a] <= thin * (1 + 1e-6)]
    if not usable:
        raise ValueError(f"in-plane pixel spacing {spacing_xyz[0]:g} x {spacing_xyz[1]:g} mm is coarser than the "
                         f"{thin:.3g} mm slices asked for: the scan holds no finer detail to adapt on; choose a "
                         f"target of at least {min(axis_spacing.values()):.3g} mm or upsample without --adapt")
    n = volume.shape[0]
    if n < MIN_PATCH:
        raise ValueError(f"the volume has {n} slices; adapting needs at least {MIN_PATCH} (upsample without --adapt)")
    for lr_slices in LR_SLICES:
        need = thin_slices_touched(lr_slices, scale)
        train, axes, patch = [], [], {}
        for a in usable:
            other = 3 - a
            width = volume.shape[other]
            length = output_slice_count(volume.shape[a], axis_spacing[a], thin)
            if width < MIN_PATCH or length < need:
                continue
            train.append(Volume(resample_axis(volume, a, axis_spacing[a], thin), f"{AXIS_NAMES[a]} profiles"))
            axes.append(AXIS_NAMES[a])
            patch[AXIS_NAMES[a]] = min(PATCH, width)
        if axes:
            break
    else:
        raise ValueError(f"the volume ({volume.shape[1]} x {volume.shape[2]} pixels in-plane) is too small to adapt "
                         f"on at factor {scale:g}: an in-plane axis needs {thin_slices_touched(LR_SLICES[-1], scale)} samples "
                         f"of {thin:.3g} mm; upsample without --adapt")
    return {"scale": scale, "thin_spacing": thin, "lr_slices": lr_slices, "axes": axes, "train": train,
            "patch": (min(PATCH, n), min(patch.values()))}


def _training_loss(model: CycleINR) -> str:
    """The loss norm the model was trained with (its weights' JSON), else L2."""
    settings = (getattr(model, "meta", None) or {}).get("training", {}).get("settings", {})
    norm = settings.get("loss", "l2")
    return norm if norm in NORMS else "l2"


def anchor_volume(net: CycleINR, volume: np.ndarray, spacing_xyz, plan: dict, device, cancel=None) -> list[Volume]:
    """The unadapted ``net``'s own output on a central crop of the scan (``ANCHOR_CROP``: its cost stays a
    few seconds on a CPU), at the thin spacing, as one more training volume (slice axis K): pairs in the
    geometry the copy will meet at inference (fine pixels in-plane), whose targets hold it to what it did
    there. Empty if the crop cannot hold a patch."""
    (ph, pw), (n, h, w) = plan["patch"], volume.shape
    cn, ch, cw = (min(size, edge) for size, edge in zip(volume.shape, ANCHOR_CROP, strict=True))
    if cn < plan["lr_slices"] or ch < ph or cw < pw:
        return []
    crop = volume[(n - cn) // 2:(n - cn) // 2 + cn, (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    try:
        out = upsample(crop, spacing_xyz, target_spacing=plan["thin_spacing"], model=net, device=device,
                       noise="none", cancel=cancel).array
    except Cancelled:
        raise Cancelled("adaptation cancelled") from None
    return [Volume(out, "the unadapted model's output")] if len(out) >= thin_slices_touched(plan["lr_slices"], plan["scale"]) else []


def trainable(net: CycleINR) -> list[torch.nn.Parameter]:
    """Let only the ``TRAINED`` parameters learn (the encoder stays as it was); returns them."""
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(TRAINED))
    return [p for p in net.parameters() if p.requires_grad]


def annealed(learning_rate: float, done: float) -> float:
    """The rate at fraction ``done`` of the run: cosine to zero at the end (a constant rate drifted off
    after ~100 steps)."""
    return learning_rate * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def adapt_model(model: CycleINR, volume: np.ndarray, spacing_xyz, seconds: float, *, target_spacing: float,
                degradation: str = "interval", seed: int = 0, device="auto",
                progress: Callable[[float, float], None] | None = None, cancel=None,
                max_iterations: int | None = None, learning_rate: float = LEARNING_RATE,
                batch_size: int | None = None, cycle_weight: float | None = None) -> tuple[CycleINR, dict]:
    """Fine-tune a copy of ``model`` on ``volume``'s in-plane axes for at most ``seconds``.

    ``volume`` is (z, y, x) with z = the slice axis K (any physical orientation), ``spacing_xyz`` ITK
    (x, y, z) mm, ``target_spacing`` the slice spacing the copy will be asked for. The budget covers
    everything here (preparation, the two evaluations, training); at least one step is taken.
    ``max_iterations`` caps the steps (default ``STEPS``; a cap the budget allows gives reproducible runs,
    which the wall clock does not). ``progress(elapsed, seconds)`` is called after each step; ``cancel``
    (Event or callable) raises ``Cancelled``.
    Returns the adapted copy (eval mode) and a report: iterations, seconds, loss before/after.
    """
    start = time.perf_counter()
    seconds = check_budget(seconds)
    if degradation not in MODES:
        raise ValueError(f"degradation must be one of {MODES}, got {degradation!r}")
    max_iterations = STEPS if max_iterations is None else max_iterations
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    dev = select_device(device)
    plan = prepare(volume, spacing_xyz, target_spacing)
    norm = _training_loss(model)
    cycle_weight = CYCLE_WEIGHT if cycle_weight is None else float(cycle_weight)
    batch_size = batch_size or BATCH.get(dev.type, BATCH["cuda"])
    cfg = model.config
    draw = dict(batch_size=batch_size, lr_slices=plan["lr_slices"], patch=plan["patch"],
                scale_range=(plan["scale"], plan["scale"]), mode=degradation, noise_hu=0.0,
                offset=cfg.intensity_offset, scale_hu=cfg.intensity_scale)
    eval_rng = np.random.default_rng([seed, 1])
    fixed = [sample_batch(eval_rng, plan["train"], augment=False, **{**draw, "batch_size": EVAL_PATCHES // 2})
             for _ in range(2)]

    net = copy.deepcopy(model).to(dev).eval()
    train_volumes = plan["train"] + anchor_volume(net, volume, spacing_xyz, plan, dev, cancel)
    trained = trainable(net)

    def fixed_loss() -> dict:
        net.eval()
        with torch.no_grad():
            parts = [losses(net, b, cycle_weight, dev, norm) for b in fixed]
        return {k: float(np.mean([p[k].item() for p in parts])) for k in parts[0]}

    t0 = time.perf_counter()
    before = fixed_loss()
    eval_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(trained, lr=learning_rate)
    net.train()
    iterations, step_seconds, stopped, train_losses = 0, 0.0, "budget", []
    train_seconds = max(seconds - (time.perf_counter() - start) - eval_seconds, 1e-3)
    train_start = time.perf_counter()
    while True:
        _check_cancel(cancel, "adaptation")
        t0 = time.perf_counter()
        done = max((t0 - train_start) / train_seconds, iterations / max_iterations)
        for group in opt.param_groups:
            group["lr"] = annealed(learning_rate, done)
        batch = sample_batch(rng, train_volumes, augment=True, **draw)
        loss = losses(net, batch, cycle_weight, dev, norm)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_losses.append(loss.item())
        iterations += 1
        step_seconds = max(step_seconds * 0.9, time.perf_counter() - t0)  # a cautious per-step estimate
        elapsed = time.perf_counter() - start
        if progress is not None:
            progress(min(elapsed, seconds), seconds)
        if iterations >= max_iterations:
            stopped = "max_iterations"
            break
        if elapsed + step_seconds + eval_seconds > seconds:
            break
    after = fixed_loss()
    improved = after["total"] < before["total"]
    if not improved:
        net = copy.deepcopy(model).to(dev)
    for p, original in zip(net.parameters(), model.parameters(), strict=True):
        p.requires_grad_(original.requires_grad)
    net.eval()
    report = {
        "iterations": iterations, "seconds": round(time.perf_counter() - start, 2), "budget_seconds": seconds,
        "stopped_by": stopped, "loss_before": before["total"], "loss_after": after["total"],
        "fit_before": before["fit"], "fit_after": after["fit"],
        "train_loss_first": float(np.mean(train_losses[:10])), "train_loss_last": float(np.mean(train_losses[-10:])),
        "kept": "adapted" if improved else "original (adaptation did not lower the loss on the fixed patches)",
        "axes": plan["axes"], "scale": plan["scale"], "thin_spacing_mm": round(plan["thin_spacing"], 4),
        "target_spacing_mm": float(target_spacing), "degradation": degradation, "seed": int(seed),
        "learning_rate": learning_rate, "batch_size": batch_size, "lr_slices": plan["lr_slices"],
        "patch": list(plan["patch"]), "loss": norm, "cycle_weight": cycle_weight,
        "trained": "+".join(t.rstrip(".") for t in TRAINED), "anchor": len(train_volumes) > len(plan["train"]),
        "eval_patches": sum(len(b.lr) for b in fixed), "device": str(dev),
    }
    return net, report


def save_adapted(path, model: CycleINR, report: dict, source: str) -> None:
    """Write the adapted weights (safetensors + JSON) with the scan they were adapted to and how."""
    from .weights import save_model

    base = getattr(model, "meta", None) or {}
    extra = {k: v for k, v in base.items() if k not in ("format", "config", "adaptation")}
    origin = {"base_model": str(getattr(model, "source", "")) or None}    # the file it was loaded from
    save_model(path, model, **extra, adaptation={"source_scan": source, **origin, **report})
