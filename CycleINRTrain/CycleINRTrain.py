#!/usr/bin/env python-real
"""CycleINRTrain: the Slicer scripted CLI that trains CycleINR weights (see README.md here).

All options, the progress protocol and the execution-model XML come from ``cycleinr.train_cli``; this
file only finds that package and calls it. ``--xml`` prints the XML; CycleINRTrain.xml beside this file
is its committed copy, regenerated with

    python CycleINRTrain/CycleINRTrain.py --xml > CycleINRTrain/CycleINRTrain.xml

Multi-GPU: ``torchrun --nproc_per_node=N CycleINRTrain/CycleINRTrain.py ...``.

Without PyTorch, ``--xml`` prints that committed copy and ``--help`` is built from it; a training run
then ends with one ``cycleinr: error:`` line that says how to install PyTorch. Needs Python 3.10+
(in Slicer: 5.10+, which has Python 3.12); an older Python is told so. Keep this file free of newer syntax for that reason.
"""

import argparse
import os
import sys
import xml.etree.ElementTree as ET

MINIMUM_PYTHON = (3, 10)  # what the core needs; 3D Slicer 5.10 has Python 3.12
XML_FILE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "CycleINRTrain.xml")
NO_TORCH = ("CycleINR Train needs PyTorch (torch>=2.1), which is not installed in this Python ({python}). "
            "In 3D Slicer: open the 'CycleINR Super-Resolution' module and click Apply once (it offers to install "
            "PyTorch through the PyTorch extension), or use the PyTorch Utils module; then run CycleINR Train again. "
            "Outside Slicer: pip install 'torch>=2.1'.")


def core_candidates(here=None):
    """Folders that may hold the ``cycleinr`` package, nearest first:

    * ``../qt-scripted-modules``: a Slicer install, an installed extension or an extension build tree,
      where this script lies in ``lib/Slicer-X.Y/cli-modules`` and the CycleINRSR module (with the
      ``cycleinr`` package next to it) in ``lib/Slicer-X.Y/qt-scripted-modules``;
    * ``../../qt-scripted-modules``: a build tree of a multi-configuration generator (Visual Studio,
      Xcode), where the script is copied to ``cli-modules/<Config>``;
    * ``../CycleINRSR``: the source checkout.
    """
    here = here or os.path.dirname(os.path.realpath(__file__))
    parent = os.path.dirname(here)
    return [os.path.join(parent, "qt-scripted-modules"), os.path.join(os.path.dirname(parent), "qt-scripted-modules"),
            os.path.join(parent, "CycleINRSR")]


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


def help_from_xml(path=XML_FILE):
    """The --help text, built from the execution-model XML (used when torch, and so the core, is missing)."""
    root = ET.parse(path).getroot()
    parser = argparse.ArgumentParser(prog="CycleINRTrain", description=root.findtext("description"),
                                     epilog="PyTorch is not installed here, so only --xml and --help work.")
    parser.add_argument("--xml", action="store_true", help="print the Slicer execution-model XML description and exit")
    for group in root.iter("parameters"):
        options = parser.add_argument_group(group.findtext("label", "").lower(), group.findtext("description"))
        for param in group:
            if param.findtext("longflag") is None:
                continue
            flags = ([f"-{param.findtext('flag')}"] if param.findtext("flag") else []) + [f"--{param.findtext('longflag')}"]
            text = f"{param.findtext('label')}: {param.findtext('description')}".replace("%", "%%")
            if param.findtext("default") is not None:
                text += f" (default: {param.findtext('default')})"
            kwargs = {"action": "store_true"} if param.tag == "boolean" else {"metavar": param.tag.upper()}
            if param.findall("element"):
                kwargs = {"choices": [e.text for e in param.findall("element")]}
            options.add_argument(*flags, help=text, **kwargs)
    return parser.format_help()


def run_without_torch(argv):
    if "--xml" in argv:
        with open(XML_FILE, encoding="utf-8") as f:
            sys.stdout.write(f.read())
        return 0
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(help_from_xml())
        return 0
    print("cycleinr: error: " + NO_TORCH.format(python=sys.executable), file=sys.stderr)
    return 2


def main(argv=None):
    if sys.version_info < MINIMUM_PYTHON:
        print("cycleinr: error: CycleINR Train needs Python {}.{} or later (in 3D Slicer: 5.10 or later); this is Python "
              "{}. Please install a current Slicer.".format(*MINIMUM_PYTHON, sys.version.split()[0]), file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    find_core()
    try:
        from cycleinr.train_cli import main as train_main
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "torch":
            return run_without_torch(argv)
        print(f"cycleinr: error: cannot import the CycleINR core package ({exc}); looked in "
              f"{', '.join(core_candidates())} and the Python path", file=sys.stderr)
        return 2
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
