"""``cycleinr upsample``: the command that the Slicer panel runs in a background process.

Progress goes to stderr as ``cycleinr: progress NN.N% ...`` lines; a bad input ends with exit status 2
and one line ``cycleinr: error: <reason>``, before any upsampling: output paths, options and the model are
checked before the input is even read. Outputs (volume, report, figure) appear together, only once all
of them are complete. Input the model was not trained for (scale, intensities) gets a stated warning.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import adapt_cli
from .geometry import output_slice_count, resolve_target_spacing
from .inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    DEFAULT_WINDOW,
    ENSEMBLE_SIZES,
    NOISE_MODES,
    PRECISIONS,
    select_device,
    upsample,
)
from .metrics import snli
from .outputs import (
    FIGURE_FORMATS,
    REPORT_FORMATS,
    VOLUME_FORMATS,
    Staged,
    check_distinct,
    check_output,
    format_of,
)
from .volume_io import cast_like, read_volume, write_image_file
from .weights import BUNDLED, load_model, model_for_device

MODEL_HELP = ("auto (the default: the bundled model chosen for the device, 'fast' on CUDA and CPU today), "
              "default, fast, or a .safetensors weights file whose .json configuration (same name) lies beside it")
DEVICE_HELP = "auto (CUDA when torch sees a GPU, else CPU), cpu or cuda"


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (an error at parse time, before any work)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def add_parser(subparsers):
    p = subparsers.add_parser("upsample", help="upsample a volume along its slice axis",
                              description="Upsample INPUT along its slice axis (IJK axis K) and write OUTPUT "
                                          "with the same origin and direction and the new slice spacing.")
    p.add_argument("input", help="volume file (NIfTI, NRRD, MHA, ...) or DICOM series folder")
    p.add_argument("output", help=f"output volume file; its extension picks the format ({', '.join(VOLUME_FORMATS)})")
    add_size_options(p)
    add_model_options(p)
    p.add_argument("--report", metavar="JSON", help="also write SNLI of input and output and timing here (.json)")
    p.add_argument("--figure", metavar="PNG", help="also write an input-vs-output comparison picture here "
                                                   f"({', '.join(FIGURE_FORMATS)})")
    adapt_cli.add_options(p)
    p.set_defaults(func=run)
    return p


def add_size_options(p) -> None:
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--thickness", type=positive_float, metavar="MM", help="output slice spacing in mm")
    size.add_argument("--factor", type=positive_float, metavar="F",
                      help="upsampling factor (> 1) instead of --thickness; the models were trained on 2-6")


def add_model_options(p) -> None:
    """Options shared by ``upsample`` and ``batch``: which network, where, and how the volume is cut."""
    p.add_argument("--model", default="auto", help=MODEL_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.add_argument("--window", type=int_at_least(2), metavar="LR_SLICES",
                   help=f"input slices per window, >= 2 (default: sized for the device, {DEFAULT_WINDOW} on CPU for the paper-size model, 84 for the fast one)")
    p.add_argument("--overlap", type=int_at_least(0), metavar="LR_SLICES",
                   help=f"slices shared by neighbouring windows, 0 .. window-1 (default {DEFAULT_OVERLAP}, fitted "
                        "to a smaller --window)")
    p.add_argument("--tile", type=int_at_least(8), metavar="PIXELS",
                   help=f"in-plane tile size, >= 8 (default: {DEFAULT_TILE['cpu']} on CPU, sized for the GPU on CUDA)")
    p.add_argument("--noise", default="match", choices=NOISE_MODES,
                   help="match (default): give generated slices the noise level of the acquired ones (seeded "
                        "white noise of the variance they lack; slices sharper than the input there are "
                        "softened); none: the network's output as is (a conditional mean: smoother than "
                        "acquired slices, slightly higher PSNR on noisy CT)")
    p.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES, metavar="PASSES",
                   help="self-ensemble: average the network over 1 (default), 2, 4 or 8 flipped copies of the "
                        "input (z, then x, then y flips); N times the time, for a higher PSNR with the fast model "
                        "(held-out head CT: +0.1 to +0.25 dB with 2, +0.2 to +0.5 dB with 8; the paper-size model "
                        "gains at x2-x3 but loses at x5, see the model card)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bfloat16 on CUDA, float32 on a CPU; bfloat16: also on a CPU (faster on "
                        "CPUs with bf16 matrix units, e.g. AMX; outputs change by ~0.1 HU on average)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def check_options(args) -> None:
    """An overlap given must fit the window; one not given is the default, which inference fits to each
    axis itself (``--window 2``: 1 slice along z, 2 pixels in-plane)."""
    given = args.overlap is not None
    if not given:
        args.overlap = DEFAULT_OVERLAP
    if given and args.window is not None and args.overlap >= args.window:
        raise ValueError(f"--overlap {args.overlap} must be smaller than --window {args.window}")


def prepare_model(args):
    """Device and network, resolved and loaded before any input is read: a missing weights file or an
    absent GPU is reported before minutes of work, and 'auto' is said out loud."""
    device = select_device(args.device)
    spec = model_for_device(device) if str(args.model) == "auto" else args.model
    net = load_model(spec, device)
    chosen = f"{spec} (auto: {'paper-size model' if spec == 'default' else 'small model'})" \
        if str(args.model) == "auto" else str(spec)
    return device, net, chosen


BYTES_PER_OUTPUT_VOXEL = 12    # the float32 output, its noise-matched copy and the written cast, at once
MIN_HU_RANGE = 20              # even a flat CT region spans more through its noise; normalised MR (0-1, z-scores) less


def physical_memory() -> int | None:
    """This machine's memory in bytes where the OS says (POSIX), else None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_input(volume: np.ndarray, geometry, target: float, model_spec: str) -> None:
    """Refuse, before any work, what cannot give a usable result: an output larger than this machine's
    memory (a typo such as 0.001 mm), or data nowhere near HU for the bundled CT models (e.g. 0-1)."""
    n_out = output_slice_count(volume.shape[0], geometry.slice_spacing, target)
    need, have = n_out * volume.shape[1] * volume.shape[2] * BYTES_PER_OUTPUT_VOXEL, physical_memory()
    if have is not None and need > have:
        raise ValueError(f"a {target:g} mm target gives {n_out} slices of {volume.shape[2]} x {volume.shape[1]}, "
                         f"about {need / 2**30:.1f} GiB of memory, more than this machine's {have / 2**30:.1f} GiB; "
                         "choose a thicker target (or a smaller --factor)")
    if str(model_spec).split(" ")[0] in BUNDLED:
        low, high = float(volume.min()), float(volume.max())
        if high - low < MIN_HU_RANGE:
            raise ValueError(f"intensities {low:g}..{high:g} span less than {MIN_HU_RANGE} HU: this is not CT in "
                             "Hounsfield units, and the bundled CT models would change it by more than its range; "
                             "rescale it to HU, or upsample with a model trained on such data (cycleinr train)")


def input_warnings(volume: np.ndarray, factor: float, net, model_spec: str, spacing=None) -> list[str]:
    """What the model was not trained for: scales outside its training range, data that is not CT in HU,
    a slice axis K that is not the coarse one (``spacing``: ITK x, y, z in mm)."""
    settings = (getattr(net, "meta", {}) or {}).get("training", {}).get("settings", {})
    lo, hi = float(settings.get("scale_min", 2.0)), float(settings.get("scale_max", 6.0))
    found = []
    if factor > hi * (1 + 1e-6) or factor < lo * (1 - 1e-6):
        found.append(f"factor x{factor:.3g} is outside the scales the model was trained on (x{lo:g}-x{hi:g}); "
                     "the generated slices are an untested extrapolation")
    if str(model_spec).split(" ")[0] in BUNDLED:
        low, high = float(volume.min()), float(volume.max())
        if low > -200:
            found.append(f"intensities {low:g}..{high:g} do not look like CT in Hounsfield units (no air near "
                         "-1000 HU); the bundled models were trained on CT in HU only, so results on MR or "
                         "unscaled CT are not validated")
    note = coarse_axis_note(spacing) if spacing is not None else ""
    if note:
        found.append(note)
    return found


def coarse_axis_note(spacing) -> str:
    """Why K may be the wrong axis ('' if it is the coarse one): ``spacing`` is ITK (x, y, z) in mm."""
    if spacing[2] >= max(spacing[:2]) * (1 - 1e-6):
        return ""
    return (f"the slices along K are {spacing[2]:g} mm apart, finer than the in-plane pixels ({spacing[0]:g} x "
            f"{spacing[1]:g} mm): the thick axis seems to be I or J, but CycleINR upsamples along K only; "
            "reorient the volume so that its thick slices are along K")


def upsample_volume(volume, geometry, target: float, net, device, args, progress=None, adapt=None) -> dict:
    """Run the network on one volume (``adapt``: upsample's adaptation keywords, ``adapt_cli``); returns
    the output array, its geometry, the upsampling time (adaptation reports its own) and the adaptation."""
    start = time.perf_counter()
    sizes = {"window": args.window} if args.window is not None else {}     # else inference's default
    result = upsample(volume, geometry.spacing, target_spacing=target, model=net, device=device,
                      overlap=args.overlap, tile=args.tile, progress=progress, noise=args.noise,
                      precision=args.precision, ensemble=args.ensemble, **sizes,
                      **(adapt or {}))
    seconds = time.perf_counter() - start - (result.adaptation or {}).get("seconds", 0.0)
    array = cast_like(result.array, volume.dtype)
    return {"array": array, "geometry": result.geometry(geometry), "seconds": seconds,
            "adaptation": result.adaptation, "adapted_model": result.adapted_model}


def make_report(volume, array, geometry, target, chosen, net, device, seconds, warnings, noise,
                ensemble: int = 1) -> dict:
    return {"input": _snli_dict(volume), "output": _snli_dict(array), "factor": geometry.slice_spacing / target,
            "target_spacing": target, "input_spacing": geometry.slice_spacing, "model": chosen,
            "model_file": str(getattr(net, "source", "")), "device": str(device), "seconds": round(seconds, 3),
            "output_shape": list(array.shape), "warnings": warnings, "noise": noise,
            "ensemble": ensemble, "snli_note": "SNLI: spread of the per-slice noise level; lower = generated slices match acquired ones"}


def run(args) -> int:
    out = check_output(args.output, VOLUME_FORMATS, "output")
    report_path = check_output(args.report, REPORT_FORMATS, "--report") if args.report else None
    figure_path = check_output(args.figure, FIGURE_FORMATS, "--figure") if args.figure else None
    check_distinct({"output": out, "--report": report_path, "--figure": figure_path}, [args.input])
    check_options(args)
    device, net, chosen = prepare_model(args)
    adapt_path = adapt_cli.check_options(args, getattr(net, "source", None),
                                         {"output": out, "--report": report_path, "--figure": figure_path})
    volume, geometry, _ = read_volume(args.input)
    try:
        target = resolve_target_spacing(geometry.slice_spacing, args.thickness, args.factor)
    except ValueError as exc:
        note = coarse_axis_note(geometry.spacing) if "is not smaller than" in str(exc) else ""
        raise ValueError(f"{exc}; {note}" if note else str(exc)) from None
    check_input(volume, geometry, target, chosen)
    warnings = input_warnings(volume, geometry.slice_spacing / target, net, chosen, geometry.spacing)
    say = (lambda text: None) if args.quiet else (lambda text: print(f"cycleinr: {text}", file=sys.stderr, flush=True))
    say(f"model {chosen} on {device}")
    for text in warnings:
        print(f"cycleinr: warning: {text}", file=sys.stderr, flush=True)

    def progress(done, total):
        say(f"progress {100 * done / total:.1f}% (window {done}/{total})")

    done = upsample_volume(volume, geometry, target, net, device, args, progress, adapt_cli.upsample_options(args, say))
    array, seconds = done["array"], done["seconds"]
    adaptation = adapt_cli.report_entry(args, net, done["adaptation"], say)
    with Staged() as staged:
        staged.write(out, lambda tmp: write_image_file(tmp, array, done["geometry"]), format_of(out, VOLUME_FORMATS))
        if report_path:
            report = make_report(volume, array, geometry, target, chosen, net, device, seconds, warnings, args.noise,
                                 args.ensemble)
            if adaptation:
                report["adaptation"] = adaptation
            text = json.dumps(report, indent=1) + "\n"
            staged.write(report_path, lambda tmp: Path(tmp).write_text(text), ".json")
        if figure_path:
            from .comparison import comparison_figure
            title = f"{Path(args.input).name} -> {target:g} mm, model {chosen}"
            staged.write(figure_path, lambda tmp: comparison_figure(tmp, volume, array, geometry.spacing, target,
                                                                    geometry.direction, title=title),
                         format_of(figure_path, FIGURE_FORMATS))
        adapt_cli.stage_adapted(staged, adapt_path, done["adapted_model"], adaptation)
        written = staged.commit()
    print(f"cycleinr: wrote {', '.join(str(p) for p in written)} ({array.shape[0]} slices of {target:g} mm, from "
          f"{volume.shape[0]} of {geometry.slice_spacing:g} mm) in {seconds:.1f} s on {device}", file=sys.stderr,
          flush=True)
    return 0


def snli_value(volume) -> float:
    return float(snli(volume).value)


def _snli_dict(volume) -> dict:
    result = snli(volume)
    return {"snli": float(result.value), "sigmas": [round(float(s), 4) for s in result.sigmas]}
