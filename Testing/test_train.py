"""Training loop: losses, checkpoint + exact resume, cancel, and the weights it writes."""

import json
import threading

import numpy as np
import pytest
import torch

from cycleinr import Cancelled, load_model
from cycleinr import train as train_module
from cycleinr.config import preset
from cycleinr.data import Volume, sample_batch
from cycleinr.train import TrainSettings, losses, train

from conftest import TINY, make_model, phantom

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


# ------------------------------------------------------------------- cycle loss at decimal scales

class Recorder(torch.nn.Module):
    """Wraps a model: records every call's input and positions and keeps the first pass's output (the
    generated HR block) with its gradient, or detached (then only the second pass gets gradient)."""

    def __init__(self, model, detach_first=False):
        super().__init__()
        self.model, self.detach_first, self.calls, self.pred = model, detach_first, [], None

    def forward(self, lr, z):
        out = self.model(lr, z)
        self.calls.append((lr, z.clone()))
        if len(self.calls) == 1:
            out = out.detach() if self.detach_first else out
            if not self.detach_first:
                out.retain_grad()
            self.pred = out
        return out


RAMP = np.arange(40, dtype=np.float32)[:, None, None] * 10 + np.linspace(-200, 200, 16 * 16, dtype=np.float32
                                                                          ).reshape(1, 16, 16)


def decimal_batch(scale, lr_slices, volume=RAMP, mode="interval", patch=12, seed=0):
    return sample_batch(np.random.default_rng(seed), [Volume(volume, "v")], 2, lr_slices, patch,
                        scale_range=(scale, scale), mode=mode, augment=False)


@pytest.mark.parametrize("scale, lr_slices, kept", [(2.5, 5, 5), (3.3, 4, 3)])
def test_cycle_resamples_the_generated_block_at_the_lr_positions(scale, lr_slices, kept):
    """The second pass takes the first pass's output as its input and queries it at z = j * r (HR-index
    units); an LR slice past the block's last HR slice (9.9 > 9 at r = 3.3) is left out."""
    batch = decimal_batch(scale, lr_slices)
    rec = Recorder(make_model())
    losses(rec, batch, 1.0, "cpu")
    (lr1, z1), (lr2, z2) = rec.calls
    span = batch.hr.shape[1]
    assert np.allclose(z1.numpy(), np.arange(span) / scale)                # HR slice k at LR index k / r
    assert torch.equal(lr2[:, 0], rec.pred) and lr2.shape[2] == span
    assert np.allclose(z2.numpy(), np.arange(kept) * scale) and bool((z2 <= span - 1).all())


def test_cycle_of_exact_interpolation_is_zero_only_at_the_right_positions():
    """A model that is exactly linear interpolation (zero decoder output) reproduces a z-ramp, so the
    cycle of a decimal-scale ramp is zero; queried half a thin slice off, it is not."""
    model = make_model()
    torch.nn.init.zeros_(model.decoder.layers[-1].weight)
    torch.nn.init.zeros_(model.decoder.layers[-1].bias)
    batch = decimal_batch(3.3, 4)
    with torch.no_grad():
        parts = losses(model, batch, 1.0, "cpu")
        assert parts["fit"] < 1e-6 and parts["cycle"] < 1e-6
        batch.z_lr = batch.z_lr + 0.5
        assert losses(model, batch, 1.0, "cpu")["cycle"] > 1e-3


def test_cycle_gradient_reaches_both_passes():
    """The cycle term alone (no fit) sends gradient into the generated block ``pred`` and so into the
    first pass, and into the parameters through the second pass too."""
    batch = sample_batch(np.random.default_rng(2), VOLUMES, 2, 4, 12, scale_range=(3.3, 3.3))

    def grads(detach_first):
        rec = Recorder(make_model(), detach_first)
        losses(rec, batch, 1.0, "cpu")["cycle"].backward()
        return rec, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in rec.model.parameters()]

    full, g_full = grads(False)
    assert full.pred.grad is not None and full.pred.grad.abs().sum() > 0
    _, g_second = grads(True)                                               # second pass only
    assert g_second[0].abs().sum() > 0 and sum(g.abs().sum() for g in g_second) > 0   # encoder head too
    assert sum((a - b).abs().sum() for a, b in zip(g_full, g_second, strict=True)) > 0  # plus the first pass


# ----------------------------------------------------------------------------- loss on the core

def test_margin_default_is_the_context_bounded_by_the_patch():
    assert TrainSettings(patch=32).margin(preset("paper")) == 8            # context 21, a quarter of 32
    assert TrainSettings(patch=32).margin(preset("fast")) == 7             # fast: context radius 7
    assert TrainSettings(patch=32).margin(preset("paper", window_margin=5)) == 5   # measured context
    assert TrainSettings(patch=32, loss_margin=0).margin(preset("paper")) == 0
    for bad in (-2, 16):
        with pytest.raises(ValueError, match="margin"):
            TrainSettings(patch=32, loss_margin=bad)


def perturbed_border(a: np.ndarray, margin: int, seed: int) -> np.ndarray:
    b = a.copy()
    noise = np.random.default_rng(seed).normal(0, 1, a.shape).astype(a.dtype)
    ring = np.ones(a.shape[-2:], bool)
    ring[margin:-margin, margin:-margin] = False
    b[..., ring] += noise[..., ring]
    return b


def test_loss_ignores_the_border():
    """With a margin, changing the targets outside the core changes neither term; without one, it does.
    The cycle is checked with a per-pixel model (exact interpolation), whose core does not see the LR
    border, so that changing the LR border only changes what the cycle compares outside the core."""
    batch = sample_batch(np.random.default_rng(4), VOLUMES, 2, 4, 12, scale_range=(2.7, 2.7))
    model, m = make_model(), 3
    with torch.no_grad():
        before = losses(model, batch, 1.0, "cpu", margin=m)
        batch_b = sample_batch(np.random.default_rng(4), VOLUMES, 2, 4, 12, scale_range=(2.7, 2.7))
        batch_b.hr = perturbed_border(batch.hr, m, 1)
        after = losses(model, batch_b, 1.0, "cpu", margin=m)
        assert torch.equal(before["fit"], after["fit"]) and torch.equal(before["total"], after["total"])
        assert not torch.isclose(losses(model, batch, 1.0, "cpu")["fit"], losses(model, batch_b, 1.0, "cpu")["fit"])

        torch.nn.init.zeros_(model.decoder.layers[-1].weight)
        torch.nn.init.zeros_(model.decoder.layers[-1].bias)
        batch_b.hr, batch_b.lr = batch.hr, perturbed_border(batch.lr, m, 2)
        before, after = losses(model, batch, 1.0, "cpu", margin=m), losses(model, batch_b, 1.0, "cpu", margin=m)
        assert torch.allclose(before["cycle"], after["cycle"]) and torch.allclose(before["fit"], after["fit"])
        assert not torch.isclose(losses(model, batch, 1.0, "cpu")["cycle"],
                                 losses(model, batch_b, 1.0, "cpu")["cycle"])


def test_training_scores_the_core_by_default(tmp_path, monkeypatch):
    seen = []
    real = train_module.losses

    def spy(*args, **kw):
        seen.append(args[5] if len(args) > 5 else kw.get("margin", 0))
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "losses", spy)
    train(VOLUMES, settings(epochs=1, iterations_per_epoch=1), tmp_path / "w.safetensors", device="cpu")
    assert seen == [3]                               # TINY: context 5, patch 12 -> a quarter, 3


def test_settings_saved_before_issue_11_keep_their_meaning():
    """Runs saved without the newer fields reload with the behaviour they had (no loss margin, their
    own degradation), and new settings round-trip."""
    saved = {"preset": "fast", "model_overrides": {}, "scale_min": 2.0, "scale_max": 6.0,   # the settings of
             "degradation": "interval", "cycle_weight": 1.0, "loss": "l2", "epochs": 100000,  # the fast model
             "iterations_per_epoch": 20, "learning_rate": 0.001, "halve_every": 40,           # bundled before
             "lr_slices": 6, "patch": 32, "batch_size": 4, "augment": True, "noise_hu": 10.0,  # issue 11
             "seed": 0, "checkpoint_every": 5, "validate_every": 10, "validation_scales": [2.0, 3.0, 5.0],
             "max_minutes": 29.0}
    old = TrainSettings.from_dict(saved)
    assert old.loss_margin == 0 and old.degradation == saved["degradation"] and old.patch == saved["patch"]
    from dataclasses import asdict
    new = TrainSettings(loss_margin=5)
    assert TrainSettings.from_dict(json.loads(json.dumps(asdict(new)))) == new
    assert TrainSettings() != TrainSettings.from_dict({})                    # the new defaults are not legacy
    with pytest.raises(ValueError, match="unknown"):
        TrainSettings.from_dict({**saved, "warp": 1})
    with pytest.raises(ValueError, match="degradation"):
        TrainSettings(degradation="box")


def test_init_starts_from_given_weights(tmp_path):
    """Fine-tuning: with a zero learning rate the written weights are exactly the initial ones, and the
    start's measured window margin (an inference setting, as the bundled paper model has) is kept, also
    by a resumed run; an architecture that differs from the preset is refused."""
    from cycleinr.weights import save_model
    start = save_model(tmp_path / "start.safetensors", make_model(seed=9, window_margin=2))
    out = tmp_path / "tuned.safetensors"
    train(VOLUMES, settings(epochs=1, learning_rate=0.0), out, device="cpu", init=start)
    tuned, original = load_model(out).state_dict(), load_model(start).state_dict()
    assert all(torch.equal(tuned[k], original[k]) for k in original)
    assert load_model(out).config.window_margin == 2
    part = tmp_path / "part.safetensors"
    train(VOLUMES, settings(), part, device="cpu", init=start, stop_after_epoch=1)
    train(VOLUMES, settings(), part, device="cpu", resume=tmp_path / "part.ckpt.safetensors")
    assert load_model(part).config.window_margin == 2
    other = save_model(tmp_path / "other.safetensors", make_model(seed=9, code_length=8))
    with pytest.raises(ValueError, match="configuration differs"):
        train(VOLUMES, settings(epochs=1), tmp_path / "x.safetensors", device="cpu", init=other)


def test_export_makes_weights_of_a_killed_runs_checkpoint(tmp_path, capsys):
    """A run killed after its last checkpoint has no weights file; ``cycleinr export`` writes one that
    loads and decodes exactly as the checkpointed model, records the epoch, and refuses a weights file
    or the checkpoint itself as output."""
    from cycleinr.cli import main
    from cycleinr.model import CycleINR
    from cycleinr.weights import load_tensors

    run = tmp_path / "run.safetensors"
    train(VOLUMES, settings(), run, device="cpu", stop_after_epoch=2)
    run.unlink()                                                      # as if killed before the end
    run.with_suffix(".json").unlink()
    checkpoint = tmp_path / "run.ckpt.safetensors"
    out = tmp_path / "exported.safetensors"
    assert main(["export", str(checkpoint), str(out)]) == 0
    assert "epoch 2" in capsys.readouterr().out
    tensors, meta = load_tensors(checkpoint)
    reference = CycleINR(preset("fast", **TINY))
    reference.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    exported = load_model(out)
    lr = torch.from_numpy(phantom((5, 10, 10), seed=3).astype(np.float32) / 1000)[None, None]
    z = torch.linspace(0, 4, 9)
    with torch.no_grad():
        assert torch.equal(exported(lr, z), reference.eval()(lr, z))
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["epoch"] == 2 and saved["training"]["settings"] == meta["settings"]
    assert main(["export", str(out), str(tmp_path / "again.safetensors")]) == 2          # weights, not a checkpoint
    assert "not a CycleINR training checkpoint" in capsys.readouterr().err
    assert main(["export", str(checkpoint), str(checkpoint)]) == 2
    assert not (tmp_path / "again.safetensors").exists()


def test_bfloat16_mixed_precision_trains_close_to_float32(tmp_path):
    """precision=bfloat16 runs the network's passes under autocast: the losses move (the matrix products
    did run in bf16) but stay within bf16's rounding of float32's, the gradient points the same way, and
    the optimizer's weights stay float32; the setting is saved with the weights."""
    from cycleinr.inference import autocast_for
    batch = sample_batch(np.random.default_rng(4), VOLUMES, 2, 3, 12, scale_range=(2.0, 4.0))
    model = make_model(seed=4).train()
    grads = {}
    for precision in ("float32", "bfloat16"):
        model.zero_grad()
        with autocast_for(torch.device("cpu"), precision):
            parts = losses(model, batch, 1.0, "cpu", "l2")
        parts["total"].backward()
        grads[precision] = (parts["total"].detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    (loss32, g32), (loss16, g16) = grads["float32"], grads["bfloat16"]
    assert loss16.dtype == torch.float32 and loss16 != loss32
    assert abs(loss16 / loss32 - 1) < 0.01
    assert torch.isfinite(g16).all() and torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
    runs = {p: train(VOLUMES, settings(epochs=1, precision=p), tmp_path / f"{p}.safetensors", device="cpu")
            for p in ("float32", "bfloat16")}
    weights = {p: load_model(r["output"]).state_dict() for p, r in runs.items()}
    assert all(w.dtype == torch.float32 for w in weights["bfloat16"].values())
    assert not all(torch.equal(weights["float32"][k], weights["bfloat16"][k]) for k in weights["float32"])
    saved = json.loads((tmp_path / "bfloat16.json").read_text())
    assert saved["training"]["settings"]["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="float16")


def test_kernel_jitter_softens_about_half_the_patches_and_input_and_target_alike():
    """``blur_max``: white noise of 100 HU blurred by a Gaussian of sigma U(0, 2) voxels in about half the
    patches (the rest keep ~100 HU), the thick input of a patch as smooth as its thin target (shared before
    degradation); 0 turns it off, and out-of-range values are refused."""
    noise = Volume(np.random.default_rng(1).normal(0, 100, (60, 40, 40)).astype(np.float32), "noise")
    draw = dict(batch_size=60, lr_slices=4, patch=16, scale_range=(2.0, 2.0), noise_hu=0.0, min_tissue=0.0)
    batch = sample_batch(np.random.default_rng(0), [noise], blur_max=2.0, **draw)
    hr, lr = batch.hr.std(axis=(1, 2, 3)) * 1000, batch.lr.std(axis=(1, 2, 3, 4)) * 1000
    soft = hr < 60
    assert 0.3 < soft.mean() < 0.7, hr
    assert np.all(hr[~soft] > 85) and np.all(lr[soft] < 60) and np.all(lr[~soft] > 85)
    plain = sample_batch(np.random.default_rng(0), [noise], **draw)
    assert np.all(plain.hr.std(axis=(1, 2, 3)) * 1000 > 85)
    with pytest.raises(ValueError, match="blur_max"):
        TrainSettings(blur_max=-1)


def test_data_in_other_units_trains_at_ct_scale(tmp_path):
    """A 0-1 image (normalised MR): the model's intensity offset and scale map its range onto CT's
    normalised -1..2, so training pairs, augmentation noise and the tissue test see CT-like numbers, and
    the written model upsamples in the data's own units. CT keeps HU / 1000."""
    assert train_module.intensity_normalisation(VOLUMES) == {}
    air_free = [Volume(np.clip(VOLUMES[0].array, -150, None), "CT crop without air")]   # still HU: 100+ units
    assert train_module.intensity_normalisation(air_free) == {}
    mr = [Volume(((phantom((20, 24, 24), seed=1).astype(np.float32) + 1024) / 4096), "mr", (0, 1))]
    units = train_module.intensity_normalisation(mr)
    lo, hi = np.percentile(mr[0].array, [0.5, 99.5])
    normalised = (np.array([lo, hi]) - units["intensity_offset"]) / units["intensity_scale"]
    np.testing.assert_allclose(normalised, [-1, 2], atol=0.1)      # percentiles of a subsample
    batch = sample_batch(np.random.default_rng(0), mr, 4, 3, 12, noise_hu=10.0,
                         offset=units["intensity_offset"], scale_hu=units["intensity_scale"])
    assert -1.3 < batch.hr.min() and batch.hr.max() < 2.3
    assert batch.hr.max() - batch.hr.min() > 1.5                   # with HU / 1000 it would span 0.001
    out = tmp_path / "mr.safetensors"
    train(mr, settings(epochs=1), out, device="cpu")
    model = load_model(out)
    assert model.config.intensity_scale == pytest.approx(units["intensity_scale"])
    scored = train_module.validate(model, [mr[0].array], [2.0], "interval", "cpu")["val_psnr"]
    assert 10 < scored < 60          # scored on the data's own range; on the HU window 0-1 data scores ~100 dB
    from cycleinr import upsample
    result = upsample(mr[0].array[::2], (1, 1, 2), factor=2, model=model, noise="none").array
    assert result.min() >= mr[0].array.min() - 1e-6 and result.max() <= mr[0].array.max() + 1e-6
    np.testing.assert_allclose(result[::2], mr[0].array[::2][: len(result[::2])], atol=0.05)
