"""``cycleinr batch``: upsample many volumes into one folder with one model load.

Research staff process whole studies: inputs are volume files, DICOM series folders, or folders holding
either (one level deep). Each volume becomes ``OUTDIR/<name>_<thickness>mm<ext>`` (``_x<factor>`` with
``--factor``); an existing output counts as done and is skipped (outputs are renamed into place only
when complete, so an existing one is whole), so an interrupted batch resumes where it stopped. A volume
that fails gets its own error line and ``error`` row and the others go on; the exit status is then 1.
Mistakes in the command itself (options, output folder, model) still end with ``cycleinr: error:`` and
exit status 2 before any volume is read. ``summary.csv`` gets one row per volume (status, SNLI of input
and output, seconds) and is rewritten after every volume.

Under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1) the same command shares the volumes: rank r takes
volumes i with i % N == r, on GPU LOCAL_RANK when CUDA is used; each rank writes ``summary.rank<r>.csv``
and rank 0 merges them into ``summary.csv`` at the end.
"""

from __future__ import annotations

import csv
import datetime
import io
import sys
from pathlib import Path

from . import volume_io
from .data import VOLUME_SUFFIXES
from .geometry import resolve_target_spacing
from .inference import Cancelled
from .outputs import CSV_FORMATS, VOLUME_FORMATS, OutputError, Staged, check_output, format_of, resolved
from .upsample_cmd import (
    add_model_options,
    add_size_options,
    check_input,
    check_options,
    input_warnings,
    prepare_model,
    snli_value,
    upsample_volume,
)
from .volume_io import dicom_series_ids, read_volume, write_image_file

INPUT_SUFFIXES = VOLUME_SUFFIXES          # what training reads, batch reads
COLUMNS = ("input", "output", "status", "seconds", "snli_input", "snli_output", "slices_input", "slices_output",
           "input_spacing", "target_spacing", "model", "device", "message")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "batch", help="upsample many volumes (files, DICOM folders, folders of them) into one folder",
        description="Upsample every INPUT into OUTDIR with one model load; skips outputs that exist, "
                    "goes on after a failed volume, writes OUTDIR/summary.csv. Under torchrun the volumes "
                    "are shared between the processes.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="volume files, DICOM series folders, or folders holding them (searched one level deep)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    add_size_options(p)
    add_model_options(p)
    p.add_argument("--format", default=".nrrd", choices=VOLUME_FORMATS, help="output file type (default .nrrd)")
    p.add_argument("--summary", metavar="CSV", help="summary table path (default OUTDIR/summary.csv)")
    p.add_argument("--figures", action="store_true", help="also write a comparison PNG beside each output")
    p.add_argument("--force", action="store_true", help="upsample again even when the output exists")
    p.set_defaults(func=run)
    return p


def is_dicom_folder(path: Path) -> bool:
    return bool(dicom_series_ids(path))


def find_inputs(paths) -> list[Path]:
    """Expand the command's INPUTs into volumes, in the given order (folders: sorted by name)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"input {path}: no such file or folder")
        if path.is_file():
            found.append(path)
        elif is_dicom_folder(path):
            found.append(path)
        else:
            inside = sorted(c for c in path.iterdir() if (c.is_file() and c.name.lower().endswith(INPUT_SUFFIXES))
                            or (c.is_dir() and is_dicom_folder(c)))
            if not inside:
                dicom = "" if volume_io.sitk is not None else f" (reading DICOM {volume_io.NEEDS_SIMPLEITK})"
                raise ValueError(f"input folder {path} holds no volume files ({', '.join(INPUT_SUFFIXES)}) and "
                                 f"no DICOM series (directly or one level down){dicom}")
            found.extend(inside)
    return found


def check_not_inputs(outdir: Path, given, inputs: list[Path], outputs: list[Path]) -> None:
    """Outputs never replace an input, and never land in an input folder, where the next run would take
    them for inputs (and upsample them again)."""
    folders = {resolved(g) for g in given if Path(g).is_dir() and not is_dicom_folder(Path(g))}
    if resolved(outdir) in folders:
        raise OutputError(f"--out {outdir} is an input folder: the results would be read as inputs by the next "
                          "run, and could replace input files; write them to another folder")
    sources = {resolved(i): i for i in inputs}
    for out in outputs:
        if resolved(out) in sources:
            raise OutputError(f"the output {out} would replace the input {sources[resolved(out)]}; write the "
                              "results to another folder (--out)")


def volume_name(path: Path) -> str:
    name = path.name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_name(path: Path, args) -> str:
    size = f"{args.thickness:g}mm" if args.thickness is not None else f"x{args.factor:g}"
    return f"{volume_name(path)}_{size}{args.format}"


def shard(items: list, rank: int, world: int) -> list[int]:
    """Indices this process handles: i % world == rank."""
    return [i for i in range(len(items)) if i % world == rank]


class Progress:
    """A one-line bar on a terminal; plain ``progress NN.N%`` lines otherwise (logs, the Slicer panel)."""

    def __init__(self, total: int, quiet: bool, stream=None):
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = -1.0

    def update(self, index: int, fraction: float, name: str) -> None:
        if self.quiet or self.total == 0:
            return
        share = 100 * (index + fraction) / self.total
        if self.tty:
            filled = int(share / 100 * 30)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:5.1f}%  {index + 1}/{self.total} {name[:40]}")
            self.stream.flush()
        elif share - self._last >= 1 or (fraction >= 1 and share > self._last):
            self._last = share
            print(f"cycleinr: progress {share:.1f}% (volume {index + 1}/{self.total})", file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """A per-volume line, printed above the bar."""
        if self.tty and not self.quiet:
            self.stream.write("\r" + " " * 100 + "\r")
        print(f"cycleinr: {text}", file=self.stream, flush=True)


def write_summary(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with Staged() as staged:
        staged.write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), encoding="utf-8"), ".csv")
        staged.commit()


def process_one(path: Path, out: Path, args, net, device, chosen: str, progress) -> dict:
    """Upsample one volume into ``out``; returns its summary row (raises on failure)."""
    volume, geometry, _ = read_volume(path)
    target = resolve_target_spacing(geometry.slice_spacing, args.thickness, args.factor)
    check_input(volume, geometry, target, chosen)
    warnings = input_warnings(volume, geometry.slice_spacing / target, net, chosen, geometry.spacing)
    done = upsample_volume(volume, geometry, target, net, device, args, progress)
    array = done["array"]
    with Staged() as staged:
        staged.write(out, lambda tmp: write_image_file(tmp, array, done["geometry"]), args.format)
        if args.figures:
            from .comparison import comparison_figure
            staged.write(out.with_name(out.name[: -len(args.format)] + ".png"),
                         lambda tmp: comparison_figure(tmp, volume, array, geometry.spacing, target, geometry.direction,
                                                       title=f"{path.name} -> {target:g} mm, model {chosen}"), ".png")
        staged.commit()
    return {"status": "done", "seconds": round(done["seconds"], 2), "snli_input": round(snli_value(volume), 4),
            "snli_output": round(snli_value(array), 4), "slices_input": volume.shape[0], "slices_output": array.shape[0],
            "input_spacing": geometry.slice_spacing, "target_spacing": round(target, 6), "message": "; ".join(warnings)}


def run(args) -> int:
    from .train_cli import DistEnv, resolve_device

    env = DistEnv.from_environ()
    outdir = Path(args.out)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"--out {outdir} is a file; give a folder")
    if not outdir.parent.is_dir():
        raise OutputError(f"--out {outdir}: folder {outdir.parent} does not exist; create it first")
    summary = Path(args.summary) if args.summary else outdir / "summary.csv"
    if summary.parent != outdir:
        check_output(summary, CSV_FORMATS, "--summary")
    elif format_of(summary, CSV_FORMATS) is None:
        raise OutputError(f"--summary {summary}: use a name ending in .csv")
    check_options(args)
    inputs = find_inputs(args.inputs)
    outputs = [outdir / output_name(p, args) for p in inputs]
    dupes = {o for o in outputs if outputs.count(o) > 1}
    if dupes:
        raise ValueError(f"several inputs would be written to {sorted(dupes)[0]}; rename them or run them separately")
    check_not_inputs(outdir, args.inputs, inputs, outputs)
    if env.active:
        args.device = str(resolve_device(args.device, env))
    device, net, chosen = prepare_model(args)
    outdir.mkdir(exist_ok=True)
    check_output(outdir / f"probe{args.format}", VOLUME_FORMATS, "--out")
    check_output(summary, CSV_FORMATS, "--summary")
    mine = shard(inputs, env.rank, env.world)
    own_summary = summary.with_name(f"{summary.stem}.rank{env.rank}.csv") if env.active else summary
    bar = Progress(len(mine), args.quiet)
    who = f"rank {env.rank}/{env.world}: " if env.active else ""
    bar.line(f"{who}{len(mine)} of {len(inputs)} volume(s) -> {outdir}; model {chosen} on {device}")
    rows, failed = [], 0
    for n, i in enumerate(mine):
        path, out = inputs[i], outputs[i]
        row = {"input": str(path), "output": str(out), "model": chosen, "device": str(device)}
        if out.exists() and not args.force:
            row.update(status="skipped", message="output exists (use --force to redo)")
            bar.line(f"[{n + 1}/{len(mine)}] {path.name}: skipped, {out.name} exists")
        else:
            try:
                row.update(process_one(path, out, args, net, device, chosen,
                                       lambda d, t, n=n, name=path.name: bar.update(n, d / t, name)))
                bar.line(f"[{n + 1}/{len(mine)}] {path.name}: wrote {out.name} in {row['seconds']:.1f} s, "
                         f"SNLI {row['snli_input']:.3f} -> {row['snli_output']:.3f}"
                         + (f" (warning: {row['message']})" if row["message"] else ""))
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as exc:              # one bad volume must not stop the others
                failed += 1
                reason = " ".join(str(exc).split()) or type(exc).__name__
                row.update(status="error", message=reason)
                bar.line(f"[{n + 1}/{len(mine)}] {path.name}: error: {reason}")
        rows.append(row)
        write_summary(own_summary, rows)
        bar.update(n, 1.0, path.name)
    if env.active:
        failed = _merge_ranks(env, summary, len(inputs))
    done = sum(r["status"] == "done" for r in rows)
    bar.line(f"{who}{done} done, {sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed; "
             f"summary in {summary}")
    return 1 if failed else 0


def _merge_ranks(env, summary: Path, count: int) -> int:
    """Wait for every rank, then rank 0 merges the per-rank tables (in input order) into ``summary``."""
    import torch.distributed as dist

    if not dist.is_initialized():              # ranks may finish hours apart: wait as long as it takes
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world, timeout=datetime.timedelta(days=7))
    try:
        dist.barrier()
        failed = 0
        if env.writer:
            parts = [summary.with_name(f"{summary.stem}.rank{r}.csv") for r in range(env.world)]
            per_rank = [list(csv.DictReader(p.open(encoding="utf-8"))) if p.exists() else [] for p in parts]
            rows = [per_rank[i % env.world][i // env.world] for i in range(count)
                    if i // env.world < len(per_rank[i % env.world])]
            write_summary(summary, rows)
            for p in parts:
                p.unlink(missing_ok=True)
            failed = sum(r["status"] == "error" for r in rows)
        flag = [failed]
        dist.broadcast_object_list(flag, src=0)
        return int(flag[0])
    finally:
        dist.destroy_process_group()

