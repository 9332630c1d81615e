"""Cut the small held-out slab that the bundled-model test scores (Testing/test_bundled_models.py).

From the head CT's held-out slices 76-107 (never used in training, see Resources/Models/README.md):
slices 76-91, a 72 x 72 in-plane block through bone and brain.

    python Testing/data/make_heldout_slab.py runs/data/head_test.nrrd
"""

import sys
from pathlib import Path

import SimpleITK as sitk


def main(src: str) -> None:
    image = sitk.ReadImage(src)
    crop = image[96:168, 60:132, 0:16]
    out = Path(__file__).with_name("head_heldout_slab.nrrd")
    sitk.WriteImage(crop, str(out), True)
    print(out, crop.GetSize(), crop.GetOrigin())


if __name__ == "__main__":
    main(sys.argv[1])
