"""The picture a user looks at first: input vs. upsampled output, and the noise curve.

The native-plane columns (axial for an axial series) show a *generated* output slice (half-way between two acquired ones, where the
network did the work) next to the nearest acquired input slice: an acquired output slice would look
the same as the input and prove nothing. The two cuts through the slice axis K (coronal and sagittal for
an axial series; panels are named from the volume's direction, since K is not always head-feet)
show the staircase of thick slices and whether the new slices blend in; they are cropped to a square
field of view so they are as large as the native-plane views. Windows are stated clinical ones (soft tissue and
lung for CT in HU; percentiles otherwise), edges carry patient orientation letters, and the per-slice
noise sigma (the curve behind SNLI) shows whether generated slices are smoother than acquired ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import snli

SOFT_TISSUE = ("soft tissue W400 L40", (-160.0, 240.0))
LUNG = ("lung W1500 L-600", (-1350.0, 150.0))
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))      # ITK/DICOM LPS: +x left, +y posterior, +z superior


def orientation_letter(vector) -> str:
    """Letter(s) of the patient direction a physical (LPS) vector points to, dominant axis first."""
    v = np.asarray(vector, dtype=float)
    order = np.argsort(-np.abs(v))
    letters = [_LETTERS[a][0 if v[a] > 0 else 1] for a in order if abs(v[a]) > 0.25 * np.abs(v).max()]
    return "".join(letters[:2])


def plane_name(normal) -> str:
    """Anatomical name of the plane with this (LPS) normal: the K axis is not always head-feet."""
    v = np.abs(np.asarray(normal, dtype=float))
    name = ("sagittal", "coronal", "axial")[int(np.argmax(v))]
    return name if v.max() > 0.9 * np.linalg.norm(v) else f"oblique {name}"


def windows_for(volume: np.ndarray) -> list[tuple[str, tuple[float, float]]]:
    """Clinical CT windows when the values look like HU (air near -1000), else the 1st-99th percentile."""
    if float(volume.min()) < -500:
        return [SOFT_TISSUE, LUNG]
    lo, hi = np.percentile(volume, [1, 99])
    return [(f"1st-99th percentile ({lo:.0f}..{hi:.0f}, not HU)", (float(lo), float(hi)))]


def generated_slice(positions: np.ndarray) -> int:
    """Index of the output slice nearest the middle that lies furthest from any acquired slice."""
    frac = np.abs(positions - np.round(positions))
    middle = len(positions) // 2
    score = frac - 1e-3 * np.abs(np.arange(len(positions)) - middle) / max(len(positions), 1)
    return int(np.argmax(score))


def _square_crop(n_rows: int, row_mm: float, n_cols: int, col_mm: float) -> tuple[slice, slice]:
    """Central crop of a (rows, cols) image to a square physical field of view."""
    side = min(n_rows * row_mm, n_cols * col_mm)
    r, c = max(1, int(round(side / row_mm))), max(1, int(round(side / col_mm)))
    r0, c0 = (n_rows - r) // 2, (n_cols - c) // 2
    return slice(r0, r0 + r), slice(c0, c0 + c)


def comparison_figure(path, lr: np.ndarray, out: np.ndarray, spacing_xyz, target: float,
                      direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), title: str = "") -> Path:
    """Write a PNG (or PDF/SVG, from the name): rows = input (nearest acquired slice along K) and output;
    columns = native slice plane in each window, the two cuts through K with physical aspect; plus the per-slice
    noise sigma of both against physical K position."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = (float(s) for s in spacing_xyz)
    axes_dir = np.asarray(direction, dtype=float).reshape(3, 3).T      # rows: physical vectors of i, j, k
    n_out = out.shape[0]
    positions = np.arange(n_out) * target / sz                         # in input slice-index units
    k_out = generated_slice(positions)
    k_in = int(round(positions[k_out]))
    windows = windows_for(lr)
    planes = [plane_name(axes_dir[a]) for a in range(3)]   # the plane normal to index axis i, j, k
    y, x = out.shape[1] // 2, out.shape[2] // 2
    n_img = len(windows) + 2
    fig, axes = plt.subplots(2, n_img + 1, figsize=(4.2 * n_img + 5.5, 9.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * n_img + [1.4]})
    rows = ((lr, sz, f"input {sz:g} mm", f"nearest acquired slice {k_in} (at {k_in * sz:g} mm)"),
            (out, target, f"output {target:g} mm", f"generated slice {k_out} (at {k_out * target:g} mm)"))
    for row, (vol, dz, label, which) in enumerate(rows):
        k = k_in if row == 0 else k_out
        views = [(vol[k], sy, sx, f"{planes[2]}, {name}", (1, 0), win) for name, win in windows]
        short = windows[0][0].split(" W")[0]
        views.append((vol[:, y, :], dz, sx, f"{planes[1]}, {short}", (2, 0), windows[0][1]))
        views.append((vol[:, :, x], dz, sy, f"{planes[0]}, {short}", (2, 1), windows[0][1]))
        for col, (img, row_mm, col_mm, name, (ra, ca), win) in enumerate(views):
            ax = axes[row, col]
            axial = col < len(windows)
            rs, cs = (slice(None), slice(None)) if axial else _square_crop(img.shape[0], row_mm, img.shape[1], col_mm)
            ax.imshow(img[rs, cs], cmap="gray", vmin=win[0], vmax=win[1], aspect=row_mm / col_mm,
                      interpolation="nearest", origin="upper" if axial else "lower")
            ax.set_title(f"{label}: {name}\n" + (which if axial else "centre, cropped square"), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            _letters(ax, axes_dir[ca], axes_dir[ra], rows_down=axial)
    gs = axes[0, n_img].get_gridspec()
    for ax in axes[:, n_img]:
        ax.remove()
    curve = fig.add_subplot(gs[:, n_img])
    plot_slice_noise(curve, lr, sz, out, target)
    curve.axvline(k_out * target, color="0.6", lw=0.8, ls=":", label="generated slice shown")
    curve.set_xlabel("position along slice axis K (mm from first slice)")
    curve.set_ylabel("noise sigma per slice (wavelet MAD estimate)")
    curve.set_title("per-slice noise; SNLI = its spread,\nlower = generated slices match acquired ones", fontsize=10)
    curve.legend(fontsize=8)
    stated = "; ".join(f"{name} = {lo:g}..{hi:g}" for name, (lo, hi) in windows)
    fig.suptitle(f"{title or 'CycleINR: input vs. upsampled output'}\nwindows: {stated}"
                 f"{' HU' if len(windows) > 1 else ''}", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=80, format=path.suffix[1:].lower() or "png")
    plt.close(fig)
    return path


def plot_slice_noise(ax, lr: np.ndarray, lr_spacing: float, out: np.ndarray, out_spacing: float):
    """Per-slice noise sigma of output and input against position along K (mm), the curve behind SNLI; shared
    by the comparison figure and the model card's demo figure. Returns the two SNLI results (input, output)."""
    s_in, s_out = snli(lr), snli(out)
    ax.plot(np.arange(len(out)) * out_spacing, s_out.sigmas, ".-", ms=3, lw=0.8,
            label=f"output {out_spacing:g} mm (SNLI {s_out.value:.2f})")
    ax.plot(np.arange(len(lr)) * lr_spacing, s_in.sigmas, "o", ms=5,
            label=f"input {lr_spacing:g} mm (SNLI {s_in.value:.2f})")
    return s_in, s_out


def _letters(ax, right, down, rows_down: bool) -> None:
    """Orientation letters at the four edges: ``right`` is the physical vector of +column, ``down`` of
    +row (which is drawn downwards when ``rows_down``, upwards otherwise)."""
    up = -np.asarray(down) if rows_down else np.asarray(down)
    style = dict(color="yellow", fontsize=10, fontweight="bold", transform=ax.transAxes)
    ax.text(0.99, 0.5, orientation_letter(right), ha="right", va="center", **style)
    ax.text(0.01, 0.5, orientation_letter(-np.asarray(right)), ha="left", va="center", **style)
    ax.text(0.5, 0.99, orientation_letter(up), ha="center", va="top", **style)
    ax.text(0.5, 0.01, orientation_letter(-up), ha="center", va="bottom", **style)
