"""``cycleinr upsample --adapt SECONDS [--save-adapted PATH]``: the command-line side of ``adapt``.

Kept apart from ``upsample_cmd`` so that command only calls a few functions: add the options, check them
before any work (a bad budget or an unwritable weights path fails before minutes of adaptation), pass
them to ``inference.upsample(adapt=...)`` (the one code path, as in Python), report what it did, and stage
the adapted weights with the other outputs (all appear together, or none).
"""

from __future__ import annotations

import os
from pathlib import Path

from .adapt import check_budget, save_adapted
from .outputs import check_distinct, check_output
from .weights import json_path, models_dir


def add_options(p) -> None:
    p.add_argument("--adapt", type=float, metavar="SECONDS",
                   help="first fine-tune a copy of the model on this scan's own in-plane axes for at most SECONDS "
                        "(self-supervised, e.g. 120 on a CPU); the model files are never changed")
    p.add_argument("--save-adapted", metavar="PATH", help="with --adapt: also keep the adapted weights "
                                                          "(.safetensors + .json beside it)")
    p.add_argument("--degradation", default="interval", choices=["interval", "slab"],
                   help="with --adapt: the thick slices' profile, interval (point samples, the default) or slab "
                        "(slices as thick as their spacing)")
    p.add_argument("--adapt-seed", type=int, default=0, metavar="N", help="with --adapt: random seed of the adaptation and of the added noise "
                   "(noise matching) (default 0)")


def check_options(args, model_source: str | None = None, outputs: dict | None = None) -> Path | None:
    """Validate the adaptation options; returns the --save-adapted path (checked writable, distinct from
    ``outputs`` {option: path}, not the model's own file, not in the bundled folder) or None."""
    if args.adapt is None:
        if args.save_adapted:
            raise ValueError("--save-adapted needs --adapt SECONDS (there is nothing adapted to save)")
        return None
    check_budget(args.adapt)
    if not args.save_adapted:
        return None
    path = check_output(args.save_adapted, (".safetensors",), "--save-adapted")
    check_output(json_path(path), (".json",), "--save-adapted configuration")
    check_distinct({**(outputs or {}), "--save-adapted": path, "--save-adapted configuration": json_path(path)},
                   [args.input])
    if _same(path.parent, models_dir()):
        raise ValueError(f"--save-adapted {path} is in the bundled models folder, which is never modified; "
                         "save the adapted weights elsewhere")
    if model_source and _same(path, model_source):
        raise ValueError(f"--save-adapted {path} would replace the model it adapts; give a new file name")
    return path


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def upsample_options(args, say) -> dict:
    """The ``upsample`` keywords that adapt the model to the scan first (none without --adapt)."""
    if args.adapt is None:
        return {}

    def progress(elapsed, budget):
        say(f"progress {100 * elapsed / budget:.1f}% (adapting to this scan, {elapsed:.0f}/{budget:g} s)")

    say(f"adapting the model to this scan for at most {args.adapt:g} s")
    return {"adapt": args.adapt, "degradation": args.degradation, "seed": args.adapt_seed, "adapt_progress": progress}


def report_entry(args, net, adaptation: dict | None, say) -> dict | None:
    """The report's "adaptation" entry (the scan and base model named), said in one line; None without."""
    if adaptation is None:
        return None
    report = {"source_scan": Path(args.input).name, "model": str(getattr(net, "source", args.model)), **adaptation}
    say(f"adapted in {report['seconds']:.1f} s, {report['iterations']} steps: loss on the fixed patches "
        f"{report['loss_before']:.4g} -> {report['loss_after']:.4g}; used the {report['kept']} weights")
    return report


def stage_adapted(staged, path: Path | None, net, report: dict | None) -> None:
    """Write the adapted weights and their JSON through ``staged`` (renamed with the other outputs)."""
    if path is None or report is None:
        return
    made: dict[str, Path] = {}

    def weights(tmp):
        save_adapted(tmp, net, report, report["source_scan"])      # tmp + its .json beside it
        made["json"] = json_path(Path(tmp))

    try:
        staged.write(path, weights, ".safetensors")
        staged.write(json_path(path), lambda tmp: os.replace(made["json"], tmp), ".json")
    finally:
        if "json" in made:
            made["json"].unlink(missing_ok=True)
