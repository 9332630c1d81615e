#!/usr/bin/env bash
# Issue 10's GPU figures in one run, on any CUDA machine (the project's CPU/CI runs never need it):
#   bash Testing/benchmarks/gpu_check.sh [CT_64x512x512_5mm.nrrd] [OUT_DIR]
# 1. the GPU tests; 2. `cycleinr bench` of the paper preset (default model) on a real 5 mm CT to 1 mm, with the
# bf16 matmul peak and the ratio to the compute bound measured in the same run; 3. the training step at batch 16,
# 48x48 patches, 6 thick slices, bf16 autocast (iterations/s and peak GPU memory); 4. `cycleinr upsample` of the
# CT with 1 and 2 self-ensemble passes per bundled model (seconds: whether 2 passes could be CUDA's default). Needs SimpleITK and PyWavelets
# (pip install them first; on a machine without network, from wheels carried in the checkout).
set -euo pipefail
cd "$(dirname "$0")/../.."
CT=${1:-../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd}
OUT=${2:-runs/gpu}
mkdir -p "$OUT"
python -m pytest -q -m gpu Testing/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
python -m cycleinr bench --device cuda --presets default fast --volume "$CT" --factor 5 --repeats 2 \
  --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
for preset in paper fast; do
  python Testing/benchmarks/train_step.py --device cuda --preset "$preset" --batch 16 --patch 48 --slices 6 \
    --iterations 20 --amp 2>&1 | tee -a "$OUT/train_step_cuda.txt"
done
for model in fast default; do
  for passes in 1 2; do
    echo -n "$model, --ensemble $passes: " | tee -a "$OUT/ensemble_cuda.txt"
    python -m cycleinr upsample "$CT" "$OUT/ensemble.nrrd" --factor 5 --device cuda --model "$model" \
      --ensemble "$passes" --quiet 2>&1 | tail -1 | tee -a "$OUT/ensemble_cuda.txt"
  done
done
rm -f "$OUT/ensemble.nrrd"
