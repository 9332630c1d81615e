"""``cycleinr evaluate``: the paper's simulated thick-slice protocol (section 4.1) on thin-slice volumes.

For every HR volume and scale r, a thick-slice volume is simulated (``degrade.simulate_thick``, offset 0),
upsampled by r with each method, and scored against the HR slices it lands on (output slice k = HR slice
k, for k = 0 .. (n_LR - 1) r). Scores: PSNR/SSIM on all of those slices and (``*_new``) only on the newly
generated ones, LPIPS (AlexNet, VGG; SqueezeNet is unavailable offline), SNLI, and a segmentation proxy
(Dice and 1 mm NSD of HU-threshold bone and soft-tissue masks). Writes ``results.csv`` (one row per
volume, scale and method, plus an ``HR`` row with the reference's own SNLI), ``results.md`` (means per
scale, laid out like the paper's Table 1) and figures.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import baselines, metrics
from .degrade import MODES, simulate_thick
from .geometry import slices_at_scale
from .noise import NOISE_MODES, generated_mask
from .outputs import Staged
from .volume_io import VolumeError, read_volume

MODEL_METHOD = "cycleinr"
LPIPS_NETS = ("alex", "vgg", "squeeze")
COLUMNS = ["volume", "scale", "method", "psnr", "ssim", "psnr_new", "ssim_new", "lpips_alex", "lpips_vgg",
           "lpips_squeeze", "snli", "dice_bone", "nsd_bone", "dice_soft", "nsd_soft", "seconds", "slices",
           "new_slices"]
# column -> (Markdown header, higher is better)
TABLE = {"psnr": ("PSNR (dB) ↑", True), "ssim": ("SSIM ↑", True), "psnr_new": ("PSNR new ↑", True),
         "ssim_new": ("SSIM new ↑", True), "lpips_alex": ("LPIPS alex ↓", False),
         "lpips_vgg": ("LPIPS vgg ↓", False), "lpips_squeeze": ("LPIPS squeeze ↓", False),
         "snli": ("SNLI (HU) ↓", False), "dice_bone": ("Dice bone ↑", True), "nsd_bone": ("NSD bone ↑", True),
         "dice_soft": ("Dice soft ↑", True), "nsd_soft": ("NSD soft ↑", True)}
ERROR_WINDOW = (-200.0, 200.0)
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".vtk", ".dcm")


class EvaluationError(ValueError):
    """A (volume, scale, method) that cannot be evaluated; the message is one line."""


# ------------------------------------------------------------------------------------------ methods

def parse_extra_model(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), path.strip()


class ModelMethod:
    """A CycleINR network used as an evaluation method; loaded once, on first use. ``noise`` is upsample's
    (default "match", what users get; "none" scores the network's own output)."""

    def __init__(self, spec: str, device: str, noise: str = "match"):
        self.spec, self.device, self.noise, self.model = spec, device, noise, None

    def load(self) -> None:
        if self.model is None:
            from .inference import select_device
            from .weights import load_model
            self.model = load_model(self.spec, select_device(self.device))

    def __call__(self, lr: np.ndarray, spacing, factor: float) -> np.ndarray:
        from .inference import upsample
        self.load()
        return upsample(lr, spacing, factor=factor, model=self.model, device=self.device, noise=self.noise).array


def make_methods(names: list[str], model: str = "default", extra: list[tuple[str, str]] = (),
                 device: str = "auto", noise: str = "match") -> dict:
    """name -> callable(lr, spacing_xyz, factor) -> (z, y, x) float32 array on the upsample grid."""
    extra = dict(extra)
    names = list(dict.fromkeys(list(names) + list(extra)))
    methods = {}
    for name in names:
        if name in extra:
            methods[name] = ModelMethod(extra[name], device, noise)
        elif name == MODEL_METHOD:
            methods[name] = ModelMethod(model, device, noise)
        elif name in baselines.METHODS:
            methods[name] = (lambda m: lambda lr, sp, f: baselines.interpolate(lr, sp, factor=f, method=m).array)(name)
        else:
            raise EvaluationError(f"unknown method {name!r}; choose from {', '.join(baselines.METHODS)}, "
                                  f"{MODEL_METHOD}, or add one with --extra-model NAME=PATH")
    return methods


# ------------------------------------------------------------------------------------------ scoring

def new_slice_mask(count: int, scale: float) -> np.ndarray:
    """True for output slices (HR indices 0..count-1) that lie between LR slices, i.e. were generated."""
    return generated_mask(np.arange(count) / float(scale))


def score(ref: np.ndarray, test: np.ndarray, new: np.ndarray, spacing_zyx, window=metrics.HU_WINDOW,
          lpips_models: dict | None = None, device="cpu") -> dict:
    """All metric columns for one upsampled volume ``test`` against its HR slices ``ref``."""
    row = {"psnr": metrics.psnr(ref, test, window), "ssim": metrics.ssim(ref, test, window),
           "snli": metrics.snli(test).value, "slices": ref.shape[0], "new_slices": int(new.sum())}
    if new.any():
        row["psnr_new"] = metrics.psnr(ref, test, window, slices=new)
        row["ssim_new"] = metrics.ssim(ref, test, window, slices=new)
    if lpips_models:
        from .lpips import lpips_per_slice
        # LPIPS of two identical slices is exactly 0, so only the slices that differ go through the network.
        differ = np.flatnonzero([not np.array_equal(r, t) for r, t in zip(ref, test, strict=True)])
        for net, model in lpips_models.items():
            values = np.zeros(ref.shape[0])
            if differ.size:
                values[differ] = lpips_per_slice(ref, test, model, window, slices=differ, device=device)
            row[f"lpips_{net}"] = float(values.mean())
    ref_masks, test_masks = metrics.threshold_masks(ref), metrics.threshold_masks(test)
    for tissue in ("bone", "soft"):
        row[f"dice_{tissue}"] = metrics.dice(ref_masks[tissue], test_masks[tissue])
        row[f"nsd_{tissue}"] = metrics.normalized_surface_dice(ref_masks[tissue], test_masks[tissue], spacing_zyx, 1.0)
    return row


def volume_name(path: str | Path, taken: set) -> str:
    name = Path(path).name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    base, n = name or "volume", 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def check_scale(name: str, n_slices: int, scale: float) -> None:
    """One-line error when a volume is too thin to simulate two thick slices at ``scale``."""
    if not (math.isfinite(scale) and scale > 1):
        raise EvaluationError(f"scale must be > 1, got {scale:g}")
    needed = int(math.ceil(scale - 1e-9)) + 1
    if n_slices < needed:
        raise EvaluationError(f"{name}: {n_slices} slices are too thin for scale x{scale:g} "
                              f"(needs at least {needed} to simulate 2 thick slices)")


# --------------------------------------------------------------------------------------- reporting

def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in COLUMNS})


def _mean(values: list) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def markdown_table(rows: list[dict], notes: list[str]) -> str:
    """Means over volumes per (scale, method); best in bold, second best underlined when there are three
    or more methods (as the paper)."""
    scales = sorted({r["scale"] for r in rows})
    columns = list(TABLE)
    lines = ["# CycleINR evaluation", "", *notes, ""]
    for scale in scales:
        here = [r for r in rows if r["scale"] == scale]
        methods = list(dict.fromkeys(r["method"] for r in here))
        n_vol = len({r["volume"] for r in here})
        means = {m: {c: _mean([_num(r.get(c)) for r in here if r["method"] == m]) for c in columns} for m in methods}
        lines += [f"## Scale x{scale:g} ({n_vol} volume{'s' * (n_vol != 1)})", "",
                  "| Method | " + " | ".join(TABLE[c][0] for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        ranks = {}
        for c in columns:
            vals = sorted({means[m][c] for m in methods if m != "HR" and math.isfinite(means[m][c])},
                          reverse=TABLE[c][1])
            ranks[c] = vals[:2]
        for m in methods:
            cells = []
            for c in columns:
                v = means[m][c]
                if math.isnan(v):
                    cells.append("—" if m == "HR" else "n/a")
                else:
                    text = "inf" if math.isinf(v) else (f"{v:.2f}" if c.startswith("psnr") or c == "snli" else f"{v:.4f}")
                    if m != "HR" and len(set(means[k][c] for k in methods if k != "HR")) > 1:
                        if ranks[c] and v == ranks[c][0]:
                            text = f"**{text}**"
                        elif len(methods) > 3 and len(ranks[c]) > 1 and v == ranks[c][1]:
                            text = f"<u>{text}</u>"
                    cells.append(text)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()

    def show(self, label: str) -> None:
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"evaluate [{bar}] {self.done}/{self.total} {time.perf_counter() - self.start:6.0f}s {label}"
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------ running

def evaluate_volume(name: str, hr: np.ndarray, spacing, scale: float, methods: dict, degradation="interval",
                    window=metrics.HU_WINDOW, lpips_models=None, device="cpu", progress=None):
    """Rows (HR reference first) and the upsampled arrays for one volume and scale."""
    check_scale(name, hr.shape[0], scale)
    lr, positions = simulate_thick(hr, scale, mode=degradation, offset=0.0)
    sx, sy, sz = (float(s) for s in spacing)
    lr_spacing = (sx, sy, sz * scale)
    count = slices_at_scale(lr.shape[0], scale)
    ref = hr[:count]
    new = new_slice_mask(count, scale)
    base = {"volume": name, "scale": scale}
    rows = [{**base, "method": "HR", "snli": metrics.snli(ref).value, "slices": count, "new_slices": int(new.sum())}]
    outputs = {}
    for method, fn in methods.items():
        start = time.perf_counter()
        out = np.asarray(fn(lr, lr_spacing, scale))
        seconds = time.perf_counter() - start
        if out.shape != ref.shape:
            raise EvaluationError(f"{name} x{scale:g} {method}: output shape {out.shape} does not match the "
                                  f"HR slices it should land on {ref.shape}")
        rows.append({**base, "method": method, "seconds": seconds,
                     **score(ref, out, new, (sz, sy, sx), window, lpips_models, device)})
        outputs[method] = out
        if progress is not None:
            progress.step(f"{name} x{scale:g} {method}")
    return rows, {"ref": ref, "lr_positions": positions, "new": new, "outputs": outputs}


# ------------------------------------------------------------------------------------------ figures

def _pick_slices(ref: np.ndarray, new: np.ndarray, scale: float) -> tuple[int, int, int]:
    """An axial slice among the generated ones, as far from the LR slices and as central as possible, and
    coronal/sagittal planes through the centre of the body (voxels above -500 HU)."""
    k = np.arange(ref.shape[0])
    frac = np.abs(k / scale - np.round(k / scale))
    candidates = np.flatnonzero(new) if new.any() else k
    centre = (ref.shape[0] - 1) / 2
    axial = int(min(candidates, key=lambda i: (-round(frac[i], 6), abs(i - centre))))
    body = ref > -500
    if body.any():
        _, ys, xs = np.nonzero(body[::2, ::2, ::2])
        return axial, int(np.median(ys) * 2), int(np.median(xs) * 2)
    return axial, ref.shape[1] // 2, ref.shape[2] // 2


def views_figure(path: Path, detail: dict, spacing, scale: float, rows: list[dict], title: str,
                 display=(-160.0, 240.0)) -> Path:
    """Axial (a generated slice), coronal and sagittal views of HR and each method, then their error
    maps (method - HR) in a [-200, 200] HU window; extents in mm, so aspect ratios are physical."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, outputs, new = detail["ref"], detail["outputs"], detail["new"]
    sx, sy, sz = (float(s) for s in spacing)
    nz, ny, nx = ref.shape
    k, y0, x0 = _pick_slices(ref, new, scale)
    views = [("axial", lambda v: v[k], [0, nx * sx, ny * sy, 0], "upper"),
             ("coronal", lambda v: v[:, y0, :], [0, nx * sx, 0, nz * sz], "lower"),
             ("sagittal", lambda v: v[:, :, x0], [0, ny * sy, 0, nz * sz], "lower")]
    heads = [f"axial z={k * sz:.1f} mm ({'generated' if new[k] else 'original'})",
             f"coronal y={y0 * sy:.0f} mm", f"sagittal x={x0 * sx:.0f} mm"]
    by_method = {r["method"]: r for r in rows}
    names = ["HR", *outputs]
    width_ratios = [nx * sx, nx * sx, ny * sy] * 2
    inch_per_mm = 15.0 * 0.9 / sum(width_ratios)  # axes span 95% of the width, minus the gaps between them
    row_height = inch_per_mm * max(ny * sy, nz * sz) * 1.12
    height = row_height * len(names) + 1.4
    fig, axes = plt.subplots(len(names), 6, figsize=(15, height), squeeze=False,
                             gridspec_kw={"width_ratios": width_ratios, "wspace": 0.04, "hspace": 0.12})
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.55 / height, bottom=0.9 / height)
    grey = err = None
    for r, name in enumerate(names):
        volume = ref if name == "HR" else outputs[name]
        for c, (_, cut, extent, origin) in enumerate(views):
            ax = axes[r, c]
            grey = ax.imshow(cut(volume), cmap="gray", vmin=display[0], vmax=display[1], extent=extent,
                             origin=origin, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "HR" and c > 0:
                ax.axhline(k * sz, color="yellow", lw=0.6, ls="--")
            ax_e = axes[r, c + 3]
            if name == "HR":
                ax_e.axis("off")
                continue
            err = ax_e.imshow(cut(volume).astype(np.float32) - cut(ref), cmap="RdBu_r", vmin=ERROR_WINDOW[0],
                              vmax=ERROR_WINDOW[1], extent=extent, origin=origin, interpolation="nearest")
            ax_e.set_xticks([])
            ax_e.set_yticks([])
        label = name
        if name != "HR" and name in by_method:
            row = by_method[name]
            label += f"\nPSNR {row['psnr']:.2f}\nSNLI {row['snli']:.2f}"
        elif name == "HR":
            label += f"\nSNLI {by_method['HR']['snli']:.2f}" if "HR" in by_method else ""
        axes[r, 0].set_ylabel(label, fontsize=9)
    for c, head in enumerate(heads):
        axes[0, c].set_title(head, fontsize=9)
    if len(names) > 1:
        for c in range(3):
            axes[1, c + 3].set_title(f"error {views[c][0]} (method - HR)", fontsize=9)
    # scale bar on the HR axial view: the largest of 5/10/20/50/100 mm under a third of the width
    bar_mm = max([b for b in (5, 10, 20, 50, 100) if b <= nx * sx / 3] or [nx * sx / 3])
    x_a, y_a = 0.04 * nx * sx, 0.95 * ny * sy
    axes[0, 0].plot([x_a, x_a + bar_mm], [y_a, y_a], color="yellow", lw=2)
    axes[0, 0].text(x_a + bar_mm / 2, y_a - 0.02 * ny * sy, f"{bar_mm:g} mm", color="yellow", ha="center",
                    va="bottom", fontsize=7)
    axes[0, 0].set_xlim(0, nx * sx)
    axes[0, 0].set_ylim(ny * sy, 0)
    bar = {"orientation": "horizontal", "fraction": 0.025, "pad": 0.015, "aspect": 50, "shrink": 0.85}
    fig.colorbar(grey, ax=axes[:, :3].ravel().tolist(), label=f"HU (display window {display[0]:g} .. {display[1]:g})",
                 **bar)
    if err is not None:
        fig.colorbar(err, ax=axes[:, 3:].ravel().tolist(), label="method - HR (HU), window [-200, 200]", **bar)
    for ax in axes.flat:
        ax.set_anchor("C")                     # colorbars re-anchor their parents; centre short views in the row
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def noise_figure(path: Path, detail: dict, spacing, scale: float, rows: list[dict], title: str) -> Path:
    """Per-slice noise sigma of HR and every method along z; LR slice positions are marked, so the dips
    of over-smoothed generated slices (what SNLI measures) are visible."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sz = float(spacing[2])
    snli_of = {r["method"]: r["snli"] for r in rows}
    fig, ax = plt.subplots(figsize=(10, 4))
    for p in detail["lr_positions"]:
        ax.axvline(p * sz, color="0.85", lw=0.8, zorder=0)
    z = np.arange(detail["ref"].shape[0]) * sz
    ax.plot(z, metrics.noise_sigma_per_slice(detail["ref"]), color="black", lw=2,
            label=f"HR (SNLI {snli_of.get('HR', float('nan')):.2f})")
    for name, volume in detail["outputs"].items():
        ax.plot(z, metrics.noise_sigma_per_slice(volume), lw=1.2, marker=".", ms=3,
                label=f"{name} (SNLI {snli_of.get(name, float('nan')):.2f})")
    ax.set_xlabel("slice position z (mm); grey lines: simulated thick (LR) slices")
    ax.set_ylabel("noise sigma (HU)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_figures(folder: Path, name: str, detail: dict, spacing, scale: float, rows, args) -> None:
    """The views and noise figures of one volume at one scale; an old figure is replaced only by a
    complete new one."""
    stem = f"{name}_x{scale:g}"
    with Staged() as staged:
        staged.write(folder / f"{stem}_views.png", lambda tmp: views_figure(
            tmp, detail, spacing, scale, rows, title=f"{name}, x{scale:g} ({args.degradation})",
            display=tuple(args.display_window)), ".png")
        staged.write(folder / f"{stem}_noise.png", lambda tmp: noise_figure(
            tmp, detail, spacing, scale, rows, title=f"{name}, x{scale:g}: per-slice noise sigma"), ".png")
        staged.commit()


def load_lpips_models(device: str, nets=LPIPS_NETS) -> tuple[dict, list[str]]:
    """Available LPIPS networks and one-line notes for the unavailable ones (never downloads)."""
    if not nets:
        return {}, ["LPIPS: skipped (--no-lpips)"]
    from . import lpips
    from .inference import select_device
    models, notes = {}, []
    for net in nets:
        reason = lpips.unavailable_reason(net)
        if reason:
            notes.append(reason)
        else:
            models[net] = lpips.load_lpips(net, select_device(device))
    return models, notes


def check_arguments(args) -> None:
    """Option mistakes, found before any model is loaded or volume read (ValueError: one line, exit 2)."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for results.csv, results.md and figures/")
    bad = [s for s in args.scales if not (math.isfinite(s) and s > 1)]
    if bad:
        raise ValueError(f"--scales: every scale must be a number > 1 (thick / thin spacing), got {bad[0]:g}")
    lo, hi = args.window
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"--window {lo:g} {hi:g}: give LO < HI in HU (e.g. --window -1024 2048)")


def run(args) -> int:
    out_dir = Path(args.out)
    extra = list(args.extra_model or [])
    try:
        check_arguments(args)
        methods = make_methods(args.methods, args.model, extra, args.device, args.noise)
        for fn in methods.values():
            if isinstance(fn, ModelMethod):
                fn.load()
    except Exception as exc:  # weights missing or unreadable: one line, nothing started
        print(f"evaluate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    scales = [float(s) for s in args.scales]
    lpips_models, notes = load_lpips_models(args.device, () if args.no_lpips else tuple(args.lpips))
    for note in notes:
        print(f"evaluate: note: {note}", file=sys.stderr)

    errors, rows, volumes, taken = 0, [], [], set()
    for path in args.hr:
        try:
            array, geometry, _ = read_volume(path)
        except VolumeError as exc:
            print(f"evaluate: error: {' '.join(str(exc).split())}", file=sys.stderr)
            errors += 1
            continue
        name = volume_name(path, taken)
        for scale in scales:
            try:
                check_scale(name, array.shape[0], scale)
            except EvaluationError as exc:
                print(f"evaluate: error: {exc}", file=sys.stderr)
                errors += 1
                continue
            volumes.append((name, array, geometry, scale))
    progress = Progress(len(volumes) * len(methods))
    if volumes:                             # the folder is made only when there is something to put in it
        out_dir.mkdir(parents=True, exist_ok=True)
        progress.show("starting")
    for name, array, geometry, scale in volumes:
        try:
            new_rows, detail = evaluate_volume(name, array, geometry.spacing, scale, methods, args.degradation,
                                               tuple(args.window), lpips_models, args.device, progress)
        except (EvaluationError, ValueError, RuntimeError) as exc:
            progress.close()
            print(f"evaluate: error: {name} x{scale:g}: {' '.join(str(exc).split())}", file=sys.stderr)
            errors += 1
            continue
        rows += new_rows
        if not args.no_figures:
            folder = out_dir / "figures"
            folder.mkdir(exist_ok=True)
            write_figures(folder, name, detail, geometry.spacing, scale, new_rows, args)
    progress.close()
    if not rows:
        print("evaluate: error: nothing could be evaluated", file=sys.stderr)
        return 1
    lo, hi = args.window
    info = [f"Degradation: {args.degradation} (offset 0); scores against the HR slices the output lands on; "
            f"PSNR/SSIM/LPIPS on HU clipped to [{lo:g}, {hi:g}]; SSIM = mean of 2D axial SSIM; "
            "*new* = newly generated slices only; SNLI in HU (the HR row is the reference's own); "
            "Dice/NSD (1 mm) of threshold masks: bone > 300 HU, soft tissue -100..300 HU. Means over volumes.",
            "", *[f"- {n}" for n in notes]]
    table = markdown_table(rows, info) + "\n"
    with Staged() as staged:                # both tables or neither: never a half-written results file
        staged.write(out_dir / "results.csv", lambda tmp: write_csv(Path(tmp), rows), ".csv")
        staged.write(out_dir / "results.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"), ".md")
        staged.commit()
    print(f"evaluate: wrote {out_dir / 'results.csv'} and {out_dir / 'results.md'} ({len(rows)} rows)", file=sys.stderr)
    return 1 if errors else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="simulate thick slices from thin-slice volumes, upsample, and score (paper Table 1)",
        description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("hr", nargs="+", metavar="HR", help="thin-slice (ground-truth) volume files or DICOM folders")
    p.add_argument("--scales", nargs="+", type=float, default=[2.0, 3.0, 5.0], help="thick/thin ratios (default 2 3 5)")
    p.add_argument("--methods", nargs="+", default=["linear", "cubic", MODEL_METHOD],
                   help=f"any of {', '.join(baselines.METHODS)}, {MODEL_METHOD} (default linear cubic {MODEL_METHOD})")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for results.csv, results.md, figures/")
    p.add_argument("--model", default="default", help="weights of method cycleinr: default, fast or a .safetensors path")
    p.add_argument("--extra-model", action="append", type=parse_extra_model, metavar="NAME=PATH",
                   help="add a network as method NAME (repeatable; e.g. the ablations INR, INR+LAM, INR+CCL)")
    p.add_argument("--degradation", choices=MODES, default="interval", help="thick-slice model (default interval)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (networks and LPIPS)")
    p.add_argument("--noise", choices=NOISE_MODES, default="match",
                   help="networks' noise option, as in upsample (default match; none: the network's own output)")
    p.add_argument("--window", nargs=2, type=float, default=list(metrics.HU_WINDOW), metavar=("LO", "HI"),
                   help="HU clip window of PSNR/SSIM/LPIPS (default -1024 2048)")
    p.add_argument("--display-window", nargs=2, type=float, default=[-160.0, 240.0], metavar=("LO", "HI"),
                   help="HU window of the figures' images (default -160 240, soft tissue)")
    p.add_argument("--lpips", nargs="+", choices=LPIPS_NETS, default=list(LPIPS_NETS), metavar="NET",
                   help="LPIPS backbones: alex vgg squeeze (default all; vgg is slow on CPU; squeeze is "
                        "reported unavailable)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the slowest metric on CPU)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.set_defaults(func=run)
    return p
