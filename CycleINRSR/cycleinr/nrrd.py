"""NRRD volumes with numpy alone, for machines without SimpleITK.

The GPU machines lent to this project have no SimpleITK, and its wheel (53 MB) does not fit in a device
call beside the checkout and the CT it should read. ``volume_io`` falls back to this reader and writer
when SimpleITK cannot be imported. It reads what ITK and 3D Slicer write for a scalar 3D volume (NRRD0001-5,
data attached and unskipped, raw or gzip, either byte order, ``space directions`` and ``space origin`` in LPS or
RAS, or positive ``spacings`` with no axis extents) and refuses every other file, naming what it does not handle
and saying to install SimpleITK, which reads more. Geometry follows ITK: spacing is the length of each axis's
direction vector, the direction matrix holds the unit vectors as columns, and RAS is turned into LPS.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from .geometry import Geometry

TYPES = {
    "int8": "i1", "signed char": "i1", "int8_t": "i1",
    "uint8": "u1", "uchar": "u1", "unsigned char": "u1", "uint8_t": "u1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "longlong": "i8", "long long": "i8", "long long int": "i8", "signed long long": "i8",
    "signed long long int": "i8", "int64": "i8", "int64_t": "i8",
    "ulonglong": "u8", "unsigned long long": "u8", "unsigned long long int": "u8", "uint64": "u8", "uint64_t": "u8",
    "float": "f4", "double": "f8",
}
WRITTEN = {"i1": "int8", "u1": "uint8", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
           "i8": "longlong", "u8": "ulonglong", "f4": "float", "f8": "double"}
SPACE_SIGN = {"left-posterior-superior": (1, 1, 1), "lps": (1, 1, 1),
              "right-anterior-superior": (-1, -1, 1), "ras": (-1, -1, 1)}


class NrrdError(ValueError):
    """A file this reader does not handle; SimpleITK reads more."""


def _unsupported(path, what: str) -> NrrdError:
    return NrrdError(f"{path}: {what}; without SimpleITK only scalar 3D NRRD files with attached raw or gzip data "
                     "can be read (pip install SimpleITK)")


def _vectors(text: str) -> list[list[float]]:
    return [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text)]


def read_header(raw: bytes, path) -> tuple[dict[str, str], int]:
    """The header's fields (lower-case names) and the offset where the data starts."""
    if not re.match(rb"NRRD000[1-5]\r?\n", raw[:10]):
        raise _unsupported(path, "not an NRRD file (no NRRD000N magic line)")
    end = re.search(rb"\r?\n\r?\n", raw)
    if end is None:
        raise _unsupported(path, "its header has no end (a detached .nhdr header?)")
    fields = {}
    for line in raw[:end.start()].decode("latin-1").splitlines()[1:]:
        name, sep, value = line.partition(": ")
        if sep and not line.startswith("#") and ":=" not in name:     # fields, not comments or key:=value
            fields[name.strip().lower()] = value.strip()
    return fields, end.end()


def geometry_from(fields: dict[str, str], path) -> Geometry:
    """ITK's reading of the header's placement: LPS spacing, origin and row-major direction."""
    if "space directions" in fields:
        space = fields.get("space", "left-posterior-superior").lower()
        if space not in SPACE_SIGN:
            raise _unsupported(path, f"space {space!r}")
        sign = np.array(SPACE_SIGN[space], dtype=float)
        vectors = np.array(_vectors(fields["space directions"]), dtype=float) * sign
        origin = np.array(_vectors(fields.get("space origin", "(0,0,0)"))[0], dtype=float) * sign
        if vectors.shape != (3, 3) or origin.shape != (3,):
            raise _unsupported(path, "its space directions or origin are not three 3D vectors")
        spacing = np.linalg.norm(vectors, axis=1)
        if not np.all(spacing > 0):
            raise _unsupported(path, "an axis has a zero direction vector")
        direction = (vectors / spacing[:, None]).T             # columns: the unit vector of each axis
        return Geometry(tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist()))
    if {"axis mins", "axismins", "axis maxs", "axismaxs"} & set(fields):
        raise _unsupported(path, "its placement is given by axis extents")
    spacings = [float(s) for s in fields.get("spacings", "1 1 1").split()]
    if len(spacings) != 3 or not all(np.isfinite(spacings)) or min(spacings) <= 0:
        raise _unsupported(path, f"spacings {fields.get('spacings')!r}")
    return Geometry(tuple(spacings))


def decompress(data: bytes) -> bytes:
    """The first gzip member (ITK, like zlib, ignores whatever follows it, e.g. a newline)."""
    return zlib.decompressobj(wbits=31).decompress(data)


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """The (z, y, x) array and its geometry."""
    try:
        return _read(path)
    except NrrdError:
        raise
    except (ValueError, zlib.error) as exc:               # malformed numbers or data: name the file
        raise NrrdError(f"{path}: unreadable NRRD ({exc})") from None


def _read(path) -> tuple[np.ndarray, Geometry]:
    raw = Path(path).read_bytes()
    fields, start = read_header(raw, path)
    if "data file" in fields or "datafile" in fields:
        raise _unsupported(path, "its data are in a separate file")
    skips = {k: fields[k] for k in ("line skip", "lineskip", "byte skip", "byteskip") if k in fields}
    if any(v.strip() != "0" for v in skips.values()):
        raise _unsupported(path, f"it skips part of its data ({', '.join(f'{k}: {v}' for k, v in skips.items())})")
    if fields.get("dimension") != "3":
        raise _unsupported(path, f"dimension {fields.get('dimension')} (a 3D volume is needed)")
    kinds = fields.get("kinds", "domain domain domain").lower().split()
    if len(kinds) != 3 or set(kinds) - {"domain", "space", "???", "none"}:
        raise _unsupported(path, f"kinds {fields.get('kinds')!r} (a scalar volume has three domain axes)")
    kind = TYPES.get(fields.get("type", "").lower())
    if kind is None:
        raise _unsupported(path, f"pixel type {fields.get('type')!r}")
    encoding = fields.get("encoding", "").lower()
    if encoding not in ("raw", "gzip", "gz"):
        raise _unsupported(path, f"encoding {encoding!r}")
    sizes = [int(s) for s in fields.get("sizes", "").split()]
    if len(sizes) != 3:
        raise _unsupported(path, f"sizes {fields.get('sizes')!r}")
    order = ">" if fields.get("endian", "little").lower() == "big" and kind[1] != "1" else "<"
    data = raw[start:] if encoding == "raw" else decompress(raw[start:])
    count = sizes[0] * sizes[1] * sizes[2]
    dtype = np.dtype(order + kind)
    if len(data) < count * dtype.itemsize:
        raise NrrdError(f"{path}: holds {len(data)} bytes of data, {count * dtype.itemsize} expected (a truncated file?)")
    array = np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("="))
    return array.reshape(sizes[::-1]), geometry_from(fields, path)


def write_nrrd(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """A gzip-compressed NRRD in LPS, as ITK writes one (ITK and Slicer read it back unchanged)."""
    array = np.ascontiguousarray(array)
    kind = array.dtype.str[1:]
    if array.ndim != 3 or kind not in WRITTEN:
        raise NrrdError(f"{path}: can write a 3D array of {', '.join(WRITTEN.values())}, got {array.ndim}D {array.dtype}")
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    vectors = (direction * np.asarray(geometry.spacing, dtype=float)).T      # rows: each axis's vector
    fmt = " ".join("(" + ",".join(repr(float(v)) for v in row) + ")" for row in vectors)
    header = (f"NRRD0004\ntype: {WRITTEN[kind]}\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}\nspace directions: {fmt}\n"
              "kinds: domain domain domain\nendian: little\nencoding: gzip\n"
              f"space origin: ({','.join(repr(float(v)) for v in geometry.origin)})\n\n")
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)              # wbits 31: a gzip stream
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(packer.compress(array.astype(array.dtype.newbyteorder("<")).tobytes()) + packer.flush())
