"""``cycleinr upsample``: the command that the Slicer panel runs in a background process.

Progress goes to stderr as ``cycleinr: progress NN.N% ...`` lines; a bad input ends with exit status 2
and one line ``cycleinr: error: <reason>``. The output file appears only once complete.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .geometry import resolve_target_spacing
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_WINDOW, select_device, upsample
from .metrics import snli
from .volume_io import cast_like, read_volume, write_volume


def add_parser(subparsers):
    p = subparsers.add_parser("upsample", help="upsample a volume along its slice axis",
                              description="Upsample INPUT along its slice axis (IJK axis K) and write OUTPUT "
                                          "with the same origin and direction and the new slice spacing.")
    p.add_argument("input", help="volume file (NIfTI, NRRD, MHA, ...) or DICOM series folder")
    p.add_argument("output", help="output volume file; its extension picks the format")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--thickness", type=float, metavar="MM", help="output slice spacing in mm")
    size.add_argument("--factor", type=float, metavar="F", help="upsampling factor (> 1) instead of --thickness")
    p.add_argument("--model", default="default", help="default, fast, or a .safetensors weights file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="LR_SLICES",
                   help=f"input slices per window (default {DEFAULT_WINDOW})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, metavar="LR_SLICES",
                   help=f"slices shared by neighbouring windows (default {DEFAULT_OVERLAP})")
    p.add_argument("--tile", type=int, metavar="PIXELS",
                   help=f"in-plane tile size (default {DEFAULT_TILE['cpu']} on CPU, {DEFAULT_TILE['cuda']} on CUDA)")
    p.add_argument("--report", metavar="JSON", help="also write SNLI of input and output and timing here")
    p.add_argument("--figure", metavar="PNG", help="also write an input-vs-output comparison picture here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    out = Path(args.output)
    if not out.parent.exists():
        raise ValueError(f"output folder {out.parent} does not exist")
    volume, geometry, _ = read_volume(args.input)
    target = resolve_target_spacing(geometry.slice_spacing, args.thickness, args.factor)
    device = select_device(args.device)

    def progress(done, total):
        if not args.quiet:
            print(f"cycleinr: progress {100 * done / total:.1f}% (window {done}/{total})", file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = upsample(volume, geometry.spacing, target_spacing=target, model=args.model, device=device,
                      window=args.window, overlap=args.overlap, tile=args.tile, progress=progress)
    seconds = time.perf_counter() - start
    array = cast_like(result.array, volume.dtype)
    write_volume(out, array, result.geometry(geometry))
    if args.report:
        report = {"input": _snli_dict(volume), "output": _snli_dict(array), "factor": geometry.slice_spacing / target,
                  "target_spacing": target, "input_spacing": geometry.slice_spacing, "model": str(args.model),
                  "device": str(device), "seconds": round(seconds, 3), "output_shape": list(array.shape)}
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    if args.figure:
        from .comparison import comparison_figure
        comparison_figure(args.figure, volume, array, geometry.spacing, target,
                          title=f"{Path(args.input).name} -> {target:g} mm ({Path(str(args.model)).stem} model)")
        print(f"cycleinr: wrote {args.figure}", file=sys.stderr)
    print(f"cycleinr: wrote {out} ({array.shape[0]} slices of {target:g} mm, from {volume.shape[0]} of "
          f"{geometry.slice_spacing:g} mm) in {seconds:.1f} s on {device}", file=sys.stderr, flush=True)
    return 0


def _snli_dict(volume) -> dict:
    result = snli(volume)
    return {"snli": float(result.value), "sigmas": [round(float(s), 4) for s in result.sigmas]}
