"""Reading and writing volumes: DICOM series with uneven slice positions are refused (a volume has one
slice spacing, so every slice would be misplaced), even ones are read with their true spacing; only
single-file output formats with an extension are written."""

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr import cli
from cycleinr.geometry import Geometry
from cycleinr.outputs import OutputError
from cycleinr.volume_io import VolumeError, read_volume, write_volume

from conftest import phantom


def write_dicom_series(folder, positions_mm, shape=(8, 8), tilt=False):
    """A synthetic CT series: one file per slice, ImagePositionPatient set per slice along the normal."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    series = "1.2.826.0.1.3680043.2.1125.1.77"
    row, col = ((1, 0, 0), (0, 0, -1)) if tilt else ((1, 0, 0), (0, 1, 0))   # coronal when tilt
    normal = np.cross(row, col)
    for i, z in enumerate(positions_mm):
        image = sitk.GetImageFromArray(rng.integers(-1000, 1000, shape).astype(np.int16))
        image.SetSpacing((0.7, 0.7))
        pos = np.array([-10.0, 20.0, 5.0]) + z * normal
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series}.{i + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1", "0020|000e": series, "0020|0013": str(i + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in pos), "0020|0037": "\\".join(f"{v:g}" for v in (*row, *col)),
            "0018|0050": "5", "0028|1052": "0", "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(image)
    return folder


def test_uneven_dicom_slices_are_refused(tmp_path):
    folder = write_dicom_series(tmp_path / "uneven", [0, 5, 10, 15, 22, 27, 32, 37])
    with pytest.raises(VolumeError, match=r"not evenly spaced .*slices 4 and 5 are 7 mm apart"):
        read_volume(folder)


def test_uneven_dicom_is_one_error_line_before_work(tmp_path, capsys):
    folder = write_dicom_series(tmp_path / "uneven", [0, 5, 10, 15, 22, 27, 32, 37])
    code = cli.main(["upsample", str(folder), str(tmp_path / "o.nrrd"), "--factor", "2", "--model", "fast",
                     "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("cycleinr: error:") and "not evenly spaced" in err[-1]
    assert not any("progress" in line for line in err) and not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("tilt", [False, True])
def test_even_dicom_series_is_read_with_its_spacing(tmp_path, tilt):
    folder = write_dicom_series(tmp_path / "even", [0, 5.0, 10.001, 15, 20, 25], tilt=tilt)
    array, geometry, _ = read_volume(folder)
    assert array.shape == (6, 8, 8)
    assert abs(geometry.slice_spacing - 5.0) < 1e-3


def test_duplicate_dicom_positions_are_refused(tmp_path):
    folder = write_dicom_series(tmp_path / "dup", [0, 5, 5, 10])
    with pytest.raises(VolumeError, match="same position"):
        read_volume(folder)


@pytest.mark.parametrize("name", ["o", "o.mhd", "o.xyz"])
def test_write_volume_refuses_formats_it_cannot_write_whole(tmp_path, name):
    with pytest.raises(OutputError, match="not supported"):
        write_volume(tmp_path / name, phantom((3, 4, 4)), Geometry())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["o.nrrd", "o.nii.gz", "o.nii", "o.mha", "O.NRRD"])
def test_write_volume_round_trips(tmp_path, name):
    vol = phantom((3, 4, 5))
    geometry = Geometry((0.5, 0.75, 2.5), (1.0, -2.0, 3.0))
    write_volume(tmp_path / name, vol, geometry)
    back, g, _ = read_volume(tmp_path / name)
    assert np.array_equal(back, vol) and np.allclose(g.spacing, geometry.spacing)
    assert [p.name for p in tmp_path.iterdir()] == [name]
