"""Compact model-card tables from ``cycleinr evaluate``'s results.csv, with margins over linear and cubic.

    python Testing/benchmarks/card_table.py runs/card/all/results.csv [default-model method name]
"""

import csv
import sys
from collections import defaultdict

COLUMNS = [("psnr", "PSNR dB", 2), ("ssim", "SSIM", 4), ("psnr_new", "PSNR new", 2), ("lpips_alex", "LPIPS alex", 4),
           ("lpips_vgg", "LPIPS vgg", 4), ("snli", "SNLI HU", 3), ("dice_bone", "Dice bone", 4),
           ("nsd_bone", "NSD bone", 4), ("dice_soft", "Dice soft", 4)]


def fmt(value: str, digits: int) -> str:
    return f"{float(value):.{digits}f}" if value not in ("", None) else "—"


def main(path: str, model: str = "cycleinr") -> None:
    by_scale = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_scale[row["scale"]].append(row)
    for scale, rows in by_scale.items():
        print(f"\n**x{scale}** ({rows[0]['volume']}, {rows[0]['slices']} slices, {rows[0]['new_slices']} generated)\n")
        print("| method | " + " | ".join(c[1] for c in COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        for row in rows:
            print(f"| {row['method']} | " + " | ".join(fmt(row[k], d) for k, _, d in COLUMNS) + " |")
        named = {r["method"]: r for r in rows}
        if model in named:
            m = named[model]
            for base in ("linear", "cubic"):
                if base in named:
                    print(f"\n{model} - {base} at x{scale}: PSNR {float(m['psnr']) - float(named[base]['psnr']):+.2f} dB, "
                          f"SNLI {float(m['snli']) - float(named[base]['snli']):+.3f} HU", end="")
            print()


if __name__ == "__main__":
    main(*sys.argv[1:3])
