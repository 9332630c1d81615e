"""CUDA path (run with `bash Testing/run_tests.sh -m gpu` on a machine with a GPU; not in the default run)."""

import numpy as np
import pytest
import torch

from cycleinr import upsample

from conftest import make_model, phantom

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")]


def test_cuda_matches_cpu_within_bfloat16_precision():
    model = make_model(seed=2)
    vol = phantom((10, 40, 40)).astype(np.float32)
    cpu = upsample(vol, (1, 1, 3.0), factor=3, model=model, device="cpu").array
    gpu = upsample(vol, (1, 1, 3.0), factor=3, model=make_model(seed=2), device="cuda").array
    assert gpu.shape == cpu.shape
    assert np.abs(gpu - cpu).max() < 0.02 * np.ptp(cpu)          # bfloat16 autocast of the network
    assert np.abs(gpu - cpu).mean() < 0.002 * np.ptp(cpu)


def test_auto_device_picks_cuda():
    from cycleinr.inference import select_device
    assert select_device("auto").type == "cuda"
