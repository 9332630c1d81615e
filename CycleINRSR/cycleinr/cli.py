"""cycleinr: thin slices from thick-slice CT: upsample, batch, train, evaluate, bench, lpips-weights.

Every command module exposes ``add_parser(subparsers)``; errors the user can fix (bad input, missing
weights, unknown device) end with one line ``cycleinr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .inference import Cancelled

COMMANDS = ("upsample_cmd", "batch", "train_cli", "evaluate", "bench", "lpips")


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
