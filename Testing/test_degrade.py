"""Thick-slice simulation: interval sampling and slab averaging, integer and decimal scales."""

import numpy as np
import pytest

from cycleinr.data import Volume, draw_scale, sample_batch
from cycleinr.degrade import degradation_matrix, lr_positions, simulate_thick


def test_interval_integer_scale_takes_exact_slices():
    hr = np.random.default_rng(0).normal(size=(21, 4, 5)).astype(np.float32)
    lr, pos = simulate_thick(hr, 5)
    assert np.array_equal(pos, [0, 5, 10, 15, 20])
    assert np.array_equal(lr, hr[::5])


def test_decimal_scale_interpolates_between_slices():
    ramp = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    lr, pos = simulate_thick(ramp, 2.5)
    assert np.allclose(pos, np.arange(8) * 2.5)
    assert np.allclose(lr[:, 0, 0], pos)                 # a linear ramp is sampled exactly at 2.5 j


def test_slab_averages_the_slab():
    w = degradation_matrix(20, lr_positions(20, 3.0, 3.0), 3.0, "slab")
    assert np.allclose(w.sum(1), 1)
    assert np.allclose(w[0, 2:5], 1 / 3) and w[0, [1, 5]].sum() == 0
    w = degradation_matrix(20, np.array([4.0]), 2.0, "slab")                # half slices at the slab ends
    assert np.allclose(w[0, 3:6], [0.25, 0.5, 0.25])


def test_too_few_slices_and_bad_mode():
    with pytest.raises(ValueError, match="too few"):
        lr_positions(4, 5.0)
    with pytest.raises(ValueError, match="mode"):
        degradation_matrix(10, np.array([0.0]), 2.0, "blur")


def test_scales_have_one_decimal_and_cover_the_range():
    rng = np.random.default_rng(0)
    scales = {draw_scale(rng) for _ in range(2000)}
    assert min(scales) == 2.0 and max(scales) == 6.0 and len(scales) == 41


@pytest.mark.parametrize("mode", ["interval", "slab"])
def test_training_pairs_line_up(mode):
    """Without augmentation the HR target slice k sits at LR index k / r, and an LR slice at an integer
    HR position equals (interval) that HR slice."""
    ramp = np.arange(60, dtype=np.float32)[:, None, None] * np.ones((1, 16, 16), np.float32)
    rng = np.random.default_rng(3)
    for _ in range(10):
        b = sample_batch(rng, [Volume(ramp, "ramp")], 2, 4, 8, mode=mode, augment=False, scale_hu=1.0)
        z0 = b.hr[0, 0, 0, 0]
        assert np.allclose(b.hr[0, :, 0, 0], z0 + np.arange(b.hr.shape[1]))
        assert np.allclose(b.z_hr * b.scale, np.arange(b.hr.shape[1]))
        inside = (z0 + b.z_lr > b.scale / 2) & (z0 + b.z_lr < 59 - b.scale / 2)   # slabs not cut by the ends
        assert np.allclose(b.lr[0, 0, inside, 0, 0], z0 + b.z_lr[inside], atol=0.05)  # cells vs ramp
