"""Training (paper section 3.2 and 4.1): L1 fit + lambda * cycle loss, Adam, learning rate halved periodically.

``L = |G(I_lr, C_hr) - I_hr|_1 + lambda * |G(G(I_lr, C_hr), C_lr) - I_lr|_1`` (Eq. 6-9): the cycle
re-samples the generated HR block at the LR slice positions through the same network. lambda = 0 is the
"no CCL" ablation; ``neighbours = 0`` in the model configuration is the "no LAM" one.

Two departures from a literal reading, both options (issue 11): thick slices are simulated with
noise matched to real slices (``degradation = "interval_matched"``, see ``degrade``; ``"interval"`` is the
paper's protocol), and the loss is scored only on the in-plane core of each patch (``loss_margin``),
whose codes, like inference's, do not see the patch's zero padding.

Checkpoints hold the model, Adam's moments, the torch and numpy generator states and the history, as
safetensors + JSON (no pickle), so ``resume`` continues exactly where a run stopped: a resumed run gives
the same weights as an uninterrupted one with the same seed.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig, preset
from .data import Batch, Volume, sample_batch
from .degrade import MODES, simulate_thick
from .inference import Cancelled, _check_cancel, autocast_for, default_margin, select_device, upsample
from .model import CycleINR
from .weights import WeightsError, json_path, load_tensors, save_model, save_tensors

CHECKPOINT_FORMAT = "cycleinr-checkpoint/1"
TRAIN_PRECISIONS = ("float32", "bfloat16")
NORMS = {"l1": lambda d: d.abs().mean(), "l2": lambda d: d.square().mean()}


@dataclass
class TrainSettings:
    """Everything that defines a training run (saved with checkpoints and weights)."""

    preset: str = "paper"
    model_overrides: dict = field(default_factory=dict)   # e.g. {"neighbours": 0} for the INR-only ablation
    scale_min: float = 2.0
    scale_max: float = 6.0
    degradation: str = "interval_matched"  # real-slice noise (degrade); "interval": the paper's; "slab"
    cycle_weight: float = 1.0          # lambda of Eq. 9
    loss: str = "l1"                   # "l1" (paper) or "l2" for both terms
    loss_margin: int = -1              # in-plane LR voxels per side left out of the loss; -1: auto (margin())
    epochs: int = 3000
    iterations_per_epoch: int = 20
    learning_rate: float = 1e-4
    halve_every: int = 200             # epochs
    lr_slices: int = 6                 # thick slices per training patch
    patch: int = 32                    # in-plane patch size
    batch_size: int = 2
    augment: bool = True
    noise_hu: float = 10.0
    blur_max: float = 0.0              # voxels: half the patches get a softer kernel (data._augment); 0: off
    seed: int = 0
    checkpoint_every: int = 10         # epochs
    validate_every: int = 10           # epochs
    validation_scales: tuple = (2.0, 3.0, 5.0)
    max_minutes: float | None = None   # stop (and save) at the first epoch end past this wall time
    precision: str = "float32"         # "bfloat16": mixed precision (autocast) for the network's passes

    def __post_init__(self):
        if not 1 < self.scale_min <= self.scale_max:
            raise ValueError(f"scales must satisfy 1 < min <= max, got {self.scale_min}..{self.scale_max}")
        if self.loss not in NORMS:
            raise ValueError(f"loss must be one of {sorted(NORMS)}, got {self.loss!r}")
        if self.cycle_weight < 0:
            raise ValueError("the cycle-loss weight lambda must be >= 0")
        if self.epochs < 1 or self.iterations_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, iterations per epoch and batch size must be positive")
        if not (math.isfinite(self.blur_max) and 0 <= self.blur_max <= 5):
            raise ValueError(f"blur_max must be 0 (off) .. 5 voxels (a Gaussian sigma), got {self.blur_max}")
        if self.lr_slices < 2 or self.patch < 4:
            raise ValueError("patches need at least 2 thick slices and 4x4 pixels")
        if self.degradation not in MODES:
            raise ValueError(f"degradation must be one of {MODES}, got {self.degradation!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAIN_PRECISIONS}, got {self.precision!r}")
        if self.loss_margin < -1 or self.patch - 2 * self.loss_margin < 2:
            raise ValueError(f"loss margin {self.loss_margin} must be -1 (auto) or >= 0 and leave a core of at "
                             f"least 2x2 pixels in the {self.patch}x{self.patch} patch")

    def margin(self, config: ModelConfig) -> int:
        """The loss margin in LR voxels. Auto (-1): the model's context (its measured ``window_margin``, else
        the full ``context_radius``), the reach within which codes see the patch's zero padding, which
        inference never shows them; but at most a quarter of the patch, so the scored core keeps half the
        patch side (the full context, 21 voxels for 'paper', would leave no core in 24-32 px patches).
        Larger patches buy a bigger share of valid core for the same margin. Along z nothing is cut (6 thick
        slices leave no core); more thick slices per patch give codes more z context."""
        if self.loss_margin >= 0:
            return self.loss_margin
        return min(default_margin(config), self.patch // 4)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        """Settings saved with weights or checkpoints. Fields added since keep the behaviour the run had
        (``LEGACY``), so an old run's settings still describe that run."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; they need a newer cycleinr")
        values = {**LEGACY, **data}
        values["validation_scales"] = tuple(values.get("validation_scales", cls.validation_scales))
        return cls(**values)


LEGACY = {"loss_margin": 0}       # the value of each later field that reproduces runs saved without it


@dataclass
class Parallel:
    """This process's part in multi-process training (torchrun + DistributedDataParallel).

    ``wrap`` wraps the loss module (e.g. in DDP, which averages gradients in backward); ``agree`` turns a
    local yes/no into everyone's (rank 0's) so all processes stop at the same epoch. Rank r draws its
    batches from seed r of a shared generator, which is what checkpoints hold, so resuming stays exact.
    Only rank 0 writes files. The default is a single process.
    """

    rank: int = 0
    world: int = 1
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    agree: Callable[[bool], bool] | None = None

    def batch_rng(self, rng: np.random.Generator) -> np.random.Generator:
        if self.world == 1:
            return rng
        return np.random.default_rng(int(rng.integers(0, 2**63 - 1, size=self.world)[self.rank]))


class Objective(torch.nn.Module):
    """The training loss as a module, so that one forward covers both passes (as DDP requires)."""

    def __init__(self, model: CycleINR, cycle_weight: float, norm: str = "l1", margin: int = 0):
        super().__init__()
        self.model, self.cycle_weight, self.norm, self.margin = model, cycle_weight, norm, margin

    def forward(self, batch: Batch, device) -> dict[str, torch.Tensor]:
        return losses(self.model, batch, self.cycle_weight, device, self.norm, self.margin)


def core(x: torch.Tensor, margin: int) -> torch.Tensor:
    """The in-plane core of (..., h, w): ``margin`` pixels cut from every side."""
    return x[..., margin:x.shape[-2] - margin, margin:x.shape[-1] - margin] if margin else x


def losses(model: CycleINR, batch: Batch, cycle_weight: float, device, norm: str = "l1",
           margin: int = 0) -> dict[str, torch.Tensor]:
    """Fit and cycle losses of one batch (Eq. 8, 7) and their weighted sum (Eq. 9); L1 as in the paper,
    or L2, whose gradient grows with the error and so finds edges faster amid noise in short runs.

    The cycle re-samples the generated HR block at the LR slices' positions ``z_lr = j * r`` in HR-index
    units (LR slices past the block's last HR slice are left out), and its gradient reaches both passes.
    Both terms are scored on the in-plane core only (``margin`` LR voxels cut per side, see
    ``TrainSettings.margin``); the first pass still decodes the whole patch, as the cycle's input."""
    distance = NORMS[norm]
    lr = torch.from_numpy(batch.lr).to(device)
    hr = torch.from_numpy(batch.hr).to(device)
    pred = model(lr, torch.from_numpy(batch.z_hr))
    fit = distance(core(pred - hr, margin))
    out = {"fit": fit, "total": fit}
    if cycle_weight > 0:
        valid = batch.z_lr <= hr.shape[1] - 1 + 1e-4        # LR slices inside the generated HR block
        back = model(pred[:, None], torch.from_numpy(batch.z_lr[valid]))
        cycle = distance(core(back - lr[:, 0, torch.from_numpy(valid).to(device)], margin))
        out["cycle"] = cycle
        out["total"] = fit + cycle_weight * cycle
    return out


def validate(model: CycleINR, volumes: list[np.ndarray], scales, mode: str, device) -> dict[str, float]:
    """Mean PSNR (HU window [-1024, 2048], or the same normalised range in the model's units for data
    that is not HU) and SNLI of upsampled simulated thick slices: the network's own output
    (``noise="none"``), so that seeded matched noise neither scores nor picks the best epoch."""
    from .metrics import HU_WINDOW, psnr, snli

    units = model.config.intensity_scale / 1000.0        # CT: 1, the window exactly [-1024, 2048]
    window = tuple(model.config.intensity_offset + w * units for w in HU_WINDOW)
    model.eval()
    psnrs, snlis = [], []
    for hr in volumes:
        for s in scales:
            lr, pos = simulate_thick(hr, s, mode)
            res = upsample(lr, (1.0, 1.0, float(s)), factor=s, model=model, device=device, noise="none")
            ref = hr[: len(res.positions)]
            psnrs.append(psnr(ref, res.array, window=window))
            snlis.append(snli(res.array).value)
    model.train()
    return {"val_psnr": float(np.mean(psnrs)), "val_snli": float(np.mean(snlis))}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": state["param_groups"], "keys": sorted(tensors)}


def save_checkpoint(path: Path, model, opt, rng: np.random.Generator, epoch: int, history: list,
                    settings: TrainSettings, best: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "settings": asdict(settings),
            "config": model.config.to_dict(), "optimizer": opt_meta, "numpy_rng": rng.bit_generator.state,
            "history": history, "best": best}
    save_tensors(path, tensors, meta)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A training checkpoint's tensors and JSON; an error for anything else (e.g. a weights file)."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a CycleINR training checkpoint (<output stem>.ckpt.safetensors)")
    return tensors, meta


def checkpoint_model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint's tensors (the rest is optimizer and RNG state)."""
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def load_checkpoint(path: Path, model, opt, rng: np.random.Generator) -> dict:
    tensors, meta = read_checkpoint(path)
    if meta["config"] != model.config.to_dict():
        raise WeightsError(f"{path}: checkpoint was made with a different model configuration")
    model.load_state_dict(checkpoint_model_state(tensors))
    state: dict = {"state": {}, "param_groups": meta["optimizer"]["param_groups"]}
    for key in meta["optimizer"]["keys"]:
        _, idx, name = key.split(".", 2)
        state["state"].setdefault(int(idx), {})[name] = tensors[key]
    opt.load_state_dict(state)
    torch.set_rng_state(tensors["torch_rng"])
    rng.bit_generator.state = meta["numpy_rng"]
    return meta


def _keep_measured_margin(config: ModelConfig, saved: ModelConfig | None) -> ModelConfig:
    """``saved`` if it is the preset's ``config`` but for ``window_margin``, the sliding-window context
    measured for trained weights (an inference setting, not architecture, so fine-tuning keeps it); else
    ``config``, whose mismatch the caller reports."""
    same = saved is not None and replace(saved, window_margin=config.window_margin) == config
    return saved if same else config


def _checkpoint_config(path) -> ModelConfig | None:
    """The model configuration a checkpoint's JSON records, or None where it cannot be read
    (``load_checkpoint`` then says what is wrong)."""
    try:
        return ModelConfig.from_dict(json.loads(json_path(Path(path)).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _snapshot(model, opt, rng) -> tuple:
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), rng.bit_generator.state,
            torch.get_rng_state())


def _restore(snapshot, model, opt, rng) -> None:
    model.load_state_dict(snapshot[0])
    opt.load_state_dict(snapshot[1])
    rng.bit_generator.state = snapshot[2]
    torch.set_rng_state(snapshot[3])


NOT_HU_RANGE = 100     # CT spans more (tissue, bone, noise); 0-1 images and z-scores far less


def intensity_normalisation(volumes: list[Volume]) -> dict:
    """{} for CT in HU (the presets' HU / 1000) and for any data spanning 100 units or more. Only data that
    is clearly not HU (0-1 images, z-scored MR: no value near -1000 and a 0.5-99.5th percentile range
    under ``NOT_HU_RANGE``) gets the model's
    ``intensity_offset`` and ``intensity_scale`` that map the data's 0.5-99.5th percentiles onto CT's
    normalised air-to-bone range, -1 .. 2, so the network, its augmentation and its tissue test see the
    same numbers as on CT; the JSON keeps them and inference uses them."""
    if min(float(np.min(v.array)) for v in volumes) <= -200:
        return {}
    sample = np.concatenate([np.asarray(v.array).ravel()[::97] for v in volumes]).astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not hi > lo:
        raise ValueError("the training volumes are (nearly) constant: there is nothing to learn")
    if hi - lo >= NOT_HU_RANGE:          # e.g. an air-free CT crop, or MR in the thousands: HU / 1000 suits it
        return {}
    scale = (hi - lo) / 3.0
    return {"intensity_offset": float(lo + scale), "intensity_scale": float(scale)}


def train(volumes: list[Volume], settings: TrainSettings, output: str | Path, validation: list[np.ndarray] = (),
          resume: str | Path | None = None, device="auto", log: Callable[[dict], None] | None = None,
          cancel=None, stop_after_epoch: int | None = None, info: dict | None = None,
          parallel: Parallel | None = None, init: str | Path | None = None) -> dict:
    """Train and write ``output`` (.safetensors + .json). Returns a summary.

    A checkpoint ``<output stem>.ckpt.safetensors`` is written every ``checkpoint_every`` epochs, on
    cancel/interrupt and at the end; ``resume`` continues from one. With validation volumes the weights
    of the best validation PSNR are written to ``output``; without, the last ones. ``output`` only ever
    receives complete files. ``stop_after_epoch`` ends the run early (as an interruption would).
    ``init`` starts a new run (not a resume) from a weights file of the same architecture: fine-tuning.
    A ``max_minutes`` stop validates at that epoch, so validated runs always write weights.
    """
    parallel = parallel or Parallel()
    writer = parallel.rank == 0
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: the weights file must end in .safetensors")
    if not output.parent.is_dir():
        raise ValueError(f"{output}: folder {output.parent} does not exist")
    ckpt = output.with_name(output.stem + ".ckpt.safetensors")
    dev = select_device(device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    units = intensity_normalisation(volumes)
    config = preset(settings.preset, **{**units, **settings.model_overrides})
    start = None
    if init and not resume:
        from .weights import load_model
        start = load_model(init)
        saved = replace(start.config, intensity_offset=config.intensity_offset,   # the data's units (HU included),
                        intensity_scale=config.intensity_scale)                    # whatever the init was trained on
        if _keep_measured_margin(config, saved) is not saved:
            raise ValueError(f"{init}: its configuration differs from the training preset's; fine-tuning needs the same")
        config = saved
    elif resume:                   # a fine-tuned run's checkpoint holds its init's margin, and its units
        saved = _checkpoint_config(resume)
        if saved is not None:
            config = replace(config, intensity_offset=saved.intensity_offset, intensity_scale=saved.intensity_scale)
        config = _keep_measured_margin(config, saved)
    model = CycleINR(config).to(dev)
    if start is not None:
        model.load_state_dict(start.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    history, best, start_epoch = [], {"val_psnr": -math.inf, "epoch": 0}, 0
    if resume:
        meta = load_checkpoint(Path(resume), model, opt, rng)
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"]
    info = {"training": {"settings": asdict(settings), "volumes": [v.name for v in volumes], **(info or {})}}
    last = stop_after_epoch if stop_after_epoch is not None else settings.epochs
    norm = (config.intensity_offset, config.intensity_scale)
    objective = Objective(model, settings.cycle_weight, settings.loss, settings.margin(config))
    step = parallel.wrap(objective) if parallel.wrap else objective
    model.train()
    started = time.perf_counter()
    epoch = start_epoch
    snapshot = _snapshot(model, opt, rng)
    try:
        for epoch in range(start_epoch + 1, min(last, settings.epochs) + 1):
            snapshot = _snapshot(model, opt, rng)
            for group in opt.param_groups:
                group["lr"] = settings.learning_rate * 0.5 ** ((epoch - 1) // settings.halve_every)
            sums: dict[str, float] = {}
            for _ in range(settings.iterations_per_epoch):
                _check_cancel(cancel)
                batch = sample_batch(parallel.batch_rng(rng), volumes, settings.batch_size, settings.lr_slices, settings.patch,
                                     (settings.scale_min, settings.scale_max), settings.degradation,
                                     settings.augment, settings.noise_hu, *norm, blur_max=settings.blur_max)
                with autocast_for(dev, settings.precision):
                    parts = step(batch, dev)
                opt.zero_grad(set_to_none=True)
                parts["total"].backward()
                opt.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.item() / settings.iterations_per_epoch
            record = {"epoch": epoch, "epochs": settings.epochs, "lr": opt.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - started, 2), **{f"loss_{k}": v for k, v in sums.items()}}
            out_of_time = settings.max_minutes is not None and time.perf_counter() - started > 60 * settings.max_minutes
            if parallel.agree:
                out_of_time = parallel.agree(out_of_time)
            if validation and (epoch % settings.validate_every == 0 or epoch == settings.epochs or out_of_time):
                record.update(validate(model, validation, settings.validation_scales, settings.degradation, dev))
                if record["val_psnr"] > best["val_psnr"]:
                    best = {"val_psnr": record["val_psnr"], "epoch": epoch}
                    if writer:
                        save_model(output, model, **info, best=best)
            history.append(record)
            if log:
                log(record)
            if writer and epoch % settings.checkpoint_every == 0:
                save_checkpoint(ckpt, model, opt, rng, epoch, history, settings, best)
            if out_of_time:
                break
    except (KeyboardInterrupt, Cancelled):
        _restore(snapshot, model, opt, rng)          # the state at the start of the unfinished epoch
        history = [h for h in history if h["epoch"] < epoch]
        if writer:
            save_checkpoint(ckpt, model, opt, rng, epoch - 1, history, settings, best)
        raise
    if writer:
        save_checkpoint(ckpt, model, opt, rng, epoch, history, settings, best)
        if not validation:
            save_model(output, model, **info, epoch=epoch)
    return {"epoch": epoch, "best": best, "history": history, "output": str(output), "checkpoint": str(ckpt)}
