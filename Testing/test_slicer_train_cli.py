"""Tier 2: the CycleINR Train script (Slicer CLI) in a Python without PyTorch, as in a fresh Slicer.

The script runs in a real subprocess in which ``import torch`` fails (``sys.modules['torch'] = None``, as
Python does for a module that cannot be imported): ``--xml`` and ``--help`` still work, a training run ends
with one clear ``cycleinr: error:`` line. Nothing of Slicer is involved.
"""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "CycleINRTrain" / "CycleINRTrain.py"
XML_FILE = ROOT / "CycleINRTrain" / "CycleINRTrain.xml"

# Runs the script as __main__ with torch unimportable, then reports whether torch got imported anyway.
WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.startswith("torch.") or m.startswith("cycleinr.train"))
    print("LOADED", loaded, file=sys.stderr)
"""


def run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_torch_really_is_unimportable_in_the_wrapper():
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH.replace("runpy.run_path", "import torch; #")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_xml_without_torch_is_the_committed_description():
    result = run_without_torch("--xml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == XML_FILE.read_text(encoding="utf-8")
    root = ET.fromstring(result.stdout.encode())
    assert root.findtext("documentation-url").startswith("https://")
    assert "LOADED []" in result.stderr


def test_help_without_torch_lists_every_option():
    result = run_without_torch("--help")
    assert result.returncode == 0, result.stderr
    flags = {f"--{e.text}" for e in ET.parse(XML_FILE).getroot().iter("longflag")}
    assert len(flags) > 20
    for flag in flags | {"--xml", "-i", "-o"}:
        assert flag in result.stdout, flag
    assert "PyTorch is not installed" in result.stdout


def test_training_without_torch_says_how_to_install_it(tmp_path):
    result = run_without_torch("-i", str(tmp_path / "thin.nrrd"), "-o", str(tmp_path / "w.safetensors"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("cycleinr: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "torch>=2.1" in errors[0] and "CycleINR Super-Resolution" in errors[0]
    assert not (tmp_path / "w.safetensors").exists()


def test_help_with_torch_still_comes_from_the_core():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--training_folder" in result.stdout and "PyTorch is not installed" not in result.stdout


def test_core_is_found_in_every_slicer_layout(tmp_path, monkeypatch):
    """Where Slicer puts the script, the ``cycleinr`` package beside the CycleINRSR module is found: an
    install or single-configuration build tree (``cli-modules``), a multi-configuration build tree
    (``cli-modules/<Config>``: Visual Studio, Xcode) and the source checkout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cycleinr_train_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "path", list(sys.path))       # find_core puts the folder first: undone after
    lib = tmp_path / "lib" / "Slicer-5.10"
    core = lib / "qt-scripted-modules"
    (core / "cycleinr").mkdir(parents=True)
    (core / "cycleinr" / "__init__.py").write_text("")
    for here in (lib / "cli-modules", lib / "cli-modules" / "Release"):
        here.mkdir(parents=True, exist_ok=True)
        assert script.find_core(str(here)) == str(core)
    assert script.find_core(str(ROOT / "CycleINRTrain")) == str(ROOT / "CycleINRSR")
    assert script.find_core(str(tmp_path)) is None
