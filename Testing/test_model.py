"""The network: shapes, gradients, and the fast z-only sampler against a plain per-query Eq. 3-5."""

import numpy as np
import pytest
import torch

from cycleinr.config import PRESETS, ModelConfig, preset
from cycleinr.model import CycleINR

from conftest import make_model


def reference(model: CycleINR, lr: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Eq. 3-5 one query at a time, for arbitrary 3D points (z, y, x) in LR index units: trilinear code
    over the 8 surrounding LR voxels, attention over the 27 voxels around the nearest one (clamped at the
    borders), decoder on (local offset, code), plus linear interpolation of the intensity."""
    codes = model.encoder(lr)[0]                                   # (C, D, H, W)
    image = lr[0, 0]
    dims = torch.tensor(codes.shape[1:])
    out = []
    for p in points:
        base = torch.minimum(torch.floor(p).long(), (dims - 2).clamp(min=0))
        frac = p - base
        code = torch.zeros(codes.shape[0])
        linear = torch.zeros(())
        for corner in np.ndindex(2, 2, 2):
            c = torch.tensor(corner)
            idx = torch.minimum(base + c, dims - 1)
            weight = torch.prod(torch.where(c == 1, frac, 1 - frac))   # S_k / S of Eq. 3
            code = code + weight * codes[:, idx[0], idx[1], idx[2]]
            linear = linear + weight * image[idx[0], idx[1], idx[2]]
        centre = torch.minimum(torch.floor(p + 0.5).long(), dims - 1)
        if model.attention is not None:
            neighbours = torch.stack([codes[:, i[0], i[1], i[2]] for i in
                                      (torch.minimum((centre + torch.tensor(d) - 1).clamp(min=0), dims - 1)
                                       for d in np.ndindex(3, 3, 3))])
            q = model.attention.q(code)
            k, v = model.attention.k(neighbours), model.attention.v(neighbours)
            code = torch.softmax(k @ q * model.attention.scale, dim=0) @ v      # Eq. 4
        local = 2 * (p - centre)
        value = model.decoder(torch.cat([local, code]))                      # Eq. 5
        out.append(value + (linear if model.config.residual == "linear" else 0))
    return torch.stack(out)


@pytest.mark.parametrize("neighbours", [27, 0])
@pytest.mark.parametrize("scale", [2.0, 2.7, 4.3])
def test_fast_sampler_matches_reference(neighbours, scale):
    model = make_model(seed=int(scale * 10) + neighbours, neighbours=neighbours)
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
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


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
