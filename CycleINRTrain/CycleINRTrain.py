#!/usr/bin/env python-real
"""CycleINRTrain: the Slicer scripted CLI that trains CycleINR weights (see README.md here).

All options, the progress protocol and the execution-model XML come from ``cycleinr.train_cli``; this
file only finds that package and calls it. ``--xml`` prints the XML; CycleINRTrain.xml beside this file
is its committed copy, regenerated with

    python CycleINRTrain/CycleINRTrain.py --xml > CycleINRTrain/CycleINRTrain.xml

Multi-GPU: ``torchrun --nproc_per_node=N CycleINRTrain/CycleINRTrain.py ...``.
"""

import os
import sys


def core_candidates(here=None):
    """Folders that may hold the ``cycleinr`` package, nearest first:

    * ``../qt-scripted-modules``: a Slicer install, an installed extension or an extension build tree,
      where this script lies in ``lib/Slicer-X.Y/cli-modules`` and the CycleINRSR module (with the
      ``cycleinr`` package next to it) in ``lib/Slicer-X.Y/qt-scripted-modules``;
    * ``../CycleINRSR``: the source checkout.
    """
    here = here or os.path.dirname(os.path.realpath(__file__))
    parent = os.path.dirname(here)
    return [os.path.join(parent, "qt-scripted-modules"), os.path.join(parent, "CycleINRSR")]


def find_core(here=None):
    """Put the first folder holding ``cycleinr/__init__.py`` at the front of sys.path and return it
    (None: rely on an installed ``cycleinr``)."""
    for folder in core_candidates(here):
        if os.path.isfile(os.path.join(folder, "cycleinr", "__init__.py")):
            folder = os.path.abspath(folder)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return folder
    return None


def main(argv=None):
    find_core()
    try:
        from cycleinr.train_cli import main as train_main
    except ImportError as exc:
        print(f"cycleinr: error: cannot import the CycleINR core package ({exc}); looked in "
              f"{', '.join(core_candidates())} and the Python path", file=sys.stderr)
        return 2
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
