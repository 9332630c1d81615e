"""cycleinr: thin slices from thick-slice CT: upsample, batch, train, export, evaluate, bench, lpips-weights.

Every command module exposes ``add_parser(subparsers)``; errors the user can fix (bad input, missing
weights, unknown device) end with one line ``cycleinr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys

COMMANDS = ("upsample_cmd", "batch", "train_cli", "export_cmd", "evaluate", "bench", "lpips")

# OpenMP worker threads that spin while waiting make inference 4x slower when the CPU is shared (the
# fast model on a 63 x 160 x 160 output, 2 cores at load 6: 72.6 s spinning, 17.4 s passive, 13.7 s with
# one thread). Sleeping costs a few percent on an idle machine; set OMP_WAIT_POLICY=ACTIVE to spin.
# It must be set before torch (and its OpenMP runtime) is loaded, hence here and torch imported late.
PASSIVE_COMMANDS = ("upsample", "batch")

# glibc returns every freed block over 32 MB to the system, so each sliding-window step maps and
# page-faults its attention blocks (~40 MB) afresh: `cycleinr upsample` of a 64 x 112 x 512 CT at x5 (fast,
# 2 threads) took 28.5 s that way and 23.7 s with freed memory kept for reuse, at 1.34 instead of 1.09 GB
# peak. The upsampling commands are short-lived processes, so they keep it (M_MMAP_THRESHOLD and
# M_TRIM_THRESHOLD).
GLIBC_MMAP_THRESHOLD, GLIBC_TRIM_THRESHOLD, KEEP_BYTES = -3, -1, 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to serve blocks up to 1 GiB from its heap and keep freed memory for reuse;
    False where the C library is not glibc (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(GLIBC_MMAP_THRESHOLD, KEEP_BYTES) and mallopt(GLIBC_TRIM_THRESHOLD, KEEP_BYTES))


class OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one ``cycleinr: error:`` line, exit status 2."""

    def error(self, message):
        self.exit(2, f"cycleinr: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="cycleinr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)
    for name in COMMANDS:                  # imported here so that `--help` lists every command
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    return parser


def out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's CPU allocator failure or CUDA's out-of-memory error."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def main(argv=None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in PASSIVE_COMMANDS:
        keep_freed_memory()
        if "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .inference import Cancelled

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"cycleinr: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("cycleinr: cancelled; nothing was written", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        print(f"cycleinr: error: out of memory ({detail}); upsample: choose a thicker "
              "target, a smaller --tile or --window; train: a smaller --batch_size or --patch", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
