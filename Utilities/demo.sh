#!/usr/bin/env bash
# One command for a fresh machine: install CycleINR (CPU torch if none) and upsample the bundled 5 mm chest CT.
#   bash Utilities/demo.sh [THICKNESS_MM] [MODEL]     (defaults: 2.5 mm, model auto)
# MODEL auto = the bundled model chosen for the device (cycleinr.weights.AUTO_MODEL: "fast" on CPU and CUDA today).
# Writes demo_output/CycleINRSampleChestCT_<t>mm_<model>.nrrd and comparison_/report_<t>mm_<model>.png/.json,
# so runs with another thickness or model never overwrite each other. Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
THICKNESS=${1:-2.5}
MODEL=${2:-auto}
# Prints the model 'auto' picks here; fails if a dependency is missing or cycleinr is not this checkout's.
choose='import sys, pathlib, SimpleITK, pywt, skimage, safetensors, matplotlib, cycleinr
from cycleinr.inference import select_device
from cycleinr.weights import model_for_device
here = pathlib.Path(cycleinr.__file__).resolve().is_relative_to(pathlib.Path("CycleINRSR").resolve())
print(model_for_device(select_device("auto"))) if here else sys.exit(1)'
AUTO=$("$PY" -c "$choose" 2>/dev/null) || {            # first run: install what is missing, then ask again
  if ! "$PY" -c "import torch" 2>/dev/null; then       # PyPI's Linux torch is the CUDA build: take the CPU one
    if [ "$(uname -s)" = Linux ]; then                 # offline machines: fall back to what pip can reach
      "$PY" -m pip install -q "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
        || "$PY" -m pip install -q "torch>=2.1"
    else "$PY" -m pip install -q "torch>=2.1"; fi
  fi
  "$PY" -m pip install -q -e . && AUTO=$("$PY" -c "$choose"); }
if [ "$MODEL" = auto ]; then
  MODEL=$AUTO
  echo "Model: $MODEL (auto: the bundled model for this device; the paper-size one with: $0 $THICKNESS default)"
fi
mkdir -p demo_output
tag="${THICKNESS}mm_$(basename "${MODEL%.safetensors}")"
out="demo_output/CycleINRSampleChestCT_${tag}.nrrd"
report="demo_output/report_${tag}.json"
figure="demo_output/comparison_${tag}.png"
"$PY" -m cycleinr upsample Resources/SampleData/CycleINRSampleChestCT5mm.nrrd "$out" \
  --thickness "$THICKNESS" --model "$MODEL" --report "$report" --figure "$figure"
"$PY" - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"x{r['factor']:.2f} ({r['input_spacing']:g} -> {r['target_spacing']:g} mm) with model {r['model']} "
      f"in {r['seconds']:.0f} s on {r['device']}")
print(f"SNLI (slice-wise noise-level inconsistency: how much the noise level varies from slice to slice; "
      f"lower is better): input {r['input']['snli']:.3f}, output {r['output']['snli']:.3f}")
PY
echo "Results in $(pwd)/demo_output: $(basename "$out"), $(basename "$figure"), $(basename "$report")"
