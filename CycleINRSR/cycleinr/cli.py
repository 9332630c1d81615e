"""``python -m cycleinr`` / ``cycleinr``: upsample, train, evaluate, bench.

Every command module exposes ``add_parser(subparsers)``; errors the user can fix (bad input, missing
weights, unknown device) end with one line ``cycleinr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .inference import Cancelled

COMMANDS = ("upsample_cmd", "train_cli", "evaluate", "bench", "lpips")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cycleinr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:                  # imported here so that `--help` lists every command
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"cycleinr: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("cycleinr: cancelled; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
