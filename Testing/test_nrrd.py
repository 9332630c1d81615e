"""NRRD with numpy alone (``cycleinr.nrrd``), checked against SimpleITK, and ``volume_io`` without SimpleITK."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr.geometry import Geometry
from cycleinr.nrrd import NrrdError, read_nrrd, write_nrrd
from cycleinr.weights import models_dir

SAMPLE = models_dir().parent / "SampleData" / "CycleINRSampleChestCT5mm.nrrd"
OBLIQUE = (0.0, -0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.8, 0.6)      # a rotation with negative entries


def itk(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def assert_same_as_itk(path, array, geometry):
    ref, spacing, origin, direction = itk(path)
    assert array.dtype == ref.dtype and array.shape == ref.shape
    np.testing.assert_array_equal(array, ref)
    np.testing.assert_allclose(geometry.spacing, spacing, rtol=1e-12)
    np.testing.assert_allclose(geometry.origin, origin, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(geometry.direction, direction, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_reads_what_simpleitk_writes(tmp_path, dtype, compress):
    array = (np.random.default_rng(0).normal(0, 50, (5, 7, 9)) + 100).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 3.5))
    image.SetOrigin((-12.5, 40.25, -300.0))
    image.SetDirection(OBLIQUE)
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(image, str(path), compress)
    assert_same_as_itk(path, *read_nrrd(path))


def test_reads_the_bundled_sample_as_simpleitk_does():
    assert_same_as_itk(SAMPLE, *read_nrrd(SAMPLE))


def test_ras_big_endian_raw_header_reads_as_simpleitk_reads_it(tmp_path):
    """A hand-written header of the kinds other tools write: RAS space, big-endian raw data, comments and
    key:=value lines. ITK turns RAS into LPS; so must this reader."""
    array = (np.arange(2 * 3 * 4) - 7).astype(">i2").reshape(2, 3, 4)
    header = ("NRRD0005\n# a comment: with a colon\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
              "sizes: 4 3 2\nspace directions: (0.5,0,0) (0,-0.75,0) (0,0,2.5)\nkinds: domain domain domain\n"
              "endian: big\nencoding: raw\nspace origin: (10,20,-30)\nsoftware:=a tool\n\n")
    path = tmp_path / "ras.nrrd"
    path.write_bytes(header.encode() + array.tobytes())
    read, geometry = read_nrrd(path)
    assert_same_as_itk(path, read, geometry)
    np.testing.assert_array_equal(read, np.arange(24).reshape(2, 3, 4) - 7)       # big-endian values, not bytes
    assert geometry.origin == (-10.0, -20.0, -30.0) and geometry.spacing == (0.5, 0.75, 2.5)


def test_gzip_data_followed_by_a_newline_read_as_simpleitk_reads_them(tmp_path):
    import gzip
    array = np.arange(24, dtype="<i2").reshape(2, 3, 4)
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: gzip\nspacings: 1 2 3\n\n"
    path = tmp_path / "nl.nrrd"
    path.write_bytes(header.encode() + gzip.compress(array.tobytes()) + b"\n")
    assert_same_as_itk(path, *read_nrrd(path))


def test_written_files_read_back_in_simpleitk_unchanged(tmp_path):
    array = np.random.default_rng(1).integers(-1024, 2000, (6, 5, 4)).astype(np.int16)
    geometry = Geometry((0.8, 0.8, 2.5), (1.5, -2.25, 100.0), OBLIQUE)
    path = tmp_path / "w.nrrd"
    write_nrrd(path, array, geometry)
    assert_same_as_itk(path, array, geometry)
    again, same = read_nrrd(path)
    np.testing.assert_array_equal(again, array)
    assert np.allclose(same.direction, geometry.direction) and np.allclose(same.spacing, geometry.spacing)


@pytest.mark.parametrize("header, message", [
    ("NRRD0004\ntype: short\ndimension: 4\nsizes: 2 2 2 2\nencoding: raw\n\n", "dimension 4"),
    ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: bzip2\n\n", "encoding 'bzip2'"),
    ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: v.raw\n\n", "separate file"),
    ("NRRD0004\ntype: block\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n", "pixel type 'block'"),
    ("P5 2 2 255\n", "not an NRRD file"),
    ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nbyte skip: 6\n\n", "skips part"),
    ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nline skip: 1\n\n", "skips part"),
    ("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 3 2 2\nkinds: RGB-color domain domain\nencoding: raw\n\n",
     "kinds 'RGB-color domain domain'"),
    ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nspacings: 1 1 1\naxis mins: 1 2 3\n\n",
     "axis extents"),
])
def test_refuses_what_it_cannot_read_and_says_to_install_simpleitk(tmp_path, header, message):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(header.encode() + bytes(64))
    with pytest.raises(NrrdError, match=message) as err:
        read_nrrd(path)
    assert "pip install SimpleITK" in str(err.value)


def test_malformed_numbers_are_refused_with_the_file_named(tmp_path):
    path = tmp_path / "typo.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 x 2\nencoding: raw\n\n" + bytes(16))
    with pytest.raises(NrrdError, match=f"{path}: unreadable NRRD"):
        read_nrrd(path)


def test_truncated_data_are_refused(tmp_path):
    path = tmp_path / "short.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n" + bytes(10))
    with pytest.raises(NrrdError, match="truncated"):
        read_nrrd(path)


WITHOUT_SIMPLEITK = """
import json, sys
sys.modules["SimpleITK"] = None                    # import SimpleITK now raises ImportError, as where it is missing
from cycleinr import volume_io
from cycleinr.cli import main
assert volume_io.sitk is None
array, geometry, pixel_id = volume_io.read_volume(sys.argv[1])
try:
    volume_io.read_volume(sys.argv[2] + "/x.nii.gz")
except volume_io.VolumeError as exc:
    refused = str(exc)
code = main(["upsample", sys.argv[1], sys.argv[2] + "/out.nrrd", "--factor", "2", "--model", "fast", "--quiet"])
nifti = main(["upsample", sys.argv[1], sys.argv[2] + "/out.nii.gz", "--factor", "2", "--model", "no-such-model"])
print(json.dumps({"shape": array.shape, "pixel_id": pixel_id, "refused": refused, "code": code, "nifti": nifti}))
"""


def test_volume_io_and_the_command_line_work_without_simpleitk(tmp_path):
    """Where SimpleITK cannot be imported, ``cycleinr upsample`` reads and writes NRRD through ``nrrd``:
    the output SimpleITK reads later has the geometry and values of one written with it."""
    crop = tmp_path / "in.nrrd"
    array, spacing, origin, direction = itk(SAMPLE)
    image = sitk.GetImageFromArray(array[8:14, 100:160, 100:150])
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(crop), True)
    (tmp_path / "x.nii.gz").write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", WITHOUT_SIMPLEITK, str(crop), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["shape"] == [6, 60, 50] and result["pixel_id"] is None
    assert "needs SimpleITK" in result["refused"]
    assert result["nifti"] == 2                      # refused before the model is even looked up:
    assert "out.nii.gz: writing .nii.gz files needs SimpleITK" in done.stderr and "no-such-model" not in done.stderr
    assert not (tmp_path / "out.nii.gz").exists()
    from cycleinr.cli import main
    assert main(["upsample", str(crop), str(tmp_path / "ref.nrrd"), "--factor", "2", "--model", "fast", "--quiet"]) == 0
    out, out_spacing, out_origin, out_direction = itk(tmp_path / "out.nrrd")
    ref, ref_spacing, ref_origin, ref_direction = itk(tmp_path / "ref.nrrd")
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == ref.dtype and out_spacing == ref_spacing
    np.testing.assert_allclose(out_origin, ref_origin, atol=1e-12)
    np.testing.assert_allclose(out_direction, ref_direction, atol=1e-12)
