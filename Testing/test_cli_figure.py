"""The comparison figure: a generated (not acquired) slice in the axial row, stated windows, letters."""

import numpy as np
import pytest

from cycleinr import comparison

from conftest import phantom


@pytest.mark.parametrize("n_out, step, expected", [
    (46, 0.2, {22, 23}),          # 5 mm -> 1 mm: positions k/5; most central slice with frac 0.4 / 0.6
    (19, 0.5, {9}),               # x2: odd slices lie half-way, the middle one is 9
    (7, 1 / 3, {2, 4}),
])
def test_generated_slice_is_between_acquired_ones(n_out, step, expected):
    positions = np.arange(n_out) * step
    k = comparison.generated_slice(positions)
    assert k in expected
    assert abs(positions[k] - round(positions[k])) > 0.3 * step


@pytest.mark.parametrize("vector, letter", [
    ((1, 0, 0), "L"), ((-1, 0, 0), "R"), ((0, 1, 0), "P"), ((0, -1, 0), "A"), ((0, 0, 1), "S"),
    ((0, 0, -1), "I"), ((0.8, 0, 0.6), "LS"),
])
def test_orientation_letters_lps(vector, letter):
    assert comparison.orientation_letter(vector) == letter


def test_windows_are_clinical_for_hu_and_percentiles_otherwise():
    ct = phantom((3, 8, 8))
    assert [name for name, _ in comparison.windows_for(ct)] == ["soft tissue W400 L40", "lung W1500 L-600"]
    assert comparison.windows_for(ct)[0][1] == (-160.0, 240.0)
    mr = np.linspace(0, 4000, 3 * 8 * 8).reshape(3, 8, 8)
    (name, (lo, hi)), = comparison.windows_for(mr)
    assert "not HU" in name and 0 < lo < hi < 4000


def test_figure_is_written_with_square_reformats(tmp_path, monkeypatch):
    shown = []
    import matplotlib.axes
    real = matplotlib.axes.Axes.imshow

    def spy(self, img, *args, **kwargs):
        shown.append((np.asarray(img).shape, kwargs.get("aspect"), kwargs.get("vmin"), kwargs.get("vmax")))
        return real(self, img, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    lr = phantom((6, 40, 30))
    out = np.repeat(lr, 2, axis=0)[:11].astype(np.float32)
    path = comparison.comparison_figure(tmp_path / "c.png", lr, out, (0.5, 0.5, 4.0), 2.0, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert len(shown) == 8                                   # 2 rows x (2 axial windows + coronal + sagittal)
    reformats = shown[2:4] + shown[6:8]
    for (rows, cols), aspect, _, _ in reformats:             # cropped to a square physical field of view
        assert abs(rows * aspect - cols) <= max(aspect, 1), (rows, cols, aspect)
    assert reformats[0][0] == (4, 30) and reformats[2][0] == (8, 30)    # x is 15 mm: z cropped to ~15 mm
    assert {(lo, hi) for *_, lo, hi in shown} == {(-160.0, 240.0), (-1350.0, 150.0)}


@pytest.mark.parametrize("normal, name", [
    ((0, 0, 1), "axial"), ((1, 0, 0), "sagittal"), ((0, -1, 0), "coronal"), ((0.7, 0, 0.7), "oblique sagittal"),
])
def test_plane_names_follow_the_direction(normal, name):
    assert comparison.plane_name(normal) == name


def test_panels_of_a_sagittal_series_are_named_from_its_direction(tmp_path, monkeypatch):
    """K along x (a sagittal acquisition): the native plane is sagittal, not 'axial'."""
    titles = []
    import matplotlib.axes
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, text, *a, **k: titles.append(text) or real(self, text, *a, **k))
    lr = phantom((5, 12, 10))
    direction = (0, 0, 1, 1, 0, 0, 0, 1, 0)            # i -> y, j -> z, k -> x (row-major columns)
    comparison.comparison_figure(tmp_path / "c.png", lr, np.repeat(lr, 2, axis=0)[:9], (1, 1, 4), 2.0, direction)
    panels = [t.split("\n")[0] for t in titles if t.startswith(("input", "output"))]
    assert panels[0] == "input 4 mm: sagittal, soft tissue W400 L40"
    assert panels[2] == "input 4 mm: axial, soft tissue" and panels[3] == "input 4 mm: coronal, soft tissue"
