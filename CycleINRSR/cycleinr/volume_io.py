"""Reading and writing volumes with SimpleITK: any file it reads, or a DICOM series folder.

Writes are atomic (a temporary file in the destination folder, then a rename) so that a failed or
cancelled run never leaves a half-written file where a good one was. Where SimpleITK is not installed
(the GPU machines), NRRD files are read and written with numpy alone (``nrrd``) and other formats are
refused with a message that says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry import Geometry
from .nrrd import NrrdError, read_nrrd, write_nrrd

try:
    import SimpleITK as sitk
except ImportError:                  # NRRD only, through .nrrd
    sitk = None

NEEDS_SIMPLEITK = "needs SimpleITK (pip install SimpleITK); without it only .nrrd files can be read and written"


def can_write(volume_format: str) -> bool:
    """Whether this installation writes that volume format ('.nrrd', '.nii.gz', ...): all with SimpleITK."""
    return sitk is not None or volume_format == ".nrrd"


class VolumeError(ValueError):
    """A volume that cannot be used: the message says what is wrong and what to do."""


def geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))


def dicom_series_ids(folder) -> tuple[str, ...]:
    """The DICOM series in a folder, without ITK's console warning when there are none (none without
    SimpleITK, which alone reads DICOM here)."""
    if sitk is None:
        return ()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a volume file (NIfTI, NRRD, MHA, ...) or the largest DICOM series in a folder."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = dicom_series_ids(path)
            if not series:
                raise VolumeError(f"{path}: folder holds no DICOM series; give a volume file or a DICOM folder")
            files = max((reader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
            check_slice_positions(path, files)
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise VolumeError(f"{path}: SimpleITK cannot read it ({first})") from None


def slice_positions(files) -> np.ndarray | None:
    """Each DICOM file's position along the slice normal (mm), from ImagePositionPatient and
    ImageOrientationPatient; None if a file lacks them (then nothing can be checked)."""
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return None
        try:
            ipp = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            iop = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        except ValueError:
            return None
        if ipp.size != 3 or iop.size != 6:
            return None
        positions.append(float(ipp @ np.cross(iop[:3], iop[3:])))
    return np.array(positions)


def check_slice_positions(path, files) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced: a volume has one slice spacing, so
    SimpleITK would silently use the average gap and put every slice (and every output slice) at the
    wrong position. Gaps may differ by 1 % of the spacing plus 0.01 mm (rounding in the headers)."""
    if len(files) < 3:
        return
    z = slice_positions(files)
    if z is None:
        return
    gaps = np.abs(np.diff(z))
    spacing = float(np.median(gaps))
    if spacing <= 1e-6 or gaps.min() <= 1e-6:
        raise VolumeError(f"{path}: DICOM series has several slices at the same position (duplicates or "
                          "several stacks in one series); export a single stack")
    bad = np.nonzero(np.abs(gaps - spacing) > 0.01 * spacing + 0.01)[0]
    if bad.size:
        k = int(bad[0])
        shown = ", ".join(f"{g:g}" for g in np.unique(np.round(gaps, 2)))
        raise VolumeError(
            f"{path}: DICOM slices are not evenly spaced (gaps of {shown} mm; slices {k + 1} and {k + 2} are "
            f"{gaps[k]:g} mm apart, the others mostly {spacing:g} mm), so no single slice spacing places them "
            "right; resample the series onto a uniform grid first or give only its evenly spaced part")


def check_volume(array: np.ndarray, what: str = "volume") -> None:
    """Reject arrays the model cannot upsample, with a message that says how to fix the input."""
    if array.ndim != 3:
        raise VolumeError(f"{what} must be 3D (z, y, x); got {array.ndim}D with shape {array.shape}. "
                          "Give a single scalar 3D volume (split 4D series, stack 2D slices first).")
    if array.size == 0 or min(array.shape) < 1:
        raise VolumeError(f"{what} is empty (shape {array.shape})")
    if array.shape[0] < 2:
        raise VolumeError(f"{what} has {array.shape[0]} slice; upsampling along the slice axis needs at least 2")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise VolumeError(f"{what} has pixel type {array.dtype}; a real scalar volume is needed")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(f"{what} contains NaN or infinite values; replace them (e.g. with the background value) first")


def read_without_simpleitk(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """An NRRD file's array and geometry through ``nrrd``; anything else is refused."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() != ".nrrd":
        raise VolumeError(f"{path}: reading DICOM folders and {path.suffix or 'suffix-less'} files {NEEDS_SIMPLEITK}")
    try:
        return read_nrrd(path)
    except (NrrdError, OSError) as exc:           # read_nrrd turns malformed data into NrrdError
        raise VolumeError(f"{path}: cannot be read ({exc})") from None


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, Geometry, int | None]:
    """Return the (z, y, x) array, its geometry and SimpleITK pixel id (None without SimpleITK), after
    checking it is usable."""
    if sitk is None:
        array, geometry = read_without_simpleitk(path)
        check_volume(array, str(path))
        return array, geometry, None
    image = read_image(path)
    if image.GetDimension() != 3:
        raise VolumeError(f"{path}: image is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                          "a scalar (grey-level) volume is needed")
    array = sitk.GetArrayFromImage(image)
    check_volume(array, str(path))
    return array, geometry_of(image), image.GetPixelID()


def default_file_mode() -> int:
    """The permissions a plainly created file gets under the umask (mkstemp's files are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def cast_like(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip a float array into an integer dtype's range (or just cast to a float dtype)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in geometry.spacing))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(d) for d in geometry.direction))
    return image


def write_image_file(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write (compressed) to exactly ``path``, which must be a temporary name that gets renamed."""
    if sitk is not None:
        sitk.WriteImage(to_image(array, geometry), str(path), True)
    elif not str(path).lower().endswith(".nrrd"):        # outputs.check_output refuses these before any work
        raise RuntimeError(f"writing {''.join(Path(path).suffixes[-2:])} files {NEEDS_SIMPLEITK}")
    else:
        try:
            write_nrrd(path, array, geometry)
        except NrrdError as exc:                           # an array type NRRD cannot hold: a write error
            raise RuntimeError(str(exc).replace(f"{path}: ", "")) from None


def write_volume(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, dtype=None) -> Path:
    """Write atomically: to a temporary file beside ``path``, renamed over it only once complete."""
    from .outputs import VOLUME_FORMATS, Staged, check_output, format_of

    path = check_output(path, VOLUME_FORMATS, "output volume")
    if dtype is not None:
        array = cast_like(array, dtype)
    with Staged() as staged:
        staged.write(path, lambda tmp: write_image_file(tmp, array, geometry), format_of(path, VOLUME_FORMATS))
        staged.commit()
    return path
