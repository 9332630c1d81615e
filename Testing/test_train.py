"""Training loop: losses, checkpoint + exact resume, cancel, and the weights it writes."""

import threading

import numpy as np
import pytest
import torch

from cycleinr import Cancelled, load_model
from cycleinr.data import Volume, sample_batch
from cycleinr.train import TrainSettings, losses, train

from conftest import TINY, phantom

VOLUMES = [Volume(phantom((20, 24, 24), seed=1).astype(np.float32), "phantom", (0, 1))]


def settings(**kw):
    base = dict(preset="fast", model_overrides=TINY, epochs=4, iterations_per_epoch=2, lr_slices=3, patch=12,
                batch_size=2, scale_max=4.0, checkpoint_every=1, learning_rate=1e-3)
    return TrainSettings(**{**base, **kw})


def test_cycle_weight_zero_has_no_cycle_term():
    from cycleinr.config import preset
    from cycleinr.model import CycleINR
    batch = sample_batch(np.random.default_rng(0), VOLUMES, 2, 3, 12, scale_range=(2.0, 4.0))
    model = CycleINR(preset("fast", **TINY))
    assert "cycle" not in losses(model, batch, 0.0, "cpu")
    with_cycle = losses(model, batch, 1.0, "cpu")
    assert with_cycle["total"] > with_cycle["fit"] > 0


def test_l2_loss_is_the_squared_error():
    from cycleinr.config import preset
    from cycleinr.model import CycleINR
    batch = sample_batch(np.random.default_rng(1), VOLUMES, 2, 3, 12, scale_range=(2.0, 4.0))
    model = CycleINR(preset("fast", **TINY))
    with torch.no_grad():
        pred = model(torch.from_numpy(batch.lr), torch.from_numpy(batch.z_hr))
        l2 = losses(model, batch, 0.0, "cpu", "l2")["fit"]
    assert torch.isclose(l2, (pred - torch.from_numpy(batch.hr)).square().mean())
    with pytest.raises(ValueError, match="loss"):
        TrainSettings(loss="huber")


def test_resume_equals_uninterrupted(tmp_path):
    full = train(VOLUMES, settings(), tmp_path / "full.safetensors", device="cpu")
    train(VOLUMES, settings(), tmp_path / "part.safetensors", device="cpu", stop_after_epoch=2)
    first = load_model(tmp_path / "part.safetensors").state_dict()
    resumed = train(VOLUMES, settings(), tmp_path / "part.safetensors", device="cpu",
                    resume=tmp_path / "part.ckpt.safetensors")
    a, b = load_model(full["output"]).state_dict(), load_model(resumed["output"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss_total"] for h in full["history"]] == [h["loss_total"] for h in resumed["history"]]
    assert not all(torch.equal(a[k], first[k]) for k in a)     # resuming did train further


def test_cancel_keeps_last_complete_epoch_and_writes_no_weights(tmp_path):
    stop = threading.Event()
    records = []

    def log(record):
        records.append(record)
        if record["epoch"] == 2:
            stop.set()

    with pytest.raises(Cancelled):
        train(VOLUMES, settings(), tmp_path / "w.safetensors", device="cpu", log=log, cancel=stop)
    assert not (tmp_path / "w.safetensors").exists()
    resumed = train(VOLUMES, settings(), tmp_path / "w.safetensors", device="cpu",
                    resume=tmp_path / "w.ckpt.safetensors")
    full = train(VOLUMES, settings(), tmp_path / "full.safetensors", device="cpu")
    a, b = load_model(full["output"]).state_dict(), load_model(resumed["output"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="scales"):
        TrainSettings(scale_min=1.0)
    with pytest.raises(ValueError, match="lambda"):
        TrainSettings(cycle_weight=-1)
    with pytest.raises(ValueError, match="safetensors"):
        train(VOLUMES, settings(), tmp_path / "w.pt")
