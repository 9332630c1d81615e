#!/usr/bin/env bash
# The GPU figures of issues 10 and 13 in one run, on any CUDA machine (the project's CPU/CI runs never need it):
#   bash Testing/benchmarks/gpu_check.sh [CT_64x512x512_5mm.nrrd] [OUT_DIR]
# 1. the GPU tests; 2. `cycleinr bench` of the paper preset (default model) on a real 5 mm CT to 1 mm, with the
# bf16 matmul peak and the ratio to the compute bound measured in the same run; 3. the training step at batch 16,
# 48x48 patches, 6 thick slices, bf16 autocast (iterations/s and peak GPU memory); 4. `cycleinr upsample` of the
# CT with 1 and 2 self-ensemble passes per bundled model (seconds: whether 2 passes could be CUDA's default);
# 5. per-scan adaptation on CUDA (issue 13), 30 s budgets on the held-out head slab (HEAD_SLAB, made by
# `python Testing/benchmarks/split_data.py ../shared/data runs/data`; carry runs/data), model ADAPT_MODEL (default
# fast; runs/models/fast_chestonly.safetensors for a scan it never saw): the product's recipe, then the whole
# network at 1e-4 without the step cap, the lever a 2-core CPU could not afford.
# On a bare device machine (gpu_env.sh: the checkout's cycleinr, NRRD without SimpleITK, PyWavelets from .whl),
# prepared here once: python Testing/benchmarks/split_data.py ../shared/data runs/data;
# cp ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd runs/data/; PyWavelets' cp312 wheel into .whl; carry runs/data
# and .whl (50 MB with the checkout, of a call's 64 MiB; runs/models too for ADAPT_MODEL).
set -euo pipefail
cd "$(dirname "$0")/../.."
source Testing/benchmarks/gpu_env.sh
CHEST=lung_dx_a0001_chest_ct_5mm.nrrd
if [ -f "runs/data/$CHEST" ]; then CT=${1:-runs/data/$CHEST}; else CT=${1:-../shared/data/$CHEST}; fi
OUT=${2:-runs/gpu}
HEAD_SLAB=${HEAD_SLAB:-runs/data/head_test_crop.nrrd}
ADAPT_MODEL=${ADAPT_MODEL:-fast}
mkdir -p "$OUT"
python -m pytest -q -m gpu Testing/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" \
  || echo "GPU tests failed (see gpu_tests.txt); measuring the rest anyway" | tee -a "$OUT/gpu_tests.txt"
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
if [ -f "$HEAD_SLAB" ]; then
  for recipe in "" "--trained all --lr 1e-4 --steps 100000"; do
    # shellcheck disable=SC2086  # the recipe is a list of options
    python Testing/benchmarks/adapt_gain.py "$HEAD_SLAB" --device cuda --scales 3 5 --budgets 30 \
      --model "$ADAPT_MODEL" $recipe 2>&1 | tee -a "$OUT/adapt_cuda.txt"
  done
else
  echo "step 5 skipped: no $HEAD_SLAB (python Testing/benchmarks/split_data.py ../shared/data runs/data)" \
    | tee "$OUT/adapt_cuda.txt"
fi
