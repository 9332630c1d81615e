"""The model card's demo noise figure: per-slice noise of the demo's output, before and after noise work.

Upsamples the bundled 5 mm chest sample to 2.5 mm twice (as ``Utilities/demo.sh`` does) and plots the
wavelet noise sigma of every output slice next to the input's, the curve behind SNLI:

    python Testing/benchmarks/demo_noise_figure.py runs/models/fast_old.safetensors \\
        Resources/Models/figures/demo_noise_before_after.png

"before" = the given weights with ``noise="none"`` (the fast model before issue 11 kept under runs/),
"now" = the bundled ``auto`` model with today's defaults.
"""

import argparse

import matplotlib
import numpy as np
from PIL import Image

from cycleinr.comparison import plot_slice_noise
from cycleinr.inference import upsample
from cycleinr.volume_io import read_volume

SAMPLE = "Resources/SampleData/CycleINRSampleChestCT5mm.nrrd"
TARGET_MM = 2.5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before", help="weights of the 'before' panel (run without noise matching)")
    ap.add_argument("output", help="PNG to write (quantised to 128 colours)")
    ap.add_argument("--before-label", default="previous fast model, no noise matching")
    ap.add_argument("--now-label", default="bundled fast model, noise matching (default)")
    args = ap.parse_args()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume, geometry, _ = read_volume(SAMPLE)
    volume = volume.astype(np.float32)
    spacing = geometry.spacing
    runs = [(args.before_label, dict(model=args.before, noise="none")), (args.now_label, dict(model="auto"))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (label, kwargs) in zip(axes, runs, strict=True):
        out = upsample(volume, spacing, target_spacing=TARGET_MM, device="cpu", **kwargs).array
        s_in, s_out = plot_slice_noise(ax, volume, geometry.slice_spacing, out, TARGET_MM)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("position along the slice axis (mm)")
        ax.legend(fontsize=7, loc="lower right")
        print(f"{label}: output SNLI {s_out.value:.3f} HU, input {s_in.value:.3f} HU")
    axes[0].set_ylabel("noise sigma per slice (HU, wavelet MAD)")
    fig.suptitle(f"Utilities/demo.sh: bundled 5 mm chest sample -> {TARGET_MM:g} mm, per-slice noise")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    Image.open(args.output).convert("RGB").quantize(colors=128).save(args.output, optimize=True)


if __name__ == "__main__":
    main()
