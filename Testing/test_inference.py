"""upsample(): output grid and geometry, sliding windows, bad inputs, progress and cancel."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cycleinr import Cancelled, inference, upsample
from cycleinr.geometry import (
    Geometry,
    output_slice_count,
    output_slice_positions,
    resolve_target_spacing,
    slices_at_scale,
    thin_slices_touched,
)
from cycleinr.volume_io import VolumeError

from conftest import make_model, phantom


@pytest.mark.parametrize("n, spacing, target, expected", [
    (10, 5.0, 1.0, 46), (10, 5.0, 1.25, 37), (7, 3.0, 1.0, 19), (64, 5.0, 0.7, 451), (3, 2.5, 1.0, 6)])
def test_output_slice_count(n, spacing, target, expected):
    assert output_slice_count(n, spacing, target) == expected
    pos = output_slice_positions(n, spacing, target)
    assert pos[0] == 0 and pos[-1] <= n - 1 + 1e-12
    assert np.allclose(np.diff(pos) * spacing, target)
    assert (n - 1) - pos[-1] < target / spacing                     # nothing more fits before the end


@pytest.mark.parametrize("n, scale, spanned, touched", [
    (4, 3.0, 10, 10), (4, 2.5, 8, 9),                 # a decimal scale: the last thick slice needs thin slice 8
    (26, 2.2, 56, 56), (31, 4.1, 124, 124)])          # 25 x 2.2 rounds above 55, 30 x 4.1 below 123
def test_thin_slice_counts_at_a_scale(n, scale, spanned, touched):
    assert slices_at_scale(n, scale) == spanned
    assert thin_slices_touched(n, scale) == touched


@pytest.mark.parametrize("spacing, kwargs", [((0.8, 0.8, 5.0), {"target_spacing": 1.0}),
                                             ((0.5, 0.7, 3.0), {"factor": 2.5}),
                                             ((1.0, 1.0, 2.0), {"target_spacing": 0.3})])
def test_upsample_geometry(tiny_model, volume, spacing, kwargs):
    target = resolve_target_spacing(spacing[2], kwargs.get("target_spacing"), kwargs.get("factor"))
    res = upsample(volume, spacing, model=tiny_model, **kwargs)
    assert res.spacing == (spacing[0], spacing[1], pytest.approx(target))
    assert res.array.shape == (output_slice_count(volume.shape[0], spacing[2], target),) + volume.shape[1:]
    assert res.array.dtype == np.float32 and np.isfinite(res.array).all()
    geo = Geometry(spacing, (10.0, -20.0, 30.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    out = res.geometry(geo)
    for k in (0, len(res.positions) - 1):                            # slice k lies at input index positions[k]
        assert np.allclose(out.index_to_physical((2, 3, k)), geo.index_to_physical((2, 3, res.positions[k])))


def test_output_on_input_slices_keeps_their_values_at_start(volume):
    """A zero-initialised (linear) model reproduces input slices where output and input coincide."""
    from cycleinr import CycleINR, preset
    res = upsample(volume, (1, 1, 4.0), factor=4, model=CycleINR(preset("fast")))
    assert np.allclose(res.array[::4], volume, atol=1e-3)


def test_sliding_window_equals_whole_volume():
    model = make_model(seed=5)
    vol = phantom((14, 30, 33)).astype(np.float32)
    whole = upsample(vol, (1, 1, 3.0), factor=3, model=model, window=100, tile=1000)
    default = upsample(vol, (1, 1, 3.0), factor=3, model=model, window=5, overlap=2, tile=12)
    short = upsample(vol, (1, 1, 3.0), factor=3, model=model, window=5, overlap=2, tile=12, margin=1)
    span = np.ptp(whole.array)
    assert model.config.window_margin == 0                             # unmeasured: the full context radius
    assert np.abs(default.array - whole.array).max() < 1e-5 * span     # float precision
    assert np.abs(short.array - whole.array).max() > 1e-3 * span       # context cut at window edges shows
    assert np.abs(whole.array - np.repeat(vol, 3, 0)[:len(whole.positions)]).max() > 1  # not trivial


@pytest.mark.parametrize("n, size, overlap", [(512, 384, 2), (32, 24, 2), (100, 24, 2), (25, 24, 2), (7, 3, 1),
                                              (512, 112, 2), (9, 9, 2), (13, 4, 3)])
def test_spans_are_equal_and_overlap_as_stated(n, size, overlap):
    """Equal spans, each at most ``size``, neighbours sharing at least ``overlap`` (and less than one
    extra slice beyond it), covering every index: no span recomputes a large share of another."""
    result = inference.spans(n, size, overlap)
    lengths = {b - a + 1 for a, b in result}
    assert max(lengths) - min(lengths) <= 1 and max(lengths) <= size
    assert result[0][0] == 0 and result[-1][1] == n - 1
    shared = [prev[1] - nxt[0] + 1 for prev, nxt in zip(result, result[1:], strict=False)]
    assert all(overlap <= s <= overlap + 2 for s in shared)
    assert len(result) == max(1, -(-(n - overlap) // (size - overlap)))   # as few spans as fit


def test_output_stays_in_the_input_range():
    """A model that overshoots (random decoder) is clamped to the input's own minimum and maximum."""
    model = make_model(seed=8)
    torch.nn.init.normal_(model.decoder.layers[-1].bias, mean=5.0)        # +5000 HU everywhere
    vol = phantom((6, 12, 12)).astype(np.float32)
    out = upsample(vol, (1, 1, 2.0), factor=2, model=model).array
    assert out.max() == vol.max() and out.min() >= vol.min()


def test_default_cpu_tiles_stitch_like_one_tile(monkeypatch):
    """The CPU default tiles (DEFAULT_TILE['cpu']) and small decode chunks change speed, not the result."""
    from cycleinr import inference

    model = make_model(seed=6)
    vol = phantom((6, 20, inference.DEFAULT_TILE["cpu"] + 30)).astype(np.float32)   # needs two x tiles
    one = upsample(vol, (1, 1, 2.0), factor=2, model=model, device="cpu", tile=1000,
                   margin=model.config.context_radius)
    monkeypatch.setenv("CYCLEINR_POINTS_PER_CHUNK", "100")                        # one slice per chunk
    monkeypatch.setenv("CYCLEINR_DECODER_POINTS", "777")                          # several decoder calls
    tiled = upsample(vol, (1, 1, 2.0), factor=2, model=model, device="cpu", margin=model.config.context_radius)
    assert inference.spans(vol.shape[2], inference.DEFAULT_TILE["cpu"], 2) != [(0, vol.shape[2] - 1)]
    assert np.abs(tiled.array - one.array).max() < 1e-5 * np.ptp(one.array)


def test_input_is_not_modified(tiny_model, volume):
    before = volume.copy()
    upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model)
    assert np.array_equal(volume, before)


@pytest.mark.parametrize("array, kwargs, message", [
    (np.zeros((5, 6)), {"factor": 2}, "must be 3D"),
    (np.zeros((2, 3, 4, 5)), {"factor": 2}, "must be 3D"),
    (np.zeros((0, 4, 4)), {"factor": 2}, "empty"),
    (np.zeros((1, 4, 4)), {"factor": 2}, "at least 2"),
    (np.full((3, 4, 4), np.nan), {"factor": 2}, "NaN"),
    (np.zeros((3, 4, 4)), {"factor": 1.0}, "factor must be > 1"),
    (np.zeros((3, 4, 4)), {"factor": 0.5}, "factor must be > 1"),
    (np.zeros((3, 4, 4)), {"target_spacing": 2.0}, "not smaller than"),
    (np.zeros((3, 4, 4)), {"target_spacing": 3.0}, "not smaller than"),
    (np.zeros((3, 4, 4)), {}, "exactly one"),
])
def test_bad_inputs_are_rejected(tiny_model, array, kwargs, message):
    with pytest.raises((ValueError, VolumeError), match=message):
        upsample(array, (1, 1, 2.0), model=tiny_model, **kwargs)


def test_bad_spacing_and_device(tiny_model, volume):
    with pytest.raises(ValueError, match="spacing"):
        upsample(volume, (1, 1, 0), factor=2, model=tiny_model)
    with pytest.raises(ValueError, match="device"):
        upsample(volume, (1, 1, 2), factor=2, model=tiny_model, device="tpu")


def test_progress_and_cancel(tiny_model, volume):
    calls = []
    upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model, window=4, overlap=1,
             progress=lambda done, total: calls.append((done, total)))
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1)) and len(calls) > 1
    assert calls[-1][0] == calls[-1][1]
    event = threading.Event()

    def cancel_after_first(done, total):
        event.set()

    with pytest.raises(Cancelled):
        upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model, window=4, overlap=1,
                 progress=cancel_after_first, cancel=event)


def test_match_noise_gives_generated_slices_the_noise_of_acquired_ones():
    """White noise of 20 HU on a smooth volume: linear interpolation (an untrained model) halves the
    variance at mid-slices (sigma ~14 HU); with noise="match" generated slices are back at the acquired
    slices' level (mean within 3 %, each within 10 %: the estimator's own scatter is ~2 % here), acquired
    slices are untouched, and the same seed gives the same output."""
    from cycleinr import CycleINR, preset
    from cycleinr.metrics import noise_sigma_per_slice
    rng = np.random.default_rng(0)
    vol = (np.linspace(-200, 200, 160)[None, None, :] + rng.normal(0, 20, (6, 160, 160))).astype(np.float32)
    model = CycleINR(preset("fast"))
    plain = upsample(vol, (1, 1, 2.0), factor=2, model=model, noise="none")
    matched = upsample(vol, (1, 1, 2.0), factor=2, model=model, noise="match", seed=3)
    generated = np.arange(len(plain.positions)) % 2 == 1
    before, after = noise_sigma_per_slice(plain.array), noise_sigma_per_slice(matched.array)
    assert before[generated].max() < 16                                   # the dip is there without it
    assert abs(after[generated].mean() / after[~generated].mean() - 1) < 0.03, after
    assert np.all(np.abs(after[generated] / 20 - 1) < 0.1), after[generated]
    assert np.array_equal(matched.array[~generated], plain.array[~generated])
    again = upsample(vol, (1, 1, 2.0), factor=2, model=model, seed=3)        # matching is the default
    assert np.array_equal(again.array, matched.array)
    with pytest.raises(ValueError, match="noise must be one of"):
        upsample(vol, (1, 1, 2.0), factor=2, model=model, noise="texture")


def test_match_noise_takes_out_detail_a_slice_has_in_excess():
    """A model sharper than the scan (generated slices noisier than acquired ones; on head CT blurred by 1 mm
    the fast model's were 1.2-1.3x): noise="match" softens them to the input's sigma (within 2 %), softens
    an acquired slice that is noisier than the input was there, and never adds noise to an acquired slice
    that is smoother. The rows' smooth content is kept (no mean shift)."""
    from cycleinr.noise import match_noise, noise_sigmas
    rng = np.random.default_rng(5)
    ramp = np.linspace(-300, 300, 128, dtype=np.float32)[None, None, :]
    output = ramp + rng.normal(0, 1, (5, 128, 128)).astype(np.float32) * np.array([30, 40, 8, 35, 30],
                                                                                   np.float32)[:, None, None]
    positions = np.array([0.0, 0.5, 1.0, 1.5, 2.0])                  # slices 0, 2, 4 acquired
    before = torch.from_numpy(output.copy())
    after = match_noise(torch.from_numpy(output), positions, np.array([10.0, 12.0, 14.0]), seed=1)
    sigmas = noise_sigmas(after).numpy()
    assert sigmas[1] == pytest.approx(11.0, rel=0.02) and sigmas[3] == pytest.approx(13.0, rel=0.02), sigmas
    assert sigmas[0] == pytest.approx(10.0, rel=0.02) and sigmas[4] == pytest.approx(14.0, rel=0.02), sigmas
    assert torch.equal(after[2], before[2])                          # acquired, smoother than the input: kept
    assert float((after - before).mean(dim=(1, 2)).abs().max()) < 0.5


def test_match_noise_counts_the_clipping_at_the_input_range():
    """Half of each slice is air at the input's floor, where half of any noise added is clipped away: the
    match is measured after clipping to ``bounds``, so the clipped result has the target sigma (within 2 %)
    and every value stays within the input's range."""
    from cycleinr.noise import match_noise, noise_sigmas
    rng = np.random.default_rng(6)
    output = np.full((3, 96, 96), -1024.0, np.float32)
    output[:, :, 48:] = 40 + rng.normal(0, 4, (3, 96, 48))
    positions = np.array([0.0, 0.5, 1.0])
    after = match_noise(torch.from_numpy(output), positions, np.array([20.0, 20.0]), seed=2, bounds=(-1024.0, 300.0))
    assert float(noise_sigmas(after[1:2])[0]) == pytest.approx(20.0, rel=0.02)
    assert float(after.min()) >= -1024.0 and float(after.max()) <= 300.0


def test_torch_noise_estimate_equals_skimage_on_real_ct():
    """The batched torch estimator behind noise matching (runs on the model's device) gives the
    Donoho-Johnstone sigma of skimage/PyWavelets: real head CT slices, a slice with a zero-filled region
    (exact zeros ignored), odd and tiny sizes, and a constant slice (0)."""
    from skimage.restoration import estimate_sigma

    from cycleinr.noise import noise_sigmas
    from cycleinr.volume_io import read_volume
    real = read_volume(Path(__file__).parent / "data" / "head_heldout_slab.nrrd")[0].astype(np.float32)
    images = [real[k] for k in range(0, len(real), 4)]
    padded = real[1].copy()
    padded[:, :20] = 0.0
    rng = np.random.default_rng(1)
    images += [padded, real[2, :37, :53], rng.normal(0, 7, (5, 6)).astype(np.float32)]
    for image in images:
        ours = float(noise_sigmas(torch.from_numpy(np.ascontiguousarray(image))[None])[0])
        reference = estimate_sigma(image.astype(np.float64), channel_axis=None)
        assert ours == pytest.approx(reference, rel=1e-4), image.shape
    constant = torch.full((1, 16, 16), -1024.0)
    assert float(noise_sigmas(constant)[0]) == 0.0


def test_output_is_assembled_on_the_device_when_it_fits():
    """The output volume lives on the model's device (blend, noise matching and clamp there, one transfer
    at the end) unless a CUDA output would take over a quarter of the free GPU memory; CPU runs stay on
    the host. A 316 x 512 x 512 float32 output is 331 MB."""
    shape = (316, 512, 512)
    cuda = torch.device("cuda")
    assert inference.output_device(cuda, shape, free_bytes=80 << 30) == cuda
    assert inference.output_device(cuda, shape, free_bytes=1 << 30) == torch.device("cpu")
    assert inference.output_device(torch.device("cpu"), shape) == torch.device("cpu")


def test_cpu_window_holds_more_slices_for_a_smaller_encoder():
    """On a CPU the z window keeps the encoder's activations at what the paper preset's 24 slices take:
    the fast preset's smaller encoder gets more slices, so a 64-slice CT is one window (no z margins
    encoded twice), while the tile stays the cache-friendly default."""
    from cycleinr.config import preset
    cpu = torch.device("cpu")
    paper = inference.window_and_tile(preset("paper"), cpu, (64, 512, 512), 10)
    fast = inference.window_and_tile(preset("fast"), cpu, (64, 512, 512), 6)
    assert paper == (inference.DEFAULT_WINDOW, inference.DEFAULT_TILE["cpu"])
    assert fast[1] == paper[1] and fast[0] >= 64
    assert len(inference.spans(64, fast[0], inference.DEFAULT_OVERLAP)) == 1


@pytest.mark.parametrize("free_gb, whole", [(80, True), (8, False), (1, False)])
def test_cuda_sizes_follow_free_memory(free_gb, whole):
    """CUDA window/tile sizing (a pure function of the free memory, so checkable without a GPU): a
    64 x 512 x 512 CT is one window on an 80 GB card with the paper preset, and smaller cards get
    smaller windows and tiles, never below 2 slices / 64 pixels, always within the estimate."""
    from cycleinr.config import preset
    cfg = preset("paper")
    window, tile = inference.window_and_tile(cfg, torch.device("cuda"), (64, 512, 512), 10, free_bytes=free_gb << 30)
    assert (window == 64 and tile == 512) == whole
    assert 2 <= window <= 64 and 64 <= tile <= 512
    smaller = inference.window_and_tile(cfg, torch.device("cuda"), (64, 512, 512), 10, free_bytes=(free_gb << 30) // 4)
    assert smaller[0] * smaller[1] ** 2 <= window * tile ** 2


def test_bfloat16_precision_on_cpu_is_close_to_float32():
    """precision="bfloat16" really runs the network in bf16 on a CPU (the output differs from float32)
    and stays close to it (the residual and blending are float32); 'auto' is float32 on a CPU; an unknown
    precision is refused."""
    vol = phantom()[8:20, 8:40, 8:40] * 1000.0
    model = make_model(seed=3)
    run = dict(factor=2.5, model=model, device="cpu", noise="none")
    exact = upsample(vol, (1, 1, 2.5), precision="float32", **run).array
    assert np.array_equal(upsample(vol, (1, 1, 2.5), **run).array, exact)
    half = upsample(vol, (1, 1, 2.5), precision="bfloat16", **run).array
    diff = np.abs(half - exact)
    assert 0 < diff.max() and diff.mean() < 0.01 * np.abs(exact - exact.mean()).mean(), (diff.max(), diff.mean())
    with pytest.raises(ValueError, match="precision must be one of"):
        upsample(vol, (1, 1, 2.5), precision="half", **run)


def test_cpu_upsample_takes_the_onednn_path_on_x86(monkeypatch):
    """The speed of CPU inference comes from oneDNN's fused primitives (``model.use_onednn``): upsample must
    reach them for the encoder and the MLPs (a spy counts the calls and runs the real op), and nothing on
    the way (autograd, autocast) may silently switch them off."""
    import platform

    from cycleinr import model as model_module
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("oneDNN's fused primitives are asserted on x86 builds of torch only")
    calls = {"linear": 0, "conv": 0}
    real_linear, real_conv = model_module.onednn_linear, model_module.onednn_conv

    def linear(*args, **kwargs):
        calls["linear"] += 1
        return real_linear(*args, **kwargs)

    def conv(*args, **kwargs):
        calls["conv"] += 1
        return real_conv(*args, **kwargs)

    monkeypatch.setattr(model_module, "onednn_linear", linear)
    monkeypatch.setattr(model_module, "onednn_conv", conv)
    vol = phantom((6, 20, 22)).astype(np.float32)
    fused = upsample(vol, (1, 1, 2.0), factor=2.5, model=make_model(seed=4), device="cpu", noise="none").array
    assert calls["linear"] > 0 and calls["conv"] > 0
    monkeypatch.setattr(model_module, "USE_ONEDNN", False)
    plain = upsample(vol, (1, 1, 2.0), factor=2.5, model=make_model(seed=4), device="cpu", noise="none").array
    assert np.abs(fused - plain).max() < 1e-4 * np.ptp(plain)


def _flipped_run(volume, dims, spacing_z: float, target: float, model, **kwargs) -> np.ndarray:
    """The network on a flipped copy of ``volume``, flipped back: a plain ``upsample`` call per flip."""
    out = upsample(np.ascontiguousarray(np.flip(volume, dims)), (1, 1, spacing_z), target_spacing=target,
                   model=model, device="cpu", noise="none", **kwargs).array
    return np.flip(out, dims)


def _unclamped(volume, runs) -> np.ndarray:
    """Voxels where no run was clamped to the input's range: there the ensemble (which clamps the mean) and
    the mean of separately clamped runs agree."""
    lo, hi = volume.min(), volume.max()
    return np.all([(r > lo) & (r < hi) for r in runs], axis=0)


def test_self_ensemble_is_the_mean_over_flipped_runs(tiny_model, volume):
    """ensemble=8 equals the mean of 8 separate runs on flipped copies (z, x, y and their combinations),
    each flipped back; ensemble=2 the mean of the plain and the z-flipped run. On this grid the output
    positions are symmetric (11 LR slices, x2), so a z-flipped run lands on the same slices."""
    vol = volume[:11]
    runs = {dims: _flipped_run(vol, dims, 2.0, 1.0, tiny_model, window=5, overlap=1)
            for dims in ((), (0,), (2,), (0, 2), (1,), (0, 1), (1, 2), (0, 1, 2))}
    kw = dict(target_spacing=1.0, model=tiny_model, device="cpu", noise="none", window=5, overlap=1)
    eight = upsample(vol, (1, 1, 2.0), ensemble=8, **kw).array
    two = upsample(vol, (1, 1, 2.0), ensemble=2, **kw).array
    scale, inside = np.ptp(eight), _unclamped(vol, runs.values())
    assert inside.mean() > 0.5
    assert np.abs(eight - np.mean(list(runs.values()), axis=0))[inside].max() < 1e-5 * scale
    assert np.abs(two - (runs[()] + runs[(0,)]) / 2)[inside].max() < 1e-5 * scale
    assert np.abs(runs[(0,)] - runs[()]).max() > 1e-3 * scale          # the flips do differ


def test_self_ensemble_z_flip_decodes_the_mirrored_positions(tiny_model, volume):
    """Where the flipped grid does not land on the output's slices (5 LR slices of 3 mm to 2.5 mm: 0 ... 10 mm
    of 12), the z-flipped pass decodes the mirrored positions 12 - z. A plain run on the z-flipped volume at
    0.5 mm holds those positions (0.5 mm divides 2 ... 12 mm), so it is the reference."""
    vol = volume[:5]
    kw = dict(model=tiny_model, device="cpu", noise="none")
    plain = upsample(vol, (1, 1, 3.0), target_spacing=2.5, **kw)
    assert np.allclose(plain.positions * 3.0, [0, 2.5, 5, 7.5, 10])
    fine = upsample(np.ascontiguousarray(vol[::-1]), (1, 1, 3.0), target_spacing=0.5, **kw).array
    mirrored = fine[[round((12 - z) / 0.5) for z in plain.positions * 3.0]]
    two = upsample(vol, (1, 1, 3.0), target_spacing=2.5, ensemble=2, **kw).array
    inside = _unclamped(vol, (plain.array, mirrored))
    assert inside.mean() > 0.5
    assert np.abs(two - (plain.array + mirrored) / 2)[inside].max() < 1e-5 * np.ptp(two)


def test_self_ensemble_keeps_range_progress_and_rejects_bad_sizes(tiny_model, volume):
    calls = []
    out = upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model, window=4, overlap=1, ensemble=4,
                   progress=lambda done, total: calls.append((done, total)))
    assert volume.min() <= out.array.min() and out.array.max() <= volume.max()
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1)) and calls[-1][0] == calls[-1][1]
    single = []
    upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model, window=4, overlap=1,
             progress=lambda done, total: single.append(done))
    assert len(calls) == 4 * len(single)
    for bad in (0, 3, 16, True, 2.5):
        with pytest.raises(ValueError, match="ensemble must be one of"):
            upsample(volume, (1, 1, 2.0), factor=2, model=tiny_model, ensemble=bad)
