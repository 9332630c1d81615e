"""The network: shapes, gradients, and the fast z-only sampler against a plain per-query Eq. 3-5."""

import numpy as np
import pytest
import torch

from cycleinr.config import PRESETS, ModelConfig, preset
from cycleinr.model import CycleINR

from conftest import jump_ratio, make_model


def reference(model: CycleINR, lr: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Eq. 3-5 one query at a time, written from the weights (no model module is called but the encoder):
    trilinear code and intensity with grid_sample (Eq. 3); for each of the two bracketing LR planes as
    anchor, softmax attention over the 27 codes around (anchor, nearest y, nearest x), clamped at the
    borders (Eq. 4), and the decoder's layers applied by hand to (2 * offset from the anchor, code) (Eq. 5);
    the two results blended with the local-ensemble weights, plus linear interpolation of the intensity."""
    cfg, sd = model.config, model.state_dict()
    codes = model.encoder(lr)                                      # (1, C, D, H, W)
    dims = torch.tensor(codes.shape[2:])
    grid = (2 * points / (dims - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)   # grid_sample wants (x, y, z)
    sample = lambda vol: torch.nn.functional.grid_sample(vol, grid, align_corners=True).view(vol.shape[1], -1)  # noqa: E731
    trilinear, linear = sample(codes).T, sample(lr)[0]            # Eq. 3 for codes and intensities
    layers = [(sd[f"decoder.layers.{n}.weight"], sd[f"decoder.layers.{n}.bias"]) for n in range(cfg.decoder_layers)]

    def decoder(x):
        h = x
        for n, (w, b) in enumerate(layers):
            h = torch.cat([h, x]) if n == cfg.skip_layer else h
            h = w @ h + b
            h = torch.relu(h) if n < len(layers) - 1 else h
        return h[0]

    out = []
    for p, code, lin in zip(points, trilinear, linear, strict=True):
        lo = min(int(torch.floor(p[0])), int(dims[0]) - 2)
        t = float(p[0]) - lo
        w_hi = min(max((t - 0.5) / (2 * cfg.blend_band) + 0.5, 0.0), 1.0)
        value = torch.zeros(())
        for anchor, weight in ((lo, 1 - w_hi), (lo + 1, w_hi)):
            centre = torch.tensor([anchor, int(torch.round(p[1])), int(torch.round(p[2]))])
            attended = code
            if cfg.neighbours:
                idx = [torch.minimum((centre + torch.tensor(d) - 1).clamp(min=0), dims - 1) for d in np.ndindex(3, 3, 3)]
                near = torch.stack([codes[0, :, i[0], i[1], i[2]] for i in idx])           # (27, C)
                q = sd["attention.q.weight"] @ code + sd["attention.q.bias"]
                k = near @ sd["attention.k.weight"].T + sd["attention.k.bias"]
                v = near @ sd["attention.v.weight"].T + sd["attention.v.bias"]
                attended = torch.softmax(k @ q / np.sqrt(len(q)), dim=0) @ v                # Eq. 4
            local = 2 * (p - centre)
            value = value + weight * decoder(torch.cat([local, attended]))                  # Eq. 5
        out.append(value + (lin if cfg.residual == "linear" else 0))
    return torch.stack(out)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("band", [0.5, 0.15])
@pytest.mark.parametrize("neighbours", [27, 0])
@pytest.mark.parametrize("scale", [2.0, 2.7, 4.3])
def test_fast_sampler_matches_reference(neighbours, scale, band, onednn, monkeypatch):
    """Both inference paths: oneDNN's fused inner products and aten's matmuls."""
    from cycleinr import model as model_module
    monkeypatch.setattr(model_module, "USE_ONEDNN", onednn)
    model = make_model(seed=int(scale * 10) + neighbours, neighbours=neighbours, blend_band=band)
    torch.manual_seed(1)
    lr = torch.randn(1, 1, 5, 6, 7)
    z = torch.arange(0, 4 * scale + 1e-6) / scale                   # output slices at a decimal scale
    with torch.no_grad():
        fast = model(lr, torch.as_tensor(z, dtype=torch.float32))[0]  # (Q, H, W)
        qz, qy, qx = torch.meshgrid(torch.as_tensor(z, dtype=torch.float32), torch.arange(6.0),
                                    torch.arange(7.0), indexing="ij")
        points = torch.stack([qz, qy, qx], -1).reshape(-1, 3)
        ref = reference(model, lr, points).reshape(fast.shape)
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()


def test_onednn_linear_is_used_on_x86_and_equals_aten(monkeypatch):
    """oneDNN's fused inner product (bias, ReLU, sum) is what makes CPU inference fast; x86 builds of torch
    have it, and it must give aten's results."""
    import platform

    from cycleinr.model import _onednn_works, onednn_linear, use_onednn
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert _onednn_works()
    if not _onednn_works():
        pytest.skip("this torch build has no oneDNN inner product; aten's path is tested above")
    torch.manual_seed(0)
    x, w, b, other = torch.randn(300, 33), torch.randn(64, 33), torch.randn(64), torch.randn(300, 64)
    with torch.no_grad():
        assert use_onednn(x)
        torch.testing.assert_close(onednn_linear(x, w, b), x @ w.T + b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(onednn_linear(x, w, b, relu=True), torch.relu(x @ w.T + b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(onednn_linear(x, w, None, add=other), x @ w.T + other, rtol=1e-5, atol=1e-5)
        wide = torch.randn(64, 40)                        # a column slice of a weight, as the skip layer's
        torch.testing.assert_close(onednn_linear(x, wide[:, :33], b), x @ wide[:, :33].T + b, rtol=1e-5, atol=1e-5)
    from cycleinr import model as model_module
    for layers, skip in ((8, 4), (4, 3), (2, 1)):          # the skip input may enter the output layer too
        decoder = model_module.Decoder(preset("fast", decoder_layers=layers, skip_layer=skip))
        code, local = torch.randn(2, 50, 32), torch.rand(2, 50)
        with torch.no_grad():
            fused = decoder(local, code)
            with monkeypatch.context() as patch:
                patch.setattr(model_module, "USE_ONEDNN", False)
                plain = decoder(local, code)
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for shape in ((1, 1, 6, 40, 120), (2, 1, 9, 20, 17)):   # a thin window, a batch
        encoder = CycleINR(preset("fast")).encoder
        volume = torch.randn(shape)
        with torch.no_grad():
            fused = encoder(volume)
            y = encoder.head(volume)
            for block in encoder.blocks:                   # the modules as built, through aten
                y = y + block.body(y)
            reference = encoder.tail(y)
        assert fused.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    assert not use_onednn(x)                   # autograd: the op has no backward
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_onednn(x)


def test_a_training_batch_equals_its_samples_decoded_alone():
    """Batches (training, autograd, aten's matmuls) and single volumes (inference) take different paths
    through the slot grid; they must agree, at a decimal scale whose anchors hold unequal entry counts."""
    model = make_model(seed=5, neighbours=27, blend_band=0.25).train()
    torch.manual_seed(2)
    lr = torch.randn(2, 1, 6, 7, 8)
    z = torch.arange(0, 5 * 3.3 + 1e-6) / 3.3
    batched = model(lr, z)
    with torch.no_grad():
        alone = torch.cat([model(lr[i:i + 1], z) for i in range(2)])
    torch.testing.assert_close(batched.detach(), alone, rtol=1e-5, atol=1e-5)


def test_reference_is_sensitive_to_attention():
    """Guard for the test above: the attention path changes the result, so equality is meaningful."""
    with_lam, without = make_model(seed=3, neighbours=27), make_model(seed=3, neighbours=0)
    without.load_state_dict({k: v for k, v in with_lam.state_dict().items() if "attention" not in k})
    lr = torch.randn(1, 1, 4, 5, 5)
    z = torch.tensor([0.3, 1.5, 2.9])
    with torch.no_grad():
        assert (with_lam(lr, z) - without(lr, z)).abs().max() > 1e-3


@pytest.mark.parametrize("scale", [2.0, 2.5, 3.3, 5.9])
def test_shapes_for_decimal_scales(tiny_model, scale):
    d = 6
    z = torch.arange(0, (d - 1) * scale + 1e-6) / scale
    out = tiny_model(torch.randn(2, 1, d, 9, 10), z)
    assert out.shape == (2, len(z), 9, 10)
    assert len(z) == int(np.floor((d - 1) * scale + 1e-6)) + 1


def test_zero_initialised_model_is_linear_interpolation():
    model = CycleINR(preset("fast"))
    lr = torch.randn(1, 1, 4, 5, 6)
    z = torch.tensor([0.0, 0.25, 1.5, 3.0])
    expected = torch.stack([lr[0, 0, 0], 0.75 * lr[0, 0, 0] + 0.25 * lr[0, 0, 1],
                            0.5 * lr[0, 0, 1] + 0.5 * lr[0, 0, 2], lr[0, 0, 3]])
    with torch.no_grad():
        assert torch.allclose(model(lr, z)[0], expected, atol=1e-6)


@pytest.mark.parametrize("neighbours", [27, 0])
def test_gradients_reach_every_parameter(neighbours):
    model = make_model(neighbours=neighbours).train()
    lr = torch.randn(1, 1, 4, 6, 6)
    pred = model(lr, torch.linspace(0, 3, 8))
    back = model(pred[:, None], torch.tensor([0.0, 7 / 3, 14 / 3, 7.0]))     # the cycle pass
    (pred.abs().mean() + back.abs().mean()).backward()
    # W_K's bias adds q . b_K to all 27 scores of a query alike, so it cancels in the softmax: its gradient is
    # zero up to rounding. It must still take part (DistributedDataParallel needs every parameter used);
    # every other parameter must learn.
    assert all(p.grad is not None for p in model.parameters())
    missing = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert set(missing) <= {"attention.k.bias"}
    if neighbours:
        assert model.attention.k.bias.grad.abs().max() < 1e-5


def test_paper_preset_has_the_papers_sizes():
    cfg = PRESETS["paper"]
    assert (cfg.encoder_blocks, cfg.convs_per_block, cfg.features, cfg.code_length) == (3, 6, 64, 128)
    assert (cfg.neighbours, cfg.decoder_layers, cfg.decoder_width) == (27, 8, 256)
    model = CycleINR(cfg)
    assert len(model.decoder.layers) == 8
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 3 * 6 + 2                                               # + head and tail
    assert model.decoder.layers[4].in_features == 256 + 3 + 128                  # skip into layer 5's input


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="neighbours"):
        ModelConfig(neighbours=8)
    with pytest.raises(ValueError, match="unknown model settings"):
        ModelConfig.from_dict({"preset": "paper", "colour": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize("neighbours", [27, 0])
def test_output_is_continuous_across_half_slices(neighbours):
    """The anchor plane and its attention block switch at k + 1/2; the local ensemble must hide that."""
    model = make_model(seed=11, neighbours=neighbours)
    lr = torch.randn(1, 1, 5, 6, 7)
    halves = torch.arange(4) + 0.5
    with torch.no_grad():
        below, above = model(lr, halves - 1e-6)[0], model(lr, halves + 1e-6)[0]
    assert (below - above).abs().max() < 1e-4
    assert jump_ratio(model, lr, [0.5, 1.0, 1.5, 2.5, 3.25, 3.5]) < 0.3     # mid-cells, a plane, between


def test_jump_ratio_detects_a_jump():
    """Guard for the test above: with a blend band of 1e-6 (nearest-plane decoding, the old
    discontinuous form) the same sweep sees a jump at k + 1/2."""
    model = make_model(seed=11, blend_band=1e-6)
    lr = torch.randn(1, 1, 5, 6, 7)
    assert jump_ratio(model, lr, [1.5]) > 0.9


def test_bfloat16_autocast_keeps_interpolation_and_residual_in_float32():
    """Under bf16 autocast the network runs in bf16, but t and the linear residual must not: a
    zero-initialised model (pure linear interpolation) gives the float32 interpolation exactly, and a
    trained-like one stays within bf16 rounding of its float32 output."""
    lr = torch.randn(1, 1, 4, 5, 6) * 1.7
    z = torch.tensor([0.0, 0.3, 1.5, 2.71, 3.0])
    linear = CycleINR(preset("fast", **{"encoder_blocks": 1, "convs_per_block": 1}))
    with torch.no_grad():
        exact = linear(lr, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = linear(lr, z)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, atol=1e-6)
    model = make_model(seed=4)
    with torch.no_grad():
        exact = model(lr, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(lr, z)
    assert 0 < (mixed - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("batch", [1, 2])
def test_encoder_on_a_thin_window_equals_plain_convolutions(batch):
    """A single thin CPU window is convolved with the slice axis last (ATen's oneDNN threshold; the
    generic path is 3-6x slower; batches use oneDNN anyway): the codes equal those of the modules applied
    as built, and so do the gradients (up to ReLU kinks that float rounding flips at a few voxels)."""
    from cycleinr import model as model_module
    torch.manual_seed(0)
    net = CycleINR(preset("fast"))
    x = torch.randn(batch, 1, 6, 40, 120, requires_grad=True)
    features = net.config.features
    assert features * 6 * 40 <= model_module.ONEDNN_MIN_LEADING < features * 40 * 120   # thin: reordered

    def plain(volume):
        encoder = net.encoder
        y = encoder.head(volume)
        for block in encoder.blocks:
            y = y + block.body(y)
        return encoder.tail(y)

    ours, reference = net.encoder(x), plain(x)
    assert ours.shape == reference.shape == (batch, net.config.code_length, 6, 40, 120)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (grad_ref,) = torch.autograd.grad(reference.square().sum(), x)
    assert float((grad_ours - grad_ref).norm() / grad_ref.norm()) < 1e-3
