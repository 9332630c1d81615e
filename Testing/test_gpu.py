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
    cpu = upsample(vol, (1, 1, 3.0), factor=3, model=model, device="cpu", noise="none").array
    gpu = upsample(vol, (1, 1, 3.0), factor=3, model=make_model(seed=2), device="cuda", noise="none").array
    assert gpu.shape == cpu.shape
    assert np.abs(gpu - cpu).max() < 0.02 * np.ptp(cpu)          # bfloat16 autocast of the network
    assert np.abs(gpu - cpu).mean() < 0.002 * np.ptp(cpu)


def test_self_ensemble_on_cuda_matches_the_cpu():
    """The flipped passes (z with mirrored positions, x, y) and their mean on the GPU give the CPU's result."""
    vol = phantom((9, 40, 36)).astype(np.float32)
    kw = dict(target_spacing=1.3, noise="none", ensemble=8)
    cpu = upsample(vol, (1, 1, 3.0), model=make_model(seed=2), device="cpu", **kw).array
    gpu = upsample(vol, (1, 1, 3.0), model=make_model(seed=2), device="cuda", **kw).array
    assert gpu.shape == cpu.shape
    assert np.abs(gpu - cpu).max() < 0.02 * np.ptp(cpu)
    assert np.abs(gpu - cpu).mean() < 0.002 * np.ptp(cpu)


def test_noise_matching_on_cuda_estimates_like_the_cpu_and_reaches_its_target():
    """Noise matching runs on the model's device: the same sigmas as on the CPU, and generated slices of
    white 20 HU noise come back to the acquired level (CUDA draws its own noise, so not the CPU's values)."""
    from cycleinr.noise import match_noise, noise_sigmas
    rng = np.random.default_rng(0)
    vol = (np.linspace(-200, 200, 160)[None, None, :] + rng.normal(0, 20, (6, 160, 160))).astype(np.float32)
    images = torch.from_numpy(vol)
    assert torch.allclose(noise_sigmas(images.cuda()).cpu(), noise_sigmas(images), rtol=1e-4)
    out = upsample(vol, (1, 1, 2.0), factor=2, model=make_model(seed=2), device="cuda", seed=3).array
    generated = noise_sigmas(torch.from_numpy(out[1::2])).numpy()
    assert np.all(np.abs(generated / 20 - 1) < 0.1), generated
    plain = upsample(vol, (1, 1, 2.0), factor=2, model=make_model(seed=2), device="cuda", noise="none")
    sigmas = noise_sigmas(images).double().numpy()
    first, second = (match_noise(torch.from_numpy(plain.array).cuda(), plain.positions, sigmas, seed=3).cpu()
                     for _ in range(2))
    assert torch.equal(first, second)                         # seeded on the device


def test_auto_device_picks_cuda():
    from cycleinr.inference import select_device
    assert select_device("auto").type == "cuda"


def test_cuda_window_and_tile_are_sized_from_free_memory():
    from cycleinr.config import preset
    from cycleinr.inference import window_and_tile
    window, tile = window_and_tile(preset("paper"), torch.device("cuda"), (64, 512, 512), 10)
    assert 2 <= window <= 64 and 64 <= tile <= 512


def test_cuda_training_step_with_bf16_autocast_learns():
    from cycleinr.data import Volume, sample_batch
    from cycleinr.train import losses
    model = make_model(seed=3).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    vols = [Volume(phantom((40, 48, 48)).astype(np.float32), "p", (0,))]
    batch = sample_batch(rng, vols, 4, 6, 24, (3.0, 3.0))
    first = None
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total = losses(model, batch, 1.0, "cuda", "l2")["total"]
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else float(total)
    assert float(total) < first


def test_adaptation_on_cuda_learns_on_a_copy_and_upsamples_with_it(chest):
    """``--adapt`` on CUDA (issue 13): the copy trains on the GPU and lowers the in-plane loss as on the
    CPU, the model passed in stays on the CPU unchanged, and the adapted copy upsamples within the input's range."""
    from cycleinr import adapt_model, load_model

    crop, spacing = chest
    base = load_model("fast")
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    net, report = adapt_model(base, crop, spacing, 60, target_spacing=2.0, device="cuda", max_iterations=60)
    out = upsample(crop, spacing, target_spacing=2.0, model=net, device="cuda", noise="none")
    assert report["device"].startswith("cuda") and next(net.parameters()).is_cuda
    assert report["iterations"] == 60 and report["kept"] == "adapted"
    assert report["loss_after"] < 0.997 * report["loss_before"]
    assert all(not p.is_cuda for p in base.parameters())
    assert all(torch.equal(reference[k], v) for k, v in base.state_dict().items())
    assert out.array.shape[1:] == crop.shape[1:] and np.isfinite(out.array).all()
    assert crop.min() <= out.array.min() and out.array.max() <= crop.max()
