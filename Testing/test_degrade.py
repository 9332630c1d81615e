"""Thick-slice simulation: interval sampling and slab averaging, integer and decimal scales."""

import numpy as np
import pytest

from cycleinr.data import Volume, draw_scale, sample_batch
from cycleinr.degrade import degradation_matrix, lr_positions, noise_target, simulate_thick
from cycleinr.train import TrainSettings


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


@pytest.mark.parametrize("mode", ["interval", "slab", "interval_matched"])
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


# ------------------------------------------------------------------ noise at decimal scales (issue 11)

WHITE = np.random.default_rng(11).normal(40.0, 20.0, size=(60, 96, 96)).astype(np.float32)
DECIMAL = (2.5, 3.3, 4.7)


def slice_noise(lr: np.ndarray) -> np.ndarray:
    return lr.std(axis=(1, 2)) / WHITE.std(axis=(1, 2)).mean()


@pytest.mark.parametrize("scale", DECIMAL)
def test_matched_interval_slices_carry_thin_slice_noise(scale):
    """White noise: every simulated thick slice has the per-slice noise std of a thin slice (within a few
    %), while the paper's linear blend demonstrably smooths the slices between thin ones (0.71 at t=1/2)."""
    lr, pos = simulate_thick(WHITE, scale, "interval_matched")
    ratio = slice_noise(lr)
    assert np.all(np.abs(ratio - 1) < 0.05), ratio
    assert abs(ratio.mean() - 1) < 0.02
    assert np.allclose(lr.mean(axis=(1, 2)), 40.0, atol=1.0)              # no bias: the noise is zero-mean
    blend = slice_noise(simulate_thick(WHITE, scale, "interval")[0])
    half = np.abs(pos - np.floor(pos) - 0.5) < 0.15                        # slices halfway between thin ones
    assert half.any() and np.all(blend[half] < 0.8), blend
    assert np.all(ratio[half] > 0.95)


def test_matched_slab_slices_all_carry_the_same_noise():
    """Slab at a decimal scale: the noise of an average depends on the slab's alignment to the thin grid
    (a few %); matched slabs all carry the noise of the least-averaging alignment, sqrt(noise_target)."""
    lr, pos = simulate_thick(WHITE, 2.5, "slab_matched")
    plain, _ = simulate_thick(WHITE, 2.5, "slab")
    inner = (pos > 2) & (pos < WHITE.shape[0] - 3)                       # slabs not cut by the volume's ends
    target = np.sqrt(noise_target(2.5, "slab"))                           # 0.6: slab [p - 1, p + 1.5]
    matched = slice_noise(lr)[inner] / target
    assert np.all(np.abs(matched - 1) < 0.05) and abs(matched.mean() - 1) < 0.01
    assert slice_noise(plain)[inner].mean() / target < 0.985              # 0.583 / 0.6 for these alignments


def test_matched_modes_keep_the_signal_and_integer_interval_scales():
    ramp = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    lr, pos = simulate_thick(ramp, 3.3, "interval_matched")               # no in-plane noise: nothing added
    assert np.allclose(lr[:, 0, 0], pos, atol=1e-4)
    a, _ = simulate_thick(WHITE, 4, "interval_matched")
    assert np.array_equal(a, WHITE[::4])                                   # real slices, untouched
    b1, _ = simulate_thick(WHITE, 2.5, "interval_matched", seed=1)
    assert np.array_equal(b1, simulate_thick(WHITE, 2.5, "interval_matched", seed=1)[0])   # reproducible


def test_training_pairs_carry_thin_slice_noise_by_default():
    """The training default degrades with matched noise: LR and HR slices of a batch have the same noise."""
    assert TrainSettings().degradation == "interval_matched"
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(6):
        b = sample_batch(rng, [Volume(WHITE, "white")], 2, 4, 48, scale_range=(2.1, 4.9),
                         mode=TrainSettings().degradation, augment=False, scale_hu=1.0)
        ratios.append(b.lr[:, 0].std(axis=(2, 3)).mean() / b.hr.std(axis=(2, 3)).mean())
    assert abs(np.mean(ratios) - 1) < 0.03, ratios
