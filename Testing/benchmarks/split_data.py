"""Write the training / held-out split of the provided real CT (see Resources/Models/README.md).

Head CT (InVesalius "ProMED CT 0051", 108 x 1.5 mm slices): slices 0-75 train, 76-107 held out for
evaluation (a contiguous 48 mm slab the model never sees, in any orientation). The 5 mm chest CT
(Lung-PET-CT-Dx A0001) has no thin ground truth: only its in-plane axes serve as slice axes in training.
head_test_crop.nrrd is the held-out slab cut to the head's bounding box (x 48-207, y 16-207): the
evaluation volume of the model card, half the voxels of the full slab and almost no air.

    python Testing/benchmarks/split_data.py ../shared/data runs/data
"""

import sys
from pathlib import Path

from cycleinr.volume_io import read_volume, write_volume

HEAD, CHEST = "invesalius_cranium_ct_1.5mm.nrrd", "lung_dx_a0001_chest_ct_5mm.nrrd"
HEAD_TRAIN_SLICES = slice(0, 76)
HEAD_TEST_SLICES = slice(76, 108)
HEAD_TEST_CROP_YX = (slice(16, 208), slice(48, 208))


def main(src: str, dst: str) -> None:
    src_dir, out = Path(src), Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    head, geo, _ = read_volume(src_dir / HEAD)
    for name, sl in (("head_train.nrrd", HEAD_TRAIN_SLICES), ("head_test.nrrd", HEAD_TEST_SLICES)):
        shifted = type(geo)(geo.spacing, tuple(geo.index_to_physical((0, 0, sl.start))), geo.direction)
        write_volume(out / name, head[sl], shifted)
        print(out / name, head[sl].shape)
    ys, xs = HEAD_TEST_CROP_YX
    corner = (xs.start, ys.start, HEAD_TEST_SLICES.start)
    cropped = type(geo)(geo.spacing, tuple(geo.index_to_physical(corner)), geo.direction)
    write_volume(out / "head_test_crop.nrrd", head[HEAD_TEST_SLICES, ys, xs], cropped)
    print(out / "head_test_crop.nrrd", head[HEAD_TEST_SLICES, ys, xs].shape)


if __name__ == "__main__":
    main(*sys.argv[1:3])
