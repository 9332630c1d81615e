"""Weights on disk (safetensors + JSON, no pickle) and the ``cycleinr upsample`` command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cycleinr import CycleINR, load_model, preset, save_model, upsample
from cycleinr.weights import WeightsError, load_tensors

from conftest import make_model, phantom


def test_save_load_round_trip(tmp_path):
    model = make_model(seed=7, neighbours=0)
    path = save_model(tmp_path / "m.safetensors", model, training={"note": "test"})
    loaded = load_model(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    vol = phantom((6, 10, 10))
    a = upsample(vol, (1, 1, 2), factor=2, model=model).array
    assert np.array_equal(a, upsample(vol, (1, 1, 2), factor=2, model=path).array)
    meta = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert meta["training"] == {"note": "test"} and meta["config"]["neighbours"] == 0


def test_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    path = save_model(tmp_path / "m.safetensors", make_model())
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    meta["config"]["code_length"] = 99
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not match"):
        load_model(path)
    for config, problem in ((None, "no configuration"), ({**meta["config"], "features": "abc"}, "features must be"),
                            ({**meta["config"], "features": -3}, "features must be"),
                            ({**meta["config"], "blend_band": None}, "not usable")):
        path.with_suffix(".json").write_text(json.dumps({**meta, "config": config}))   # a hand-edited JSON
        with pytest.raises(WeightsError, match=problem):
            load_model(path)
    path.with_suffix(".json").write_text("[]")
    with pytest.raises(WeightsError, match="not a CycleINR weights file"):
        load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="configuration"):
        load_tensors(path)
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(b"\x80\x04\x95 not a safetensors file")
    pickled.with_suffix(".json").write_text("{}")
    with pytest.raises(WeightsError, match="cannot read"):
        load_tensors(pickled)


def write_nrrd(path, array, spacing, origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cycleinr", *map(str, args)], capture_output=True, text=True)


def test_cli_upsample_geometry_and_type(tmp_path, weights):
    src, dst, report = tmp_path / "in.nrrd", tmp_path / "out.nii.gz", tmp_path / "r.json"
    direction = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)           # K along -x: not axial
    write_nrrd(src, phantom((8, 12, 14)), (0.7, 0.8, 5.0), (12.0, -30.0, 4.0), direction)
    proc = run_cli("upsample", src, dst, "--thickness", 1.25, "--model", weights, "--device", "cpu",
                   "--window", 4, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "progress 100.0%" in proc.stderr
    out, inp = sitk.ReadImage(str(dst)), sitk.ReadImage(str(src))
    assert out.GetSize() == (14, 12, 29) and out.GetPixelID() == inp.GetPixelID()
    assert np.allclose(out.GetSpacing(), (0.7, 0.8, 1.25)) and np.allclose(out.GetOrigin(), inp.GetOrigin())
    assert np.allclose(out.GetDirection(), direction)
    for k in (0, 4, 28):                                   # output slice k lies at input index k / 4
        assert np.allclose(out.TransformContinuousIndexToPhysicalPoint((3, 5, k)),
                           inp.TransformContinuousIndexToPhysicalPoint((3, 5, k / 4)), atol=1e-4)  # NIfTI: float32
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert rep["factor"] == 4 and len(rep["output"]["sigmas"]) == 29 and rep["input"]["snli"] >= 0


@pytest.mark.parametrize("setup, args, message", [
    ("2d", ["--factor", 2], "3D"),
    ("ok", ["--factor", 0.5], "factor must be > 1"),
    ("ok", ["--thickness", 6], "not smaller than"),
    ("none", ["--factor", 2], "no such file"),
    ("ok", ["--factor", 2, "--model", "nothere.safetensors"], "not found"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, weights, setup, args, message):
    src, dst = tmp_path / "in.nrrd", tmp_path / "out.nrrd"
    if setup == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.int16)), str(src))
    elif setup == "ok":
        write_nrrd(src, phantom((4, 6, 6)), (1.0, 1.0, 5.0))
    if "--model" not in args:
        args = [*args, "--model", weights]
    proc = run_cli("upsample", src, dst, *args)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cycleinr: error:") and message in last and "Traceback" not in proc.stderr
    assert not dst.exists()


def test_cli_never_overwrites_a_good_file_on_failure(tmp_path, weights):
    src, dst = tmp_path / "in.nrrd", tmp_path / "out.nrrd"
    write_nrrd(src, phantom((4, 6, 6)), (1.0, 1.0, 5.0))
    dst.write_bytes(b"previous good result")
    proc = run_cli("upsample", src, dst, "--thickness", 9, "--model", weights)
    assert proc.returncode == 2 and dst.read_bytes() == b"previous good result"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_model_for_device_and_auto(monkeypatch):
    """'auto' follows ``AUTO_MODEL`` by device kind ('fast' on both today, the better model on held-out CT),
    for device names and torch devices alike."""
    from cycleinr import weights
    from cycleinr.weights import model_for_device
    assert model_for_device("cpu") == "fast" and model_for_device(torch.device("cpu")) == "fast"
    assert model_for_device("cuda") == "fast"
    monkeypatch.setitem(weights.AUTO_MODEL, "cuda", "default")
    assert model_for_device("cuda") == "default" and model_for_device(torch.device("cuda", 1)) == "default"
    assert model_for_device("cpu") == "fast"
    assert load_model("auto", "cpu").source.endswith("cycleinr_fast.safetensors")


def test_bundled_model_lookup_order(tmp_path, monkeypatch):
    """Package data (a wheel's cycleinr/models) first, then the Slicer install's Resources/Models beside the
    package; $CYCLEINR_MODELS, when set, is the only place looked (an explicit choice is never bypassed)."""
    import cycleinr.weights as weights_mod

    package = tmp_path / "site" / "cycleinr"
    (package / "models").mkdir(parents=True)
    slicer = tmp_path / "site" / "Resources" / "Models"
    slicer.mkdir(parents=True)
    for folder in (package / "models", slicer):
        save_model(folder / "cycleinr_fast.safetensors", make_model())
    monkeypatch.setattr(weights_mod, "__file__", str(package / "weights.py"))
    monkeypatch.delenv("CYCLEINR_MODELS", raising=False)
    assert weights_mod.resolve("fast") == package / "models" / "cycleinr_fast.safetensors"
    assert weights_mod.models_dir() == package / "models"
    (package / "models" / "cycleinr_fast.safetensors").unlink()
    assert weights_mod.resolve("fast") == slicer / "cycleinr_fast.safetensors"
    elsewhere = tmp_path / "env"
    elsewhere.mkdir()
    monkeypatch.setenv("CYCLEINR_MODELS", str(elsewhere))
    with pytest.raises(WeightsError, match=f"not found in {elsewhere};"):
        weights_mod.resolve("fast")
    save_model(elsewhere / "cycleinr_fast.safetensors", make_model())
    assert weights_mod.resolve("fast") == elsewhere / "cycleinr_fast.safetensors"
    assert weights_mod.models_dir() == elsewhere


def test_model_choice_needs_no_torch():
    """The Slicer panel may ask which model a device gets, and where models are, without loading torch."""
    code = ("import sys, cycleinr.weights as w; assert w.model_for_device('cpu') == 'fast'; w.model_dirs(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_noise_match_reaches_upsample(tmp_path):
    """``--noise match`` on the command line (the default) fills the noise dip of generated slices (report
    sigmas), which ``--noise none`` leaves; an untrained model is linear interpolation, so the dip is
    certain. The report says which was applied."""
    rng = np.random.default_rng(1)
    vol = (rng.normal(0, 30, (5, 128, 128))).astype(np.int16)
    src = tmp_path / "in.nrrd"
    write_nrrd(src, vol, (1.0, 1.0, 4.0))
    fresh = save_model(tmp_path / "fresh.safetensors", CycleINR(preset("fast")))
    ratios = {}
    for mode in ("none", "match", "default"):
        report = tmp_path / f"{mode}.json"
        chosen = [] if mode == "default" else ["--noise", mode]
        proc = run_cli("upsample", src, tmp_path / f"{mode}.nrrd", "--factor", "2", "--model", fresh,
                       "--device", "cpu", *chosen, "--report", report, "--quiet")
        assert proc.returncode == 0, proc.stderr
        written = json.loads(report.read_text(encoding="utf-8"))
        assert written["noise"] == ("match" if mode == "default" else mode)
        sigmas = np.array(written["output"]["sigmas"])
        ratios[mode] = sigmas[1::2].mean() / sigmas[0::2].mean()
    assert ratios["none"] < 0.8 and abs(ratios["match"] - 1) < 0.05 and ratios["default"] == ratios["match"], ratios
