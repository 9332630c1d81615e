"""The shipped weights, checked for real: each bundled model beats linear interpolation (PSNR) on a
small slab of held-out head CT (slices the models never saw) at x2, x3 and x5, interval sampling."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cycleinr.baselines import interpolate
from cycleinr.degrade import simulate_thick
from cycleinr.inference import upsample
from cycleinr.metrics import noise_sigma_per_slice, psnr
from cycleinr.noise import generated_mask
from cycleinr.volume_io import read_volume
from cycleinr.weights import load_model, models_dir

from conftest import jump_ratio

SLAB = Path(__file__).parent / "data" / "head_heldout_slab.nrrd"


@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_model_beats_linear_on_heldout_ct(name):
    model = load_model(name)                       # fails (not skips) if the bundled weights are missing
    assert Path(model.source).parent == models_dir()
    assert model.meta["config"]["neighbours"] == 27 and model.meta["training"]["settings"]["cycle_weight"] > 0
    hr, _, _ = read_volume(SLAB)
    hr = hr.astype(np.float32)
    for scale in (2, 3, 5):
        lr, _ = simulate_thick(hr, scale)
        ref = hr[: (lr.shape[0] - 1) * scale + 1]
        new = np.arange(len(ref)) % scale != 0     # score the generated slices, where methods differ
        sr = upsample(lr, (1, 1, scale), factor=scale, model=model, device="cpu").array
        lin = interpolate(lr, (1, 1, scale), factor=scale, method="linear").array
        gain = psnr(ref[new], sr[new]) - psnr(ref[new], lin[new])
        assert gain > 0, f"{name} x{scale}: {gain:+.3f} dB vs linear"


@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_model_is_continuous_in_z_on_real_ct(name):
    """No jump when scrolling: decoding real CT (every 3rd slice of the held-out slab, as a thick scan) at
    k + 1/2 -+ 1e-6 changes the output by well under 0.5 HU, and fine z sweeps show no step."""
    model = load_model(name)
    hr, _, _ = read_volume(SLAB)
    lr = torch.from_numpy(hr[::3, 8:40, 8:40].astype(np.float32) / model.config.intensity_scale)[None, None]
    halves = torch.arange(lr.shape[2] - 1) + 0.5
    with torch.no_grad():
        below, above = model(lr, halves - 1e-6)[0], model(lr, halves + 1e-6)[0]
    hu = (below - above).abs() * model.config.intensity_scale
    assert hu.mean() <= 0.5 and hu.max() < 5, (float(hu.mean()), float(hu.max()))
    assert jump_ratio(model, lr[..., :12, :12], [1.5, 2.0, 2.3]) < 0.3


def test_sliding_windows_match_whole_volume_with_the_paper_model():
    """Default margin (the measured effective receptive field, not the full 21-voxel context): windows and
    tiles stitched from real CT stay within 0.5 HU (p99) of decoding the whole volume at once."""
    model = load_model("default")
    assert 0 < model.config.window_margin < model.config.context_radius     # the measured margin is in use
    hr, _, _ = read_volume(SLAB)
    lr = hr[::2, 16:56, 16:56].astype(np.float32)                           # 8 thick slices of 40 x 40
    whole = upsample(lr, (1, 1, 2.0), factor=2, model=model, device="cpu", window=100, tile=1000).array
    windowed = upsample(lr, (1, 1, 2.0), factor=2, model=model, device="cpu", window=4, tile=20).array
    error = np.abs(windowed - whole)
    assert np.percentile(error, 99) <= 0.5 and error.mean() < 0.05, (np.percentile(error, 99), error.mean())


@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_model_slices_carry_the_acquired_noise_level(name):
    """Scrolling shows no noise dip: with the product's default settings, generated slices of held-out
    real CT (thick slices simulated from the slab) have 0.9-1.1 x the noise sigma of the acquired ones
    (issue 11's target; a conditional-mean output without noise matching is near 0.8 at x2)."""
    model = load_model(name)
    hr, _, _ = read_volume(SLAB)
    for scale in (2, 3, 5):
        lr, _ = simulate_thick(hr.astype(np.float32), scale)
        out = upsample(lr, (1, 1, scale), factor=scale, model=model, device="cpu")
        sigmas = noise_sigma_per_slice(out.array)
        generated = generated_mask(out.positions)
        ratio = sigmas[generated].mean() / sigmas[~generated].mean()
        assert 0.9 <= ratio <= 1.1, f"{name} x{scale}: dip ratio {ratio:.3f}"
