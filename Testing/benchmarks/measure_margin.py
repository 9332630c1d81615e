"""Measure a model's effective receptive field (cycleinr.receptive) on real CT and print the sliding-window
margin it needs (stored as ``window_margin`` in the bundled models' JSON).

    python Testing/benchmarks/measure_margin.py ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd --models default fast
"""

import argparse

import numpy as np

from cycleinr.receptive import effective_radius, influence_by_distance
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("volume")
    ap.add_argument("--models", nargs="+", default=["default", "fast"])
    ap.add_argument("--tolerance-hu", type=float, default=0.1)
    args = ap.parse_args()
    volume, _, _ = read_volume(args.volume)
    for name in args.models:
        model = load_model(name)
        shells = influence_by_distance(model, volume)
        print(f"{name}: context radius {model.config.context_radius}; influence by distance x 2000 HU: "
              f"{np.round(shells * 2000, 3).tolist()}")
        print(f"{name}: effective radius {effective_radius(model, volume, args.tolerance_hu)} "
              f"(first-order bound <= {args.tolerance_hu} HU)")


if __name__ == "__main__":
    main()
