#!/usr/bin/env bash
# Issue 12: train the paper preset on a CUDA GPU within one device call, in segments, each scored on the
# held-out head slab (the learning curve), and leave the weights where the call brings them back.
#   bash Testing/benchmarks/train_gpu.sh SEGMENTS MINUTES OUT [train_bundled.py options]
# e.g. fine-tuning the bundled default model for 2 x 3 min (on the device, carry runs/data and .whl):
#   bash Testing/benchmarks/train_gpu.sh 2 3 "$OUT" --init Resources/Models/cycleinr_paper.safetensors --lr 1e-4
# Recipe `gpu` of train_bundled.py (batch 16, 48x48 patches, 10 thick slices, L2, bf16 autocast) on the head's
# training slices and the chest CT's in-plane axes. Each segment after the first resumes the exact checkpoint
# (same options: they define the run); the held-out scores after each (noise_match.py: PSNR of generated slices,
# dip ratio, SNLI at x2 / x3 / x5, linear alongside, the bundled default and fast models after the last) go to
# OUT/curve.txt, the training log to OUT/train_log.txt, the weights (10.9 MB) to OUT/paper_gpu.safetensors + .json
# after every segment (so a call stopped at its limit still brings back the last finished segment's).
# A later call continues from those with --init (a new optimizer: the checkpoint with Adam's state, 33 MB, does
# not fit beside the data in a call's 64 MiB). Nothing here selects weights by the held-out scores.
# Prepare here, once: python Testing/benchmarks/split_data.py ../shared/data runs/data
#   cp ../shared/data/lung_dx_a0001_chest_ct_5mm.nrrd runs/data/     # and PyWavelets' cp312 wheel into .whl
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 3 ] || { echo "usage: $0 SEGMENTS MINUTES OUT [train_bundled.py options]" >&2; exit 2; }
SEGMENTS=$1 MINUTES=$2 OUT=$3
shift 3
[[ "$SEGMENTS" =~ ^[1-9][0-9]*$ ]] || { echo "SEGMENTS must be a whole number >= 1, got '$SEGMENTS'" >&2; exit 2; }
DEVICE=${DEVICE:-cuda}            # DEVICE=cpu runs the same steps here, to check the script
source Testing/benchmarks/gpu_env.sh
mkdir -p runs/gpu_train "$OUT"
MODEL=runs/gpu_train/paper_gpu.safetensors
CKPT=runs/gpu_train/paper_gpu.ckpt.safetensors
rm -f "$CKPT"                     # segment 1 starts from the options, never from a stale checkpoint
for segment in $(seq 1 "$SEGMENTS"); do
  resume=()
  [ "$segment" -gt 1 ] && resume=(--resume "$CKPT")
  python Testing/benchmarks/train_bundled.py gpu "$MODEL" --device "$DEVICE" --minutes "$MINUTES" \
    --chest runs/data/lung_dx_a0001_chest_ct_5mm.nrrd "$@" "${resume[@]}" 2>&1 | tee -a "$OUT/train_log.txt"
  cp "$MODEL" "${MODEL%.safetensors}.json" "$OUT/"
  models=("$MODEL")
  [ "$segment" -eq "$SEGMENTS" ] && models+=(default fast)
  echo "after segment $segment of $SEGMENTS ($MINUTES min each)" | tee -a "$OUT/curve.txt"
  python Testing/benchmarks/noise_match.py runs/data/head_test_crop.nrrd --models "${models[@]}" \
    --device "$DEVICE" 2>&1 | tee -a "$OUT/curve.txt"
done
