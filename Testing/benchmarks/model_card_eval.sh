#!/usr/bin/env bash
# Reproduce the evaluation in Resources/Models/README.md (held-out head CT slab, x2/x3/x5).
#   bash Testing/benchmarks/model_card_eval.sh [ABLATION_DIR]     (default runs/ablation2: train_bundled.py fast --ablation V --epochs 25)
# Writes runs/card/all (every method + the ablations: results.md/.csv, figures/) and the card's figures,
# quantised to 128 colours, to Resources/Models/figures/. About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
ABL=${1:-runs/ablation2}
[ -f runs/data/head_test_crop.nrrd ] || python Testing/benchmarks/split_data.py ../shared/data runs/data
python -m cycleinr lpips-weights >/dev/null 2>&1 || echo "LPIPS weights unavailable: LPIPS columns will say n/a"
ablations=()                       # the ablation rows, when their weights are there (train_bundled.py --ablation)
if [ -f "$ABL/inr_lam_ccl.safetensors" ]; then
  for v in INR:inr INR+LAM:inr_lam INR+CCL:inr_ccl INR+LAM+CCL:inr_lam_ccl; do
    ablations+=(--extra-model "fast:${v%%:*}=$ABL/${v##*:}.safetensors")
  done
else echo "no ablation weights in $ABL: their rows are left out"; fi
python -m cycleinr evaluate runs/data/head_test_crop.nrrd --scales 2 3 5 \
  --methods nearest linear cubic sinc cycleinr --model default \
  --extra-model "CycleINR-fast=fast" "${ablations[@]}" \
  --lpips alex vgg --device cpu --out runs/card/all
python -m cycleinr evaluate runs/data/head_test_crop.nrrd --scales 2 5 --methods linear cubic cycleinr \
  --model default --extra-model "CycleINR-fast=fast" --no-lpips --device cpu --out runs/card/figures
mkdir -p Resources/Models/figures
python - <<'PY'
from pathlib import Path
from PIL import Image
for src in sorted(Path("runs/card/figures/figures").glob("*.png")):
    dst = Path("Resources/Models/figures") / src.name
    Image.open(src).convert("RGB").quantize(colors=128).save(dst, optimize=True)
    print(dst, dst.stat().st_size // 1024, "KiB")
PY
