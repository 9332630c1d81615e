"""Time upsample() of the first 10 slices of the bundled sample (x5) for several in-plane tile sizes.

    python Testing/benchmarks/tile_sizes.py fast 384 192 128 112 96
    CYCLEINR_POINTS_PER_CHUNK=65536 python Testing/benchmarks/tile_sizes.py fast 384 112

Picks the CPU defaults in cycleinr.inference (DEFAULT_TILE, POINTS_PER_CHUNK). Timings on a shared
machine are noisy: run each size twice and compare the best.
"""

import sys
import time

import numpy as np
import SimpleITK as sitk

from cycleinr.inference import upsample
from cycleinr.weights import load_model

SAMPLE = "Resources/SampleData/CycleINRSampleChestCT5mm.nrrd"


def main():
    model, tiles = sys.argv[1], [int(t) for t in sys.argv[2:]] or [384, 112]
    image = sitk.ReadImage(SAMPLE)
    volume = sitk.GetArrayFromImage(image)[:10].astype(np.float32)
    net = load_model(model, "cpu")
    for tile in tiles:
        start = time.perf_counter()
        result = upsample(volume, image.GetSpacing(), factor=5, model=net, device="cpu", tile=tile)
        seconds = time.perf_counter() - start
        print(f"tile {tile:4d}: {seconds:6.2f} s, {result.array.size / seconds / 1e3:7.1f} k output voxels/s", flush=True)


if __name__ == "__main__":
    main()
