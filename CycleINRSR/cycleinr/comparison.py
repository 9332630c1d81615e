"""The picture a user looks at first: input vs. upsampled output through the slice axis, and the noise curve.

Coronal and sagittal cuts (planes containing the slice axis K) show the "staircase" of thick slices and
whether the new slices blend in; the per-slice noise sigma (the curve behind SNLI) shows whether
generated slices are smoother than acquired ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import snli


def comparison_figure(path, lr: np.ndarray, out: np.ndarray, spacing_xyz, target: float,
                      window=(-1000, 1000), title: str = "") -> Path:
    """Write a PNG: rows = input (nearest along K) and output; columns = middle axial, coronal, sagittal
    cut with physical aspect; plus per-slice noise sigma of both against physical K position."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing_xyz
    n_in, n_out = lr.shape[0], out.shape[0]
    z_in, z_out = np.arange(n_in) * sz, np.arange(n_out) * target
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    y, x = out.shape[1] // 2, out.shape[2] // 2
    for row, (vol, dz, label) in enumerate(((lr, sz, f"input, {sz:g} mm"), (out, target, f"output, {target:g} mm"))):
        k = int(round((n_in // 2) * sz / dz))
        views = [(vol[k], sy / sx, "axial"), (vol[:, y, :], dz / sx, "coronal (x-z)"),
                 (vol[:, :, x], dz / sy, "sagittal (y-z)")]
        for col, (img, aspect, name) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest",
                      origin="upper" if col == 0 else "lower")
            ax.set_title(f"{label}: {name}")
            ax.set_xticks([])
            ax.set_yticks([])
    gs = axes[0, 3].get_gridspec()
    for ax in axes[:, 3]:
        ax.remove()
    curve = fig.add_subplot(gs[:, 3])
    s_in, s_out = snli(lr), snli(out)
    curve.plot(z_out, s_out.sigmas, ".-", ms=3, lw=0.8, label=f"output (SNLI {s_out.value:.2f})")
    curve.plot(z_in, s_in.sigmas, "o", ms=5, label=f"input (SNLI {s_in.value:.2f})")
    curve.set_xlabel("position along slice axis K (mm from first slice)")
    curve.set_ylabel("noise sigma per slice (wavelet MAD estimate, HU)")
    curve.set_title("per-slice noise: flat = consistent slices")
    curve.legend()
    fig.suptitle(title or "CycleINR: input vs. upsampled output (window "
                 f"{window[0]}..{window[1]} HU)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
