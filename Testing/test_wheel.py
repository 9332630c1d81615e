"""The wheel ships the default weights: built from a clean copy of the sources, installed non-editable into
a fresh virtual environment (with the system's packages, so torch is not downloaded again), it upsamples
with ``--model default`` from an unrelated folder without $CYCLEINR_MODELS or the source tree."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import SimpleITK as sitk

from conftest import phantom

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("cycleinr_fast.safetensors", "cycleinr_fast.json", "cycleinr_paper.safetensors", "cycleinr_paper.json")


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_has_the_weights_and_works_installed(tmp_path):
    src = tmp_path / "src"                         # only what a fresh clone has: no egg-info, no build/
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "CycleINRSR" / "cycleinr", src / "CycleINRSR" / "cycleinr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (src / "Resources" / "Models").mkdir(parents=True)
    for name in MODELS:
        shutil.copy(ROOT / "Resources" / "Models" / name, src / "Resources" / "Models" / name)
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist"])
    wheel = next((tmp_path / "dist").glob("cycleinr-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        sizes = {Path(i.filename).name: i.file_size for i in zf.infolist() if i.filename.startswith("cycleinr/models/")}
    assert sizes == {name: (ROOT / "Resources" / "Models" / name).stat().st_size for name in MODELS}

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = sitk.GetImageFromArray(phantom((3, 10, 10)))
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(elsewhere / "in.nrrd"))
    env = {k: v for k, v in os.environ.items() if k not in ("CYCLEINR_MODELS", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    where = run([python, "-c", "import cycleinr; print(cycleinr.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), where          # the wheel, not the editable checkout
    run([venv / "bin" / "cycleinr", "upsample", "in.nrrd", "out.nrrd", "--factor", "2", "--model", "default",
         "--device", "cpu", "--quiet", "--report", "r.json"], cwd=elsewhere, env=env)
    report = json.loads((elsewhere / "r.json").read_text(encoding="utf-8"))
    assert Path(report["model_file"]).is_relative_to(venv) and report["model_file"].endswith("cycleinr_paper.safetensors")
    assert sitk.ReadImage(str(elsewhere / "out.nrrd")).GetSize() == (10, 10, 5)
