"""Shared fixtures: small randomly initialised models and synthetic volumes (tests are self-contained)."""

import numpy as np
import pytest
import torch

from cycleinr.config import preset
from cycleinr.model import CycleINR

TINY = dict(encoder_blocks=1, convs_per_block=2, features=8, code_length=16, decoder_layers=4,
            decoder_width=32, skip_layer=2)


def make_model(seed: int = 0, **overrides) -> CycleINR:
    """A tiny model whose output is not just linear interpolation (the zero-initialised last layer is
    re-drawn), so that tests comparing two code paths compare real network outputs."""
    torch.manual_seed(seed)
    model = CycleINR(preset("fast", **{**TINY, **overrides}))
    torch.nn.init.normal_(model.decoder.layers[-1].weight, std=0.3)
    torch.nn.init.normal_(model.decoder.layers[-1].bias, std=0.1)
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_model()


@pytest.fixture
def weights(tmp_path):
    """A tiny model saved as weights files (.safetensors + .json), for command-line tests."""
    from cycleinr.weights import save_model
    return save_model(tmp_path / "tiny.safetensors", make_model())


@pytest.fixture(scope="module")
def chest():
    """A 10 x 64 x 64 crop of the bundled 5 mm chest CT (0.84 mm pixels): real in-plane detail."""
    from cycleinr.volume_io import read_volume
    from cycleinr.weights import models_dir
    array, geometry, _ = read_volume(models_dir().parent / "SampleData" / "CycleINRSampleChestCT5mm.nrrd")
    return array[10:20, 120:184, 120:184].astype(np.float32), geometry.spacing


def phantom(shape=(12, 20, 22), seed=0) -> np.ndarray:
    """A CT-like int16 volume in HU: air, a soft-tissue ellipsoid with a bone shell, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2)
    vol = np.full(shape, -1000.0)
    vol[r < 0.9] = 40
    vol[(r >= 0.75) & (r < 0.9)] = 900
    vol += rng.normal(0, 15, shape)
    return vol.astype(np.int16)


@pytest.fixture
def volume():
    return phantom()


def jump_ratio(model: CycleINR, lr: torch.Tensor, centres, half_width: float = 0.05, step: float = 1e-4) -> float:
    """Largest change of the output over one step of ``step`` divided by the largest over 10 steps, along
    fine z sweeps around ``centres``: about 0.1 for a function continuous in z, about 1 where it jumps."""
    ratios = []
    for c in centres:
        z = torch.arange(c - half_width + step / 3, c + half_width, step, dtype=torch.float64).float()
        with torch.no_grad():
            out = model(lr, z)[0]
        ratios.append((out[1:] - out[:-1]).abs().amax() / (out[10:] - out[:-10]).abs().amax())
    return float(max(ratios))
