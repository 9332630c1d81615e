"""Output paths checked before any work, and outputs written all-or-nothing.

A run that fails after minutes of upsampling because its output folder is read-only, or that replaces
a good volume and then fails on the report, loses work or data. So every output path is checked (its
format, its folder, that the folder takes a new file) before the input is read, and all outputs of a
run are first written to hidden temporary files beside their targets, then renamed onto them together
once every one is complete. Messages name the user's paths, never the temporary ones.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import volume_io
from .volume_io import default_file_mode

# Single-file formats only: a .mhd/.nhdr header names its data file, which a rename would break.
VOLUME_FORMATS = (".nrrd", ".nii.gz", ".nii", ".mha")
REPORT_FORMATS = (".json",)
CSV_FORMATS = (".csv",)
FIGURE_FORMATS = (".png", ".pdf", ".svg")


class OutputError(ValueError):
    """An output that cannot be written: the message says which path, why, and what to give instead."""


def format_of(path: str | os.PathLike, formats: tuple[str, ...]) -> str | None:
    """The extension of ``path`` among ``formats`` (case-insensitive; '.nii.gz' counts as one), or None."""
    name = Path(path).name.lower()
    return next((f for f in formats if name.endswith(f) and len(name) > len(f)), None)


def check_output(path: str | os.PathLike, formats: tuple[str, ...], what: str = "output") -> Path:
    """Fail now, with one clear sentence, if ``path`` could not receive a new file later."""
    path = Path(path)
    allowed = ", ".join(formats)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name ending in {allowed}")
    fmt = format_of(path, formats)
    if fmt is None:
        ext = "".join(path.suffixes[-1:]) or "none"
        raise OutputError(f"{what} {path}: extension {ext!r} is not supported; use one of {allowed}")
    if fmt in VOLUME_FORMATS and not volume_io.can_write(fmt):
        raise OutputError(f"{what} {path}: writing {fmt} files {volume_io.NEEDS_SIMPLEITK}; give a .nrrd name")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: folder {folder} does not exist; create it first")
    try:                                  # the only honest test of "can a file be created here"
        fd, probe = tempfile.mkstemp(prefix=".cycleinr-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot create files in {folder} ({exc.strerror or exc})") from None
    return path


def resolved(path) -> Path:
    """The file a path names, links resolved: two spellings of one file compare equal."""
    return Path(os.path.realpath(path))


def check_distinct(paths: dict[str, Path | None], inputs=()) -> None:
    """No two outputs may be the same file, and no output may be an input (also through a link)."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        if path is None:
            continue
        key = resolved(path)
        if key in seen:
            raise OutputError(f"{what} and {seen[key]} are the same file {path}; give different names")
        seen[key] = what
    for source in inputs:
        key = resolved(source)
        if key in seen:
            raise OutputError(f"{seen[key]} {source} is the input; write the result to another file")


class Staged:
    """Temporary files beside their targets; ``commit()`` renames them all onto the targets.

    Used as a context manager: whatever was not committed (an exception, a cancel) is removed.
    """

    def __init__(self):
        self._pending: list[tuple[Path, Path]] = []

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def write(self, target: str | os.PathLike, writer, suffix: str = "") -> None:
        """Call ``writer(temporary_path)``; errors name ``target``, not the temporary file."""
        target = Path(target)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
            os.close(fd)
        except OSError as exc:
            raise OutputError(f"{target}: cannot create a file in {target.parent} ({exc.strerror or exc})") from None
        self._pending.append((Path(tmp), target))
        try:
            writer(tmp)
        except (OSError, RuntimeError) as exc:
            lines = str(exc).strip().splitlines()
            reason = getattr(exc, "strerror", None) or (lines[-1] if lines else "unknown reason")
            raise OutputError(f"{target}: could not be written ({reason.replace(tmp, str(target))})") from None

    def commit(self) -> list[Path]:
        """Give every staged file the permissions of a plainly created one and rename it onto its target."""
        done = []
        mode = default_file_mode()
        for tmp, target in self._pending:
            os.chmod(tmp, mode)
            os.replace(tmp, target)
            done.append(target)
        self._pending = []
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []
