"""Interpolation baselines: exact on ramps, same grid as upsample(), z only, input untouched."""

import numpy as np
import pytest

from cycleinr import baselines
from cycleinr.geometry import output_slice_positions

SPACING = (0.8, 0.7, 3.0)


def ramp_volume(n=40, slope=10.0, offset=-300.0):
    z = np.arange(n, dtype=np.float64)
    return np.broadcast_to((slope * z + offset)[:, None, None], (n, 4, 5)).copy()


@pytest.mark.parametrize("method", baselines.METHODS)
def test_grid_dtype_spacing_and_input_untouched(method):
    vol = ramp_volume(10).astype(np.int16)
    before = vol.copy()
    res = baselines.interpolate(vol, SPACING, factor=3, method=method)
    np.testing.assert_array_equal(res.positions, output_slice_positions(10, 3.0, 1.0))
    assert res.array.shape == (28, 4, 5) and res.array.dtype == np.float32
    assert res.spacing == (0.8, 0.7, pytest.approx(1.0))
    np.testing.assert_array_equal(vol, before)
    # input slices are kept where output slices land on them (nearest, linear, cubic, sinc all interpolate)
    np.testing.assert_allclose(res.array[::3], vol, atol=1e-3)


def test_target_spacing_grid_matches_geometry():
    vol = ramp_volume(10)
    res = baselines.interpolate(vol, (1, 1, 5.0), target_spacing=1.0, method="linear")
    assert res.array.shape[0] == 46
    np.testing.assert_array_equal(res.positions, output_slice_positions(10, 5.0, 1.0))
    res = baselines.interpolate(vol, (1, 1, 5.0), target_spacing=2.0, method="cubic")
    assert res.positions[-1] <= 9 and res.array.shape[0] == 23


@pytest.mark.parametrize("factor", [2, 3, 2.5])
def test_linear_reproduces_ramp_everywhere(factor):
    vol = ramp_volume()
    res = baselines.interpolate(vol, SPACING, factor=factor, method="linear")
    expected = 10.0 * res.positions - 300.0
    np.testing.assert_allclose(res.array[:, 2, 3], expected, atol=1e-4)


@pytest.mark.parametrize("method", ["cubic", "sinc"])
@pytest.mark.parametrize("factor", [2, 3, 5])
def test_cubic_and_sinc_reproduce_ramp_in_interior(method, factor):
    vol = ramp_volume()
    res = baselines.interpolate(vol, SPACING, factor=factor, method=method)
    interior = (res.positions >= 10) & (res.positions <= 29)
    expected = 10.0 * res.positions[interior] - 300.0
    np.testing.assert_allclose(res.array[interior, 1, 1], expected, atol=1e-3)
    # and they are not linear interpolation in disguise: a curved profile gives a different answer
    curved = vol ** 2 / 100.0
    lin = baselines.interpolate(curved, SPACING, factor=factor, method="linear").array
    other = baselines.interpolate(curved, SPACING, factor=factor, method=method).array
    assert np.abs(other - lin).max() > 0.1


def test_nearest_takes_the_nearest_slice():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(7, 3, 3))
    res = baselines.interpolate(vol, SPACING, factor=4, method="nearest")
    for k, p in enumerate(res.positions):
        np.testing.assert_allclose(res.array[k], vol[int(np.floor(p + 0.5))], rtol=1e-6)
    assert res.positions[1] == 0.25 and np.allclose(res.array[1], vol[0], rtol=1e-6)
    assert res.positions[3] == 0.75 and np.allclose(res.array[3], vol[1], rtol=1e-6)


@pytest.mark.parametrize("method", baselines.METHODS)
def test_in_plane_content_untouched(method):
    rng = np.random.default_rng(2)
    plane = rng.normal(size=(6, 7)) * 100
    vol = np.broadcast_to(plane, (9, 6, 7)).copy()
    res = baselines.interpolate(vol, SPACING, factor=2.5, method=method)
    np.testing.assert_allclose(res.array, np.broadcast_to(plane, res.array.shape), atol=1e-3)


def test_rejects_bad_arguments():
    vol = ramp_volume(5)
    with pytest.raises(ValueError, match="unknown interpolation method"):
        baselines.interpolate(vol, SPACING, factor=2, method="bicubic")
    with pytest.raises(ValueError):
        baselines.interpolate(vol, SPACING, factor=1.0)
    with pytest.raises(ValueError):
        baselines.interpolate(vol, SPACING, target_spacing=1.0, factor=2)
    with pytest.raises(ValueError):
        baselines.interpolate(vol[:1], SPACING, factor=2)


def test_interpolation_matrix_rows_sum_to_one():
    pos = output_slice_positions(12, 5.0, 0.7)
    for method in baselines.METHODS:
        w = baselines.interpolation_matrix(12, pos, method)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
