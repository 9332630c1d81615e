"""Quick held-out check of weights or a training checkpoint: PSNR/SNLI vs linear on a head-test crop.

    python Testing/benchmarks/quick_check.py runs/models/cycleinr_fast.ckpt.safetensors [--crop 128]
"""

import argparse

import numpy as np

from cycleinr.baselines import interpolate
from cycleinr.config import ModelConfig
from cycleinr.degrade import simulate_thick
from cycleinr.inference import upsample
from cycleinr.metrics import psnr, snli
from cycleinr.model import CycleINR
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model, load_tensors


def load_any(path):
    tensors, meta = load_tensors(path)
    if "model.encoder.head.weight" not in tensors:
        return load_model(path)
    model = CycleINR(ModelConfig.from_dict(meta["config"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--volume", default="runs/data/head_test.nrrd")
    ap.add_argument("--crop", type=int, default=128)
    args = ap.parse_args()
    model = load_any(args.weights)
    hr, _, _ = read_volume(args.volume)
    c = args.crop
    y0, x0 = (hr.shape[1] - c) // 2, (hr.shape[2] - c) // 2
    hr = hr[:, y0:y0 + c, x0:x0 + c].astype(np.float32)
    for s in (2, 3, 5):
        lr, _ = simulate_thick(hr, s)
        ref = hr[: (lr.shape[0] - 1) * s + 1]
        lin = interpolate(lr, (1, 1, s), factor=s, method="linear").array
        out = upsample(lr, (1, 1, s), factor=s, model=model, device="cpu").array
        print(f"x{s}: PSNR model {psnr(ref, out):.3f} linear {psnr(ref, lin):.3f} | "
              f"SNLI model {snli(out).value:.3f} linear {snli(lin).value:.3f} HR {snli(ref).value:.3f}", flush=True)


if __name__ == "__main__":
    main()
