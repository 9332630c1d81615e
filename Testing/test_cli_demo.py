"""README's main command, end to end (slow: about a minute of upsampling on 2 CPU cores): the model is
chosen by device and said, and the outputs carry thickness and model so another variant does not
overwrite them. Timing is measured with `time bash Utilities/demo.sh`, not asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_and_names_outputs_by_thickness_and_model():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "Utilities" / "demo.sh"), "2.5"], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = "default" if "model default on cuda" in proc.stderr else "fast"
    assert f"Model: {model} (auto" in proc.stdout and "lower is better" in proc.stdout
    out = ROOT / "demo_output"
    for name in (f"CycleINRSampleChestCT_2.5mm_{model}.nrrd", f"comparison_2.5mm_{model}.png",
                 f"report_2.5mm_{model}.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / f"report_2.5mm_{model}.json").read_text(encoding="utf-8"))
    assert report["output_shape"][0] == 63 and report["model"] == model      # demo.sh resolved 'auto' itself
