"""``cycleinr train`` and the CycleINRTrain Slicer CLI: train CycleINR weights on thin-slice volumes.

One parameter table, ``PARAMETERS``, generates both the argparse options (``add_parser``,
``build_argparser``) and the SlicerExecutionModel XML (``sem_xml``), so the command line, the Slicer
panel and the committed ``CycleINRTrain/CycleINRTrain.xml`` cannot drift apart. Regenerate that file with

    python CycleINRTrain/CycleINRTrain.py --xml > CycleINRTrain/CycleINRTrain.xml

Every option is a long flag whose name is the SEM parameter name (``--scale_min``; ``--scale-min`` is
accepted too). Slicer passes every number and choice as ``--name value``, booleans as a bare ``--name``
when checked, and files only when set. Defaults come from ``train.TrainSettings``.

Progress goes to stdout in Slicer's CLI protocol (``<filter-start>``, ``<filter-progress>``,
``<filter-comment>``, ``<filter-end>``), or as a one-line progress bar when stdout is a terminal.
Errors the user can fix end with one line ``cycleinr: error: ...`` and exit status 2, before anything
is written: the output path only ever receives complete weights files (``train`` writes atomically).

Multi-GPU: under ``torchrun`` (WORLD_SIZE > 1) every process trains the same model wrapped in
DistributedDataParallel (NCCL on CUDA, gloo on CPU; rank r uses GPU LOCAL_RANK), draws its own batches
(``--batch_size`` per process) from a per-rank seed, and only rank 0 writes weights, checkpoints and
progress. A single process needs nothing extra. See ``_distributed_training``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import math
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, outputs
from .config import PRESETS, preset
from .data import VOLUME_SUFFIXES, Volume, load_volumes
from .degrade import MODES
from .geometry import thin_slices_touched
from .inference import Cancelled, select_device
from .train import TRAIN_PRECISIONS, Parallel, TrainSettings, train

NAME = "CycleINRTrain"
CATEGORY = "Filtering"
AXES = {"z": (0,), "all": (0, 1, 2)}
AXIS_NAMES = ("z", "y", "x")
_DEFAULTS = TrainSettings()


@dataclass(frozen=True)
class Param:
    """One parameter: SEM element ``tag`` named ``name`` (also the long flag and the argparse dest)."""

    name: str
    tag: str                       # integer, double, boolean, string-enumeration, file, directory
    label: str
    description: str
    group: str
    default: Any = None            # None: no default (files, folders)
    choices: tuple = ()            # string-enumeration elements
    channel: str | None = None     # input/output, for files and folders
    multiple: bool = False         # several files (repeat the flag or separate with commas)
    extensions: tuple = ()         # file name endings offered by Slicer's file dialog
    decimals: int | None = None    # doubles: digits of the SEM default (Slicer's spin box shows as many)
    flag: str | None = None        # optional one-letter short flag
    setting: str | None = None     # the TrainSettings field it sets
    required: bool = False

    def sem_default(self) -> str | None:
        if self.tag == "boolean":
            return "true" if self.default else "false"
        if self.default is None:
            return None
        if self.tag == "double":
            return f"{self.default:.{self.decimals if self.decimals is not None else 1}f}"
        return str(self.default)

    def option_strings(self) -> list[str]:
        names = ([f"-{self.flag}"] if self.flag else []) + [f"--{self.name}"]
        return names + ([f"--{self.name.replace('_', '-')}"] if "_" in self.name else [])


def _setting(name: str, tag: str, label: str, description: str, group: str, setting: str | None = None,
             **kw) -> Param:
    """A parameter whose default is TrainSettings' ``setting`` (``name`` unless given)."""
    setting = setting or name
    return Param(name, tag, label, description, group, default=getattr(_DEFAULTS, setting), setting=setting, **kw)


GROUPS = (
    ("io", "Input and output", "Thin-slice training volumes, validation data and the weights file to write.", False),
    ("model", "Model", "Network preset and optional size overrides (0 keeps the preset's value).", False),
    ("training", "Training", "Training pairs are made on the fly by simulating thick slices (paper section 4.1).",
     False),
    ("run", "Run", "Device, seed, checkpoints, validation schedule and time limit.", True),
)

PARAMETERS: tuple[Param, ...] = (
    Param("training", "file", "Training volumes",
          "Thin-slice volume files (NIfTI, NRRD, MHA, ...) or DICOM series folders. Give several by separating "
          "them with commas or repeating the option. Folders are searched one level deep.",
          "io", channel="input", multiple=True, extensions=VOLUME_SUFFIXES, flag="i"),
    Param("training_folder", "directory", "Training folder",
          "A folder of training volumes (or one DICOM series folder); added to the training volumes above.",
          "io", channel="input"),
    Param("validation", "file", "Validation volumes",
          "Thin-slice volumes used only for validation: the weights with the best validation PSNR are written. "
          "Leave empty to hold out part of the training data (validation fraction) or to skip validation.",
          "io", channel="input", multiple=True, extensions=VOLUME_SUFFIXES),
    Param("validation_fraction", "double", "Validation fraction",
          "Without validation volumes: the fraction of the training data held out for validation, as whole "
          "volumes, or, with a single training volume, a contiguous slab of slices at its end. "
          "0 = no validation: the weights of the last epoch are written.",
          "io", default=0.0, decimals=2),
    Param("output", "file", "Output weights",
          "Weights file to write (.safetensors). Its configuration is written beside it as .json, and the "
          "resumable checkpoint as <name>.ckpt.safetensors (+ .json).",
          "io", channel="output", extensions=(".safetensors",), flag="o", required=True),

    _setting("preset", "string-enumeration", "Preset",
             "Network sizes: 'paper' (section 4.1 of the paper; for GPUs) or 'fast' (a small network for CPUs).",
             "model", choices=tuple(PRESETS)),
    Param("features", "integer", "Encoder features",
          "Feature channels of the 3D CNN encoder (0 = the preset's value).", "model", default=0),
    Param("code_length", "integer", "Latent code length",
          "Length of the latent code of every LR voxel (0 = the preset's value).", "model", default=0),
    Param("decoder_width", "integer", "Decoder width",
          "Width of the fully connected decoder layers (0 = the preset's value).", "model", default=0),
    Param("decoder_layers", "integer", "Decoder layers",
          "Number of fully connected decoder layers, at least 2 (0 = the preset's value).", "model", default=0),
    Param("no_lam", "boolean", "Disable local attention (LAM)",
          "Sample latent codes by plain trilinear interpolation instead of the 27-neighbour local attention "
          "mechanism (the paper's 'no LAM' ablation).", "model", default=False),
    Param("residual", "string-enumeration", "Output form",
          "'linear': the network predicts a correction to linear interpolation between the thick slices "
          "(starts at linear interpolation; useful after short CPU runs); 'none': it predicts the intensity "
          "itself, the paper's literal form, which decodes acquired and generated slices alike but needs "
          "longer training.", "model", default=PRESETS["paper"].residual, choices=("linear", "none")),

    _setting("scale_min", "double", "Smallest scale",
             "Smallest simulated slice-spacing ratio (thick / thin) of the training pairs.", "training", decimals=1),
    _setting("scale_max", "double", "Largest scale",
             "Largest simulated ratio; scales are drawn uniformly with one decimal between the two.", "training",
             decimals=1),
    _setting("degradation", "string-enumeration", "Thick-slice model",
             "How thick slices are simulated: 'interval' keeps every r-th thin slice, interpolating between two "
             "at decimal scales (the paper's protocol); 'slab' averages the thin slices over each thick slice's "
             "extent. The '_matched' variants add the noise that averaging removed, so every simulated slice "
             "carries the noise of a real one (interpolated slices otherwise have 0.71-1.0 of it).", "training",
             choices=MODES),
    _setting("cycle_weight", "double", "Cycle-loss weight (lambda)",
             "Weight of the cycle-consistent loss of Eq. 9; 0 disables it (the paper's 'no CCL' ablation).",
             "training", decimals=2),
    _setting("loss", "string-enumeration", "Loss norm",
             "Norm of the fit and cycle losses: 'l1' as in the paper (the median: it keeps more of the "
             "noise texture), or 'l2' (the mean: higher PSNR, smoother slices; its gradient grows with the error, "
             "so it learns edges faster in short CPU runs).", "training", choices=("l1", "l2")),
    _setting("loss_margin", "integer", "Loss margin (pixels)",
             "In-plane pixels cut from every side of a patch before the losses are computed, so that only codes "
             "that do not see the patch's zero padding (which inference never shows them) are trained. "
             "-1: automatic, the network's context but at most a quarter of the patch; 0: score the whole patch.",
             "training"),
    _setting("blur_max", "double", "Kernel jitter (voxels)",
             "Blur half the training patches with an isotropic Gaussian of sigma drawn up to this many voxels "
             "before thick slices are simulated (a softer reconstruction kernel than the training CT's, so "
             "the network does not add detail a soft scan does not have); 0 = off.", "training", decimals=2),
    _setting("epochs", "integer", "Epochs",
             "Epochs to train (in total, counting those of a resumed checkpoint).", "training"),
    _setting("learning_rate", "double", "Learning rate", "Adam learning rate.", "training", decimals=6),
    _setting("halve_every", "integer", "Halving period (epochs)",
             "The learning rate is halved every this many epochs.", "training"),
    _setting("iterations", "integer", "Iterations per epoch", "Optimizer steps per epoch.", "training",
             setting="iterations_per_epoch"),
    _setting("patch", "integer", "Patch size", "In-plane size of the training patches, in pixels.", "training"),
    _setting("thick_slices", "integer", "Thick slices per patch",
             "Simulated thick (LR) slices per training patch; a patch spans about (this - 1) x scale + 1 thin "
             "slices, so every volume needs at least that many along each slice axis.", "training",
             setting="lr_slices"),
    _setting("batch_size", "integer", "Batch size", "Patches per optimizer step (per process under torchrun).",
             "training"),
    Param("slice_axes", "string-enumeration", "Slice axes",
          "Axes along which thick slices are simulated: 'z' (the slice axis only) or 'all' (also the two "
          "in-plane axes, which adds training data when the in-plane resolution is similar).",
          "training", default="z", choices=tuple(AXES)),

    Param("device", "string-enumeration", "Device",
          "auto: CUDA when available, else CPU. Under torchrun each process uses GPU LOCAL_RANK.", "run",
          default="auto", choices=("auto", "cpu", "cuda")),
    _setting("precision", "string-enumeration", "Precision",
             "float32, or bfloat16 mixed precision (autocast: weights, optimizer and loss stay float32). "
             "bfloat16 is 1.8-2.5x faster on CPUs with bf16 matrix units (Intel AMX) and on CUDA GPUs, and slower "
             "on CPUs without them.", "run", choices=TRAIN_PRECISIONS),
    _setting("seed", "integer", "Random seed", "Seed of the network initialisation and of the training pairs; "
             "the same seed and settings give the same weights.", "run"),
    Param("resume", "file", "Resume from checkpoint",
          "A <name>.ckpt.safetensors checkpoint of an earlier run with the same model settings; training "
          "continues from its epoch up to 'epochs' and equals an uninterrupted run.",
          "run", channel="input", extensions=(".safetensors",)),
    _setting("checkpoint_every", "integer", "Checkpoint every (epochs)",
             "Write the resumable checkpoint every this many epochs (also on interruption and at the end).", "run"),
    _setting("validate_every", "integer", "Validate every (epochs)",
             "Validate every this many epochs and at the last one (with validation data).", "run"),
    Param("max_minutes", "double", "Time limit (minutes)",
          "Stop, and write the weights, at the first epoch end past this wall time (0 = no limit).", "run",
          default=0.0, decimals=1),
)

_ARG_TYPES = {"integer": int, "double": float, "string-enumeration": str, "file": str, "directory": str}
_BY_NAME = {p.name: p for p in PARAMETERS}

DESCRIPTION = ("Train CycleINR weights (arbitrary-scale slice-axis super-resolution, CVPR 2024) on thin-slice "
               "CT or MR volumes. Thick slices are simulated at random scales; the network learns to restore the "
               "thin slices with an L1 fit loss plus the cycle-consistent loss. The weights it writes are used by "
               "the CycleINR upsampling module (model: a .safetensors file).")


# ----------------------------------------------------------------------------------------- generation

def sem_xml() -> str:
    """The SlicerExecutionModel description of the parameters (the CycleINRTrain.xml text)."""
    root = ET.Element("executable")
    header = (("category", CATEGORY), ("title", "CycleINR Train"), ("description", DESCRIPTION),
              ("version", __version__), ("documentation-url", "https://github.com/CycleINR/SlicerCycleINR/blob/main/CycleINRTrain/README.md"), ("license", "Apache-2.0"),
              ("contributor", "CycleINR developers (CycleINR project)"),
              ("acknowledgements", "Method: W. Fang et al., CycleINR: Cycle Implicit Neural Representation for "
                                   "Arbitrary-Scale Volumetric Super-Resolution of Medical Data, CVPR 2024."))
    for tag, text in header:
        ET.SubElement(root, tag).text = text
    for key, label, description, advanced in GROUPS:
        group = ET.SubElement(root, "parameters", {"advanced": "true"} if advanced else {})
        ET.SubElement(group, "label").text = label
        ET.SubElement(group, "description").text = description
        for p in (p for p in PARAMETERS if p.group == key):
            attrs = {}
            if p.multiple:
                attrs["multiple"] = "true"
            if p.extensions:
                attrs["fileExtensions"] = ",".join(p.extensions)
            element = ET.SubElement(group, p.tag, attrs)
            ET.SubElement(element, "name").text = p.name
            if p.flag:
                ET.SubElement(element, "flag").text = p.flag
            ET.SubElement(element, "longflag").text = p.name
            ET.SubElement(element, "label").text = p.label
            ET.SubElement(element, "description").text = p.description
            if p.channel:
                ET.SubElement(element, "channel").text = p.channel
            if p.sem_default() is not None:
                ET.SubElement(element, "default").text = p.sem_default()
            for choice in p.choices:
                ET.SubElement(element, "element").text = choice
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {key: parser.add_argument_group(label.lower(), description)
              for key, label, description, _ in GROUPS}
    for p in PARAMETERS:
        help_text = f"{p.label}: {p.description}".replace("%", "%%")
        if p.name == "training":
            help_text += " Required unless --training_folder is given."
        kwargs: dict[str, Any] = {"dest": p.name, "help": help_text}
        if p.tag == "boolean":
            kwargs["action"] = "store_true"
        elif p.multiple:
            kwargs.update(action="extend", nargs="+", metavar="PATH", default=None)
        else:
            kwargs.update(type=_ARG_TYPES[p.tag], default=p.default)
            if not p.choices:
                kwargs["metavar"] = {"integer": "N", "double": "X"}.get(p.tag, "PATH")
            if p.required:
                kwargs["required"] = True
        if p.choices:
            kwargs["choices"] = p.choices
        groups[p.group].add_argument(*p.option_strings(), **kwargs)


class _XmlAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(sem_xml())
        sys.stdout.flush()
        parser.exit(0)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default to show (not for files left unset)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers):
    """Register ``cycleinr train``."""
    p = subparsers.add_parser("train", help="train CycleINR weights on thin-slice volumes", description=DESCRIPTION,
                              formatter_class=_DefaultsHelp)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_argparser() -> argparse.ArgumentParser:
    """The standalone parser of CycleINRTrain (the Slicer CLI): the same options plus ``--xml``."""
    p = argparse.ArgumentParser(prog=NAME, description=DESCRIPTION, formatter_class=_DefaultsHelp)
    p.add_argument("--xml", action=_XmlAction, help="print the Slicer execution-model XML description and exit")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> int:
    """Entry point of CycleINRTrain.py: errors as one ``cycleinr: error:`` line and exit status 2."""
    args = build_argparser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"cycleinr: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2


# ------------------------------------------------------------------------------------------ checks

def _split_paths(values) -> list[str]:
    """Paths given to a multiple-file option: repeated, space- or comma-separated (Slicer's file box)."""
    paths = []
    for value in values or ():
        value = value.strip()
        if "," in value and not os.path.exists(value):
            paths += [v.strip() for v in value.split(",") if v.strip()]
        elif value:
            paths.append(value)
    return paths


def _min_validation_slices(settings: TrainSettings) -> int:
    """Validation simulates at least 2 thick slices at each validation scale."""
    return int(math.ceil(max(settings.validation_scales) - 1e-9)) + 1


def _model_overrides(args) -> dict:
    base = PRESETS[args.preset]
    overrides = {}
    for key in ("features", "code_length", "decoder_width", "decoder_layers"):
        value = getattr(args, key)
        if value < 0:
            raise ValueError(f"--{key} must be >= 0 (0 keeps the preset's value), got {value}")
        if value and value != getattr(base, key):
            overrides[key] = value
    layers = overrides.get("decoder_layers", base.decoder_layers)
    if layers < 2:
        raise ValueError(f"--decoder_layers must be at least 2, got {layers}")
    if not 1 <= base.skip_layer < layers:
        overrides["skip_layer"] = max(1, layers // 2)
    if args.no_lam:
        overrides["neighbours"] = 0
    if args.residual != base.residual:
        overrides["residual"] = args.residual
    preset(args.preset, **overrides)          # raises ValueError for an impossible configuration
    return overrides


def settings_from_args(args) -> TrainSettings:
    """TrainSettings of the parsed options (ValueError for values that cannot train)."""
    for name in ("iterations", "halve_every", "checkpoint_every", "validate_every", "patch", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate:g}")
    if args.max_minutes < 0:
        raise ValueError(f"--max_minutes must be >= 0 (0 = no limit), got {args.max_minutes:g}")
    if not 0 <= args.validation_fraction < 1:
        raise ValueError(f"--validation_fraction must be in [0, 1), got {args.validation_fraction:g}")
    values = {p.setting: getattr(args, p.name) for p in PARAMETERS if p.setting}
    return TrainSettings(**values, model_overrides=_model_overrides(args),
                         max_minutes=args.max_minutes if args.max_minutes > 0 else None)


def check_output(path: str | os.PathLike) -> Path:
    """The output must be a .safetensors file in an existing, writable folder, checked before any
    training time is spent (the same check as ``cycleinr upsample``'s outputs)."""
    return outputs.check_output(path, (".safetensors",), "output")


def check_training_volumes(volumes: list[Volume], settings: TrainSettings) -> None:
    """Every volume must hold a whole training patch along each of its slice axes at every training
    scale, or ``sample_batch`` would fail in the middle of training."""
    low = thin_slices_touched(settings.lr_slices, settings.scale_min)
    high = thin_slices_touched(settings.lr_slices, settings.scale_max)
    for vol in volumes:
        shape = vol.array.shape
        for axis in vol.slice_axes:
            n = shape[axis]
            plane = tuple(shape[a] for a in range(3) if a != axis)
            if n < high:
                which = "smallest" if n < low else "largest"
                raise ValueError(
                    f"{vol.name}: {n} slices along {AXIS_NAMES[axis]} are too thin for the {which} training scale: "
                    f"{settings.lr_slices} thick slices per patch need {low} thin slices at scale "
                    f"{settings.scale_min:g} and {high} at scale {settings.scale_max:g}. Lower --thick_slices or "
                    "--scale_max, or train on volumes with more slices")
            if min(plane) < settings.patch:
                raise ValueError(f"{vol.name}: size {plane[1]}x{plane[0]} across slice axis {AXIS_NAMES[axis]} is "
                                 f"smaller than the {settings.patch}x{settings.patch} training patch; lower --patch")


def check_validation_volumes(arrays: list[np.ndarray], names: list[str], settings: TrainSettings) -> None:
    need = _min_validation_slices(settings)
    for array, name in zip(arrays, names, strict=True):
        if array.shape[0] < need:
            raise ValueError(f"validation volume {name}: {array.shape[0]} slices; validation at scale "
                             f"{max(settings.validation_scales):g} needs at least {need}")


def hold_out(volumes: list[Volume], fraction: float, settings: TrainSettings
             ) -> tuple[list[Volume], list[np.ndarray], list[str], str]:
    """Split off validation data: whole volumes (the last ones), or with a single volume a contiguous
    slab at its end (along z). Returns training volumes, validation arrays and names, and a note."""
    if len(volumes) > 1:
        count = min(max(1, round(fraction * len(volumes))), len(volumes) - 1)
        held = volumes[-count:]
        names = [v.name for v in held]
        note = (f"validation: holding out {count} of {len(volumes)} training volumes ({', '.join(names)}); "
                "they are not trained on")
        return volumes[:-count], [v.array for v in held], names, note
    vol = volumes[0]
    n = vol.array.shape[0]
    count = max(int(round(fraction * n)), _min_validation_slices(settings))
    keep = n - count
    needed = thin_slices_touched(settings.lr_slices, settings.scale_max)
    if keep < needed:
        raise ValueError(f"{vol.name}: {n} slices are too few to hold out a {count}-slice validation slab and keep "
                         f"the {needed} slices training needs; give validation volumes, more slices or a smaller "
                         "--validation_fraction")
    train_part = Volume(np.ascontiguousarray(vol.array[:keep]), f"{vol.name} (slices 0-{keep - 1})", vol.slice_axes)
    name = f"{vol.name} (slices {keep}-{n - 1})"
    note = (f"validation: only one training volume, so its last {count} of {n} slices (slices {keep}-{n - 1}) are "
            f"held out for validation and training uses slices 0-{keep - 1}")
    return [train_part], [np.ascontiguousarray(vol.array[keep:])], [name], note


# ---------------------------------------------------------------------------------------- progress

class Progress:
    """Slicer CLI progress tags on stdout, or a one-line bar when stdout is a terminal."""

    def __init__(self, epochs: int, max_minutes: float | None = None, stream=None, xml: bool | None = None,
                 name: str = NAME):
        self.stream = stream if stream is not None else sys.stdout
        self.xml = (not _isatty(self.stream)) if xml is None else xml
        self.epochs, self.max_minutes, self.name = epochs, max_minutes, name
        self.started = time.perf_counter()
        self.last = -1.0
        self.first_epoch: int | None = None
        self.bar_open = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def start(self, comment: str, epoch: int = 0) -> None:
        if self.xml:
            self._write(f"<filter-start>\n<filter-name>{self.name}</filter-name>\n"
                        f"<filter-comment>{_esc(comment)}</filter-comment>\n</filter-start>\n")
        else:
            self.note(comment)
        self.first_epoch = epoch
        self.fraction(self._fraction(epoch), comment)

    def _fraction(self, epoch: int) -> float:
        value = epoch / self.epochs
        if self.max_minutes:
            value = max(value, (time.perf_counter() - self.started) / (60 * self.max_minutes))
        return min(value, 1.0)

    def fraction(self, value: float, comment: str) -> None:
        if self.xml:
            text = f"<filter-progress>{value:.4f}</filter-progress>\n" if value > self.last else ""
            self._write(text + f"<filter-comment>{_esc(comment)}</filter-comment>\n")
        else:
            filled = int(round(30 * value))
            self._write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * value:5.1f}% {comment}\033[K")
            self.bar_open = True
        self.last = max(self.last, value)

    def epoch(self, record: dict) -> None:
        epoch = record["epoch"]
        comment = epoch_comment(record)
        done = epoch - (self.first_epoch or 0)
        if done > 0 and epoch < self.epochs:
            eta = (time.perf_counter() - self.started) / done * (self.epochs - epoch)
            if self.max_minutes:
                eta = min(eta, max(0.0, 60 * self.max_minutes - (time.perf_counter() - self.started)))
            comment += f", ETA {_duration(eta)}"
        self.fraction(self._fraction(epoch), comment)

    def note(self, text: str) -> None:
        """A plain line (Slicer shows it in the CLI's output; a terminal gets it above the bar)."""
        if self.bar_open:
            self._write("\n")
            self.bar_open = False
        self._write(f"cycleinr: {text}\n")

    def end(self, seconds: float) -> None:
        if self.xml:
            self._write(f"<filter-end>\n<filter-name>{self.name}</filter-name>\n"
                        f"<filter-time>{seconds:.1f}</filter-time>\n</filter-end>\n")
        elif self.bar_open:
            self._write("\n")
            self.bar_open = False


def epoch_comment(record: dict) -> str:
    text = f"epoch {record['epoch']}/{record['epochs']} loss {record.get('loss_total', float('nan')):.5f}"
    if "loss_cycle" in record:
        text += f" (fit {record['loss_fit']:.5f}, cycle {record['loss_cycle']:.5f})"
    if "val_psnr" in record:
        text += f", val PSNR {record['val_psnr']:.2f} dB"
    return text


def _esc(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ------------------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistEnv:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ=None) -> DistEnv:
        environ = os.environ if environ is None else environ
        world = int(environ.get("WORLD_SIZE") or 1)
        if world <= 1:
            return cls()
        return cls(int(environ.get("RANK") or 0), world, int(environ.get("LOCAL_RANK") or 0))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    device = select_device(requested)                  # ValueError: cuda requested without CUDA
    if env.active and device.type == "cuda":
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise ValueError(f"LOCAL_RANK {env.local_rank} but only {count} CUDA device(s) are visible; start "
                             f"torchrun with --nproc_per_node={count} or fewer")
        device = torch.device("cuda", env.local_rank)
    return device


@contextlib.contextmanager
def _distributed_training(env: DistEnv, device: torch.device, max_minutes: float | None):
    """One process of a torchrun job: yields the ``train.Parallel`` hooks (DDP around the loss module,
    rank 0's decision to stop on time shared by all) and checks at the end that all weights agree."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world)
    wrapped = []

    def wrap(module):
        wrapped.append(DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None))
        return wrapped[-1]

    def agree(local: bool) -> bool:
        decision = [local]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    try:
        yield Parallel(env.rank, env.world, wrap, agree)
        _check_in_sync(dist, [ddp.module.model for ddp in wrapped])
    finally:
        dist.destroy_process_group()


def _check_in_sync(dist, nets) -> None:
    """After training, every process must hold bit-identical weights (a cheap guard on the wrapping)."""
    digest = hashlib.sha256()
    for net in nets:
        for tensor in net.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError("distributed training processes ended with different weights; please report this")


# ---------------------------------------------------------------------------------------------- run

def _load(paths: list[str], axes, what: str) -> list[Volume]:
    try:
        return load_volumes(paths, axes, min_slices=2)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(json.loads(path.with_suffix(".json").read_text()).get("epoch", 0))
    except (OSError, ValueError, AttributeError):
        return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (torchrun, a batch system) ends training like Ctrl-C: with a checkpoint."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:                          # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    env = DistEnv.from_environ()
    settings = settings_from_args(args)
    device = resolve_device(args.device, env)
    output = check_output(args.output)
    checkpoint = output.with_name(output.stem + ".ckpt.safetensors")
    resume = Path(args.resume) if args.resume else None
    if resume is not None and not resume.is_file():
        raise ValueError(f"resume checkpoint {resume} not found")

    train_paths = _split_paths(args.training) + ([args.training_folder] if args.training_folder else [])
    if not train_paths:
        raise ValueError("no training volumes given; use --training FILE[,FILE...] and/or --training_folder FOLDER")
    volumes = _load(train_paths, AXES[args.slice_axes], "training data")
    val_paths = _split_paths(args.validation)
    if val_paths and args.validation_fraction > 0:
        raise ValueError("give validation volumes or a validation fraction, not both")
    note = None
    if val_paths:
        held = _load(val_paths, (0,), "validation data")
        validation, val_names = [v.array for v in held], [v.name for v in held]
    elif args.validation_fraction > 0:
        volumes, validation, val_names, note = hold_out(volumes, args.validation_fraction, settings)
    else:
        validation, val_names = [], []
    check_training_volumes(volumes, settings)
    check_validation_volumes(validation, val_names, settings)

    start_epoch = _checkpoint_epoch(resume) if resume else 0
    if start_epoch >= settings.epochs:
        raise ValueError(f"checkpoint {resume} is at epoch {start_epoch}; ask for more --epochs than that")
    progress = Progress(settings.epochs, settings.max_minutes, xml=None) if env.writer else None
    what = (f"training {settings.preset} CycleINR on {len(volumes)} volume(s), scales "
            f"{settings.scale_min:g}-{settings.scale_max:g}, {settings.epochs} epochs on {device}"
            + (f" x {env.world} processes" if env.active else "")
            + (f", resuming at epoch {start_epoch}" if resume else ""))
    if progress:
        progress.start(what, start_epoch)
        if note:
            progress.note(note)
    info = {"command": NAME, "slice_axes": args.slice_axes, "validation": val_names, "processes": env.world}
    started = time.perf_counter()

    def log(record: dict) -> None:
        if progress:
            progress.epoch(record)

    try:
        with _sigterm_as_interrupt(), (_distributed_training(env, device, settings.max_minutes) if env.active
                                       else contextlib.nullcontext()) as parallel:
            summary = train(volumes, settings, output, validation=validation, resume=resume, device=device,
                            log=log, info=info, parallel=parallel)
    except (KeyboardInterrupt, Cancelled):
        if env.writer:
            hint = f"; continue with --resume {checkpoint}" if checkpoint.is_file() else ""
            print(f"cycleinr: interrupted; checkpoint {checkpoint} holds the last complete epoch{hint}",
                  file=sys.stderr, flush=True)
        return 130
    seconds = time.perf_counter() - started
    if progress:
        progress.end(seconds)
        best = summary["best"]
        if validation:
            detail = f"best validation PSNR {best['val_psnr']:.2f} dB at epoch {best['epoch']}"
        else:
            detail = f"epoch {summary['epoch']}"
        progress.note(f"wrote {output} ({detail}) and checkpoint {checkpoint} in {_duration(seconds)} on {device}")
    return 0
