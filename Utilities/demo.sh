#!/usr/bin/env bash
# One command for a fresh machine: install CycleINR (CPU torch) and upsample the bundled 5 mm chest CT.
#   bash Utilities/demo.sh [THICKNESS_MM] [MODEL]     (defaults: 2.5 mm, model auto)
# MODEL auto = the paper-size "default" model on a CUDA GPU, the small "fast" one on a CPU.
# Writes demo_output/CycleINRSampleChestCT_<t>mm_<model>.nrrd and comparison_/report_<t>mm_<model>.png/.json,
# so runs with another thickness or model never overwrite each other. Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
THICKNESS=${1:-2.5}
MODEL=${2:-auto}
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0   # CPU build on Linux x86-64
if ! "$PY" -c "import sys, pathlib, cycleinr, SimpleITK, pywt, skimage, safetensors, matplotlib
sys.exit(0 if pathlib.Path(cycleinr.__file__).resolve().is_relative_to(pathlib.Path('CycleINRSR').resolve()) else 1)" \
    2>/dev/null; then
  "$PY" -m pip install -q -e .
fi
if [ "$MODEL" = auto ]; then
  MODEL=$("$PY" -c "from cycleinr.inference import select_device; from cycleinr.weights import model_for_device
print(model_for_device(select_device('auto')))")
  echo "Model: $MODEL (auto: paper-size 'default' on CUDA, small 'fast' on CPU; choose with: $0 $THICKNESS default)"
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
