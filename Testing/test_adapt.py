"""Per-scan adaptation (``cycleinr.adapt``, ``upsample --adapt``): the copy learns, the original does not change."""

import hashlib
import json
import threading

import numpy as np
import pytest
import torch

from cycleinr import Cancelled, adapt_model, load_model
from cycleinr.adapt import check_budget, prepare, resample_axis
from cycleinr.cli import main
from cycleinr.data import Volume, sample_batch
from cycleinr.geometry import Geometry
from cycleinr.volume_io import write_volume
from cycleinr.weights import models_dir

from conftest import phantom


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_weights_and_the_model_passed_in_are_untouched(chest):
    files = [models_dir() / f"cycleinr_fast.{ext}" for ext in ("safetensors", "json")]
    before = [digest(f) for f in files]
    base = load_model("fast")
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    adapted, report = adapt_model(base, chest[0], chest[1], 60, target_spacing=2.0, device="cpu", max_iterations=3)
    assert [digest(f) for f in files] == before
    assert all(torch.equal(reference[k], v) for k, v in base.state_dict().items())
    assert adapted is not base and report["iterations"] == 3


def test_reproducible_with_a_seed(chest):
    def run(seed):
        net, report = adapt_model(load_model("fast"), chest[0], chest[1], 60, target_spacing=2.0, device="cpu",
                                  seed=seed, max_iterations=2)
        return net.state_dict(), report

    (a, ra), (b, rb), (c, _) = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ra["loss_before"] == rb["loss_before"] and ra["loss_after"] == rb["loss_after"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_improves_the_in_plane_loss_on_real_ct(chest):
    """The in-plane loss falls (only attention and decoder learn, held to the unadapted model's own output
    by the anchor volume, so it falls slowly: 0.6 % in 60 steps); the encoder is the base model's."""
    net, report = adapt_model(load_model("fast"), chest[0], chest[1], 300, target_spacing=2.0, device="cpu",
                              max_iterations=60)
    assert report["loss_after"] < 0.997 * report["loss_before"]
    assert report["kept"] == "adapted" and report["stopped_by"] == "max_iterations"
    assert report["axes"] == ["y", "x"] and report["scale"] == 2.5 and report["patch"] == [10, 32]
    assert report["trained"] == "attention+decoder" and report["anchor"] and report["cycle_weight"] == 0
    base = load_model("fast").state_dict()
    new = net.state_dict()
    assert all(torch.equal(base[k], new[k]) for k in base if k.startswith("encoder."))
    assert not all(torch.equal(base[k], new[k]) for k in base if k.startswith("decoder."))
    assert all(p.requires_grad for p in net.parameters())          # the copy is an ordinary model again


def test_stops_within_the_budget(chest):
    _, report = adapt_model(load_model("fast"), chest[0], chest[1], 8, target_spacing=2.0, device="cpu")
    assert report["stopped_by"] == "budget" and report["iterations"] >= 2
    assert report["seconds"] < 8 + 2          # at most about one step past the estimate


@pytest.mark.parametrize("seconds", [0, -5, float("nan"), float("inf"), 24 * 3600 + 1, "soon"])
def test_bad_budgets_are_refused(seconds, chest):
    with pytest.raises(ValueError, match="budget"):
        check_budget(seconds)
    with pytest.raises(ValueError, match="budget"):
        adapt_model(load_model("fast"), chest[0], chest[1], seconds, target_spacing=2.0, device="cpu")


def test_volumes_it_cannot_adapt_on_are_refused_with_a_reason(tiny_model):
    vol = phantom((12, 12, 12)).astype(np.float32)
    with pytest.raises(ValueError, match="too small to adapt"):     # 12 px of 0.8 mm: 8 samples of 1.25 mm, 9 needed
        prepare(vol, (0.8, 0.8, 5.0), 1.25)
    with pytest.raises(ValueError, match="at least 4"):
        prepare(phantom((3, 80, 80)).astype(np.float32), (0.5, 0.5, 5.0), 1.25)
    with pytest.raises(ValueError, match="coarser than"):
        prepare(phantom((12, 80, 80)).astype(np.float32), (1.5, 1.5, 5.0), 1.25)
    with pytest.raises(ValueError, match="too close"):
        prepare(phantom((12, 80, 80)).astype(np.float32), (0.5, 0.5, 5.0), 4.9)
    with pytest.raises(ValueError, match="degradation"):
        adapt_model(tiny_model, phantom((12, 80, 80)), (0.5, 0.5, 5.0), 5, target_spacing=2.0, degradation="box")


def test_few_slices_and_anisotropic_pixels():
    vol = phantom((5, 90, 60)).astype(np.float32)
    plan = prepare(vol, (1.2, 0.5, 4.0), 2.0)                  # x pixels 1.2 mm, y 0.5 mm, thin 2 mm
    assert plan["axes"] == ["y", "x"] and plan["patch"] == (5, 32)
    assert plan["train"][0].array.shape == (int((90 - 1) * 0.5 / 2.0) + 1, 5, 60)   # y resampled: (y', K, x)
    assert plan["train"][1].array.shape == (int((60 - 1) * 1.2 / 2.0) + 1, 5, 90)   # x resampled: (x', K, y)
    one_axis = prepare(vol, (2.5, 0.5, 4.0), 2.0)              # x pixels coarser than the target: y only
    assert one_axis["axes"] == ["y"]


def test_slab_degradation_and_cancel(chest):
    _, report = adapt_model(load_model("fast"), chest[0], chest[1], 60, target_spacing=2.0, device="cpu",
                            degradation="slab", max_iterations=1)
    assert report["degradation"] == "slab" and report["iterations"] == 1
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        adapt_model(load_model("fast"), chest[0], chest[1], 60, target_spacing=2.0, device="cpu", cancel=stop)


def test_rectangular_patches_keep_their_shape():
    vols = [Volume(phantom((30, 9, 20)).astype(np.float32), "p")]
    batch = sample_batch(np.random.default_rng(0), vols, 3, 4, (9, 16), scale_range=(2.5, 2.5))
    assert batch.lr.shape == (3, 1, 4, 9, 16) and batch.hr.shape[2:] == (9, 16)


def test_cli_adapts_reports_and_saves_the_adapted_weights(tmp_path, chest, capsys):
    src = tmp_path / "scan.nrrd"
    write_volume(src, chest[0].astype(np.int16), Geometry(chest[1]))
    out, report, saved = tmp_path / "out.nrrd", tmp_path / "r.json", tmp_path / "mine.safetensors"
    code = main(["upsample", str(src), str(out), "--thickness", "2", "--model", "fast", "--device", "cpu",
                 "--adapt", "4", "--save-adapted", str(saved), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    assert "adapting to this scan" in capsys.readouterr().err
    entry = json.loads(report.read_text(encoding="utf-8"))["adaptation"]
    assert entry["iterations"] >= 1 and entry["source_scan"] == "scan.nrrd" and entry["budget_seconds"] == 4
    meta = json.loads(saved.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["adaptation"]["source_scan"] == "scan.nrrd" and meta["adaptation"]["scale"] == 2.5
    adapted = load_model(saved)
    assert not all(torch.equal(adapted.state_dict()[k], v) for k, v in load_model("fast").state_dict().items()) \
        or entry["kept"] != "adapted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.safetensors", "out.nrrd", "r.json",
                                                          "scan.nrrd"]


@pytest.mark.parametrize("extra, message", [
    (["--adapt", "0"], "budget"),
    (["--adapt", "1e9"], "budget"),
    (["--save-adapted", "x.safetensors"], "needs --adapt"),
    (["--adapt", "5", "--save-adapted", "BUNDLED"], "bundled models folder"),
])
def test_cli_refuses_bad_adaptation_options_before_any_work(tmp_path, chest, capsys, extra, message):
    src = tmp_path / "scan.nrrd"
    write_volume(src, chest[0].astype(np.int16), Geometry(chest[1]))
    extra = [str(models_dir() / "adapted.safetensors") if e == "BUNDLED" else e for e in extra]
    code = main(["upsample", str(src), str(tmp_path / "out.nrrd"), "--factor", "2.5", "--model", "fast",
                 "--device", "cpu", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "cycleinr: error:" in err and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]
    assert not (models_dir() / "adapted.safetensors").exists()


def test_resampling_keeps_the_physical_scale():
    """A ramp of 'millimetres along y' resampled to 1.3 mm reads 0, 1.3, 2.6, ... mm (box average of a line)."""
    ramp = np.broadcast_to((np.arange(50) * 0.4)[None, :, None], (3, 50, 4)).astype(np.float32)
    out = resample_axis(ramp, 1, 0.4, 1.3)
    assert out.shape == (int(49 * 0.4 / 1.3) + 1, 3, 4)
    np.testing.assert_allclose(out[1:-1, 0, 0], np.arange(1, len(out) - 1) * 1.3, atol=0.02)  # 5 % of a pixel


def test_the_slicer_panel_command_reaches_adaptation(tmp_path, chest):
    """The panel's background command (CycleINRSRLib.process) passes the adaptation time to the CLI."""
    import subprocess
    import sys

    sys.path.insert(0, str(models_dir().parents[1] / "CycleINRSR"))
    from CycleINRSRLib import process as proc

    assert "--adapt" not in proc.buildUpsampleCommand("py", "i", "o", thickness=1, adaptSeconds=0)
    with pytest.raises(ValueError, match="adaptation time"):
        proc.buildUpsampleCommand("py", "i", "o", thickness=1, adaptSeconds=-3)
    src = tmp_path / "scan.nrrd"
    write_volume(src, chest[0].astype(np.int16), Geometry(chest[1]))
    cmd = proc.buildUpsampleCommand(sys.executable, str(src), str(tmp_path / "out.nrrd"), thickness=2.0, model="fast",
                                    device="cpu", reportPath=str(tmp_path / "r.json"), adaptSeconds=3)
    assert cmd[cmd.index("--adapt") + 1] == "3.0"
    done = subprocess.run(cmd, env=proc.buildEnvironment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "adapting to this scan" in done.stderr
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["adaptation"]["budget_seconds"] == 3.0


def test_python_upsample_adapts_a_copy_and_reports_what_it_did(chest):
    """``upsample(adapt=SECONDS)``: the given model object and the bundled file stay as they were, the
    result carries the report and the copy, and the output is the copy's."""
    from cycleinr import upsample

    files = [models_dir() / f"cycleinr_fast.{ext}" for ext in ("safetensors", "json")]
    before = [digest(f) for f in files]
    base = load_model("fast")
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    plain = upsample(chest[0], chest[1], target_spacing=2.0, model=base, device="cpu", noise="none")
    assert plain.adaptation is None and plain.adapted_model is None
    result = upsample(chest[0], chest[1], target_spacing=2.0, model=base, device="cpu", noise="none", adapt=6)
    rep = result.adaptation
    assert rep["iterations"] >= 1 and rep["budget_seconds"] == 6 and rep["seconds"] <= 6 + 2
    assert rep["scale"] == 2.5 and rep["axes"] == ["y", "x"] and rep["seed"] == 0
    assert {"loss_before", "loss_after", "kept"} <= set(rep)
    assert result.adapted_model is not base
    assert all(torch.equal(reference[k], v) for k, v in base.state_dict().items())
    assert [digest(f) for f in files] == before
    assert result.array.shape == plain.array.shape
    again = upsample(chest[0], chest[1], target_spacing=2.0, model=result.adapted_model, device="cpu", noise="none")
    np.testing.assert_array_equal(again.array, result.array)         # the output is the adapted copy's
    if rep["kept"] == "adapted":
        assert not np.array_equal(result.array, plain.array)


def test_python_upsample_adaptation_is_reproducible_with_a_seed(chest, monkeypatch):
    """Same seed, same steps: identical weights and output; the wall clock alone sets the step count, so
    it is capped here (``max_iterations``) to compare like with like."""
    import functools

    import cycleinr.adapt
    from cycleinr import upsample

    monkeypatch.setattr(cycleinr.adapt, "adapt_model", functools.partial(cycleinr.adapt.adapt_model, max_iterations=2))
    runs = [upsample(chest[0], chest[1], factor=2.5, model="fast", device="cpu", adapt=60, seed=s) for s in (3, 3, 4)]
    assert [r.adaptation["seed"] for r in runs] == [3, 3, 4] and runs[0].adaptation["iterations"] == 2
    np.testing.assert_array_equal(runs[0].array, runs[1].array)
    a, b, c = (r.adapted_model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), 1e9, "soon"])
def test_python_upsample_refuses_a_bad_budget_before_loading_the_model(chest, seconds):
    from cycleinr import upsample

    with pytest.raises(ValueError, match="adaptation budget must be"):
        upsample(chest[0], chest[1], factor=2.5, model="no-such-weights.safetensors", device="cpu", adapt=seconds)


def test_python_upsample_adaptation_can_be_cancelled(chest):
    from cycleinr import upsample

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="adaptation"):
        upsample(chest[0], chest[1], factor=2.5, model="fast", device="cpu", adapt=60, cancel=stop)
