"""Metrics: SNLI behaves as the paper describes, PSNR/SSIM conventions, Dice/NSD on known shapes."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.restoration import estimate_sigma

from cycleinr import metrics


def noisy_volume(slices=12, size=96, sigma=20.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    background = 40.0 + 30.0 * np.sin(yy / 15.0) * np.cos(xx / 20.0)  # smooth anatomy-like signal
    return background[None] + sigma * rng.standard_normal((slices, size, size))


def test_noise_sigma_matches_skimage_and_true_sigma():
    vol = noisy_volume()
    sigmas = metrics.noise_sigma_per_slice(vol)
    assert sigmas.shape == (vol.shape[0],)
    assert sigmas[3] == pytest.approx(estimate_sigma(vol[3], channel_axis=None), rel=1e-12)
    np.testing.assert_allclose(sigmas, 20.0, rtol=0.1)


def test_noise_sigma_of_constant_slice_is_zero():
    vol = noisy_volume(slices=3)
    vol[1] = -1024.0
    assert metrics.noise_sigma_per_slice(vol)[1] == 0.0


def test_snli_near_zero_for_uniform_noise_and_grows_when_every_other_slice_is_smoothed():
    vol = noisy_volume()
    uniform = metrics.snli(vol)
    assert isinstance(uniform, metrics.SNLIResult)
    assert uniform.sigmas.shape == (vol.shape[0],)
    assert uniform.value == pytest.approx(np.std(uniform.sigmas))
    assert uniform.value < 1.0  # 5% of the 20 HU noise
    smoothed = vol.copy()
    smoothed[1::2] = ndimage.gaussian_filter(vol[1::2], sigma=(0, 1.5, 1.5))
    inconsistent = metrics.snli(smoothed)
    assert inconsistent.value > 5.0
    assert inconsistent.sigmas[1::2].max() < inconsistent.sigmas[0::2].min()


def test_psnr_ssim_of_identical_volumes():
    vol = noisy_volume(slices=4, size=32)
    assert metrics.psnr(vol, vol.copy()) == float("inf")
    assert metrics.ssim(vol, vol.copy()) == pytest.approx(1.0)


def test_psnr_known_value_and_window_clipping():
    ref = np.zeros((3, 16, 16))
    # a 30.72 HU offset is 1% of the 3072 HU window: exactly 40 dB
    assert metrics.psnr(ref, ref + 30.72) == pytest.approx(40.0)
    # values outside the window are clipped before comparing: these two agree
    a, b = np.full((2, 8, 8), -2000.0), np.full((2, 8, 8), -3000.0)
    assert metrics.psnr(a, b) == float("inf")
    assert metrics.psnr(ref, ref + 30.72, window=(-1000, 1000)) == pytest.approx(20 * np.log10(2000 / 30.72))


def test_slice_selection_scores_only_those_slices():
    ref = noisy_volume(slices=6, size=32)
    test = ref.copy()
    test[2] += 50.0
    assert metrics.psnr(ref, test, slices=[0, 1, 3]) == float("inf")
    assert metrics.ssim(ref, test, slices=np.array([True, False, False, True, False, False])) == pytest.approx(1.0)
    assert metrics.psnr(ref, test, slices=[2]) < metrics.psnr(ref, test)
    assert metrics.ssim(ref, test, slices=[2]) < 1.0
    with pytest.raises(ValueError):
        metrics.psnr(ref, test[:-1])


def test_threshold_masks():
    vol = np.array([-1000, -101, -100, 0, 300, 301, 1500], dtype=float).reshape(1, 1, -1)
    masks = metrics.threshold_masks(vol)
    assert masks["bone"].ravel().tolist() == [False] * 5 + [True, True]
    assert masks["soft"].ravel().tolist() == [False, False, True, True, True, False, False]


def test_dice_two_cubes_with_known_overlap():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[0:10, 0:10, 0:10] = True
    b[0:10, 0:10, 5:15] = True  # half of each cube overlaps
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, np.zeros_like(a)) == 0.0
    assert metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def sphere(centre, radius=10, n=40):
    zz, yy, xx = np.mgrid[:n, :n, :n]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_nsd_sphere_shift_within_and_beyond_tolerance():
    a = sphere((20, 20, 20))
    within, beyond = sphere((21, 20, 20)), sphere((23, 20, 20))
    assert metrics.normalized_surface_dice(a, a, (1, 1, 1)) == 1.0
    assert metrics.normalized_surface_dice(a, within, (1, 1, 1), tolerance_mm=1.0) == pytest.approx(1.0)
    assert metrics.normalized_surface_dice(a, beyond, (1, 1, 1), tolerance_mm=1.0) < 0.6
    assert metrics.normalized_surface_dice(a, beyond, (1, 1, 1), tolerance_mm=3.0) == pytest.approx(1.0)
    # the same one-voxel shift is 2 mm when slices are 2 mm apart: beyond a 1 mm tolerance
    assert metrics.normalized_surface_dice(a, within, (2, 1, 1), tolerance_mm=1.0) < 0.9
    assert metrics.normalized_surface_dice(a, np.zeros_like(a), (1, 1, 1)) == 0.0
