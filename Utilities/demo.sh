#!/usr/bin/env bash
# One command for a fresh machine: install CycleINR (CPU torch) and upsample the bundled 5 mm chest CT.
#   bash Utilities/demo.sh [THICKNESS_MM] [MODEL]     (defaults: 2.5 mm, the default model)
# Writes demo_output/: the upsampled volume (.nrrd), comparison.png and report.json (SNLI, timing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
THICKNESS=${1:-2.5}
MODEL=${2:-default}
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e .
mkdir -p demo_output
out="demo_output/CycleINRSampleChestCT_${THICKNESS}mm.nrrd"
"$PY" -m cycleinr upsample Resources/SampleData/CycleINRSampleChestCT5mm.nrrd "$out" \
  --thickness "$THICKNESS" --model "$MODEL" --report demo_output/report.json --figure demo_output/comparison.png
"$PY" - <<'PY'
import json
r = json.load(open("demo_output/report.json"))
print(f"SNLI input {r['input']['snli']:.3f} -> output {r['output']['snli']:.3f}; "
      f"x{r['factor']:.2f} in {r['seconds']:.0f} s on {r['device']}")
PY
echo "Results in $(pwd)/demo_output: $(basename "$out"), comparison.png, report.json"
