"""The evaluate command on a small synthetic CT: CSV/Markdown/figures written, clear errors."""

import argparse
import csv

import numpy as np
import pytest

from cycleinr import evaluate
from cycleinr.geometry import Geometry
from cycleinr.volume_io import write_volume

REQUIRED = ["volume", "scale", "method", "psnr", "ssim", "psnr_new", "ssim_new", "snli", "dice_bone", "nsd_bone",
            "dice_soft", "nsd_soft", "lpips_alex", "lpips_vgg", "lpips_squeeze"]


def phantom(shape=(40, 48, 48), seed=0):
    """Air, a soft-tissue ellipsoid with noise and a bone shell: HU int16."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r = np.sqrt(((z - 20) / 18.0) ** 2 + ((y - 24) / 20.0) ** 2 + ((x - 24) / 19.0) ** 2)
    vol = np.full(shape, -1000.0)
    vol[r < 1.0] = 900.0
    vol[r < 0.85] = 40.0 + 25.0 * np.sin(z[r < 0.85] / 3.0)
    vol += rng.normal(0, 15, shape)
    return vol.astype(np.int16)


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "phantom.nrrd"
    write_volume(path, phantom(), Geometry(spacing=(0.8, 0.8, 1.0)))
    return path


def run_cli(argv):
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *map(str, argv)])
    return args.func(args)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_baselines_write_csv_and_markdown(ct_file, tmp_path, capsys):
    out = tmp_path / "res"
    rc = run_cli([ct_file, "--scales", "2", "5", "--methods", "nearest", "linear", "cubic", "--out", out,
                  "--no-figures", "--no-lpips"])
    assert rc == 0
    rows = read_rows(out / "results.csv")
    assert set(REQUIRED) <= set(rows[0])
    assert [(r["scale"], r["method"]) for r in rows] == [
        (s, m) for s in ("2", "5") for m in ("HR", "nearest", "linear", "cubic")]
    assert {r["volume"] for r in rows} == {"phantom"}
    by = {(r["scale"], r["method"]): r for r in rows}
    for key in [("2", "linear"), ("5", "cubic")]:
        row = by[key]
        assert 15 < float(row["psnr"]) < 80 and 0 < float(row["ssim"]) <= 1
        assert float(row["psnr_new"]) < float(row["psnr"])  # original slices are exact copies
        assert 0 < float(row["dice_bone"]) <= 1 and 0 < float(row["nsd_bone"]) <= 1
        assert row["lpips_alex"] == ""  # skipped, not invented
    # x5 on 40 slices: 8 LR slices -> outputs on HR slices 0..35, of which 28 are new
    assert by[("5", "linear")]["slices"] == "36" and by[("5", "linear")]["new_slices"] == "28"
    assert float(by[("2", "linear")]["psnr"]) > float(by[("5", "linear")]["psnr"])
    assert float(by[("2", "linear")]["psnr"]) > float(by[("2", "nearest")]["psnr"])
    assert by[("2", "HR")]["psnr"] == "" and float(by[("2", "HR")]["snli"]) > 0
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Scale x2" in md and "## Scale x5" in md and "| cubic |" in md and "SNLI" in md
    assert "evaluate [" in capsys.readouterr().err  # progress bar


def test_figures_are_written(ct_file, tmp_path):
    out = tmp_path / "fig"
    assert run_cli([ct_file, "--scales", "3", "--methods", "linear", "--out", out, "--no-lpips"]) == 0
    for kind in ("views", "noise"):
        png = out / "figures" / f"phantom_x3_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_too_thin_volume_and_unreadable_file(ct_file, tmp_path, capsys):
    thin = tmp_path / "thin.nrrd"
    write_volume(thin, phantom((4, 16, 16)), Geometry())
    bad = tmp_path / "broken.nrrd"
    bad.write_text("not a volume")
    out = tmp_path / "res"
    rc = run_cli([thin, bad, ct_file, "--scales", "5", "--methods", "linear", "--out", out, "--no-figures",
                  "--no-lpips"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if "error" in line]
    assert any("thin: 4 slices are too thin for scale x5" in line for line in lines)
    assert any("broken.nrrd" in line and "cannot read" in line for line in lines)
    assert "Traceback" not in err
    rows = read_rows(out / "results.csv")  # the good volume is still evaluated
    assert {r["volume"] for r in rows} == {"phantom"}


@pytest.mark.parametrize("args, message", [
    (["--scales", "0.5"], "every scale must be a number > 1"),
    (["--window", "100", "-100"], "give LO < HI"),
    (["--out", "{file}"], "is a file; give a folder"),
])
def test_option_mistakes_fail_before_work(ct_file, tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("keep me")
    args = [a.format(file=tmp_path / "file.txt") for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "res"]
    assert run_cli([ct_file, "--methods", "linear", "--no-lpips", *out, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evaluate: error:") and message in err[0], err
    assert not (tmp_path / "res").exists() and (tmp_path / "file.txt").read_text() == "keep me"


def test_nothing_readable_creates_no_output_folder(tmp_path, capsys):
    assert run_cli([tmp_path / "missing.nrrd", "--methods", "linear", "--no-lpips", "--out", tmp_path / "res"]) == 1
    assert "nothing could be evaluated" in capsys.readouterr().err and not (tmp_path / "res").exists()


def test_unknown_method_and_missing_model_fail_before_work(ct_file, tmp_path, capsys):
    assert run_cli([ct_file, "--methods", "bicubic", "--out", tmp_path / "a", "--no-lpips"]) == 2
    assert "unknown method 'bicubic'" in capsys.readouterr().err
    rc = run_cli([ct_file, "--methods", "linear", "--extra-model", f"INR={tmp_path / 'none.safetensors'}",
                  "--out", tmp_path / "b", "--no-lpips"])
    assert rc == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "b" / "results.csv").exists()
    with pytest.raises(SystemExit):
        run_cli([ct_file, "--extra-model", "nopath", "--out", tmp_path / "c"])


def test_new_slice_mask():
    assert evaluate.new_slice_mask(7, 3).tolist() == [False, True, True, False, True, True, False]
    assert evaluate.new_slice_mask(6, 2.5).tolist() == [False, True, True, True, True, False]


# ----------------------------------------------------------------------------- bench (smoke only)

def test_bench_smoke_with_baseline_only(tmp_path, capsys):
    import json

    from cycleinr import bench
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--presets", "--size", "24", "--slices", "4", "--factor", "3",
                              "--matmul-size", "256", "--json", str(tmp_path / "b.json")])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "| linear |" in table and "GFLOP/s" in table
    (row,) = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))["rows"]
    assert row["out_voxels"] == 10 * 24 * 24 and row["seconds"] > 0 and row["peak_mb"] >= 0


def test_bench_flop_model_matches_torch_flop_counter(monkeypatch):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cycleinr import model as model_module
    from cycleinr.bench import flops_breakdown
    from cycleinr.config import preset
    from cycleinr.model import CycleINR
    monkeypatch.setattr(model_module, "USE_ONEDNN", False)   # FlopCounterMode counts aten's matmuls
    for neighbours, band, z in ((27, 0.5, torch.linspace(0, 4, 9)), (0, 0.5, torch.linspace(0, 4, 9)),
                                (27, 0.25, torch.arange(0, 4.01, 1 / 3.3)), (27, 0.1, torch.tensor([0.0, 1.45, 2.5]))):
        cfg = preset("fast", neighbours=neighbours, blend_band=band)
        model = CycleINR(cfg).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 1, 5, 6, 7), z)
        counted = flops_breakdown(cfg, 5, len(z), 6 * 7, z=z.numpy())
        assert counter.get_total_flops() == sum(counted.values())


def test_extra_model_runs_through_upsample(tmp_path):
    """A fresh network predicts a zero correction to linear interpolation, so it must score as linear."""
    from cycleinr.config import preset
    from cycleinr.model import CycleINR
    from cycleinr.weights import save_model
    small = tmp_path / "small.nrrd"
    write_volume(small, phantom()[12:28, 12:36, 12:36], Geometry(spacing=(0.8, 0.8, 1.0)))
    weights = save_model(tmp_path / "fresh.safetensors", CycleINR(preset("fast")))
    out = tmp_path / "res"
    rc = run_cli([small, "--scales", "3", "--methods", "linear", "--extra-model", f"INR={weights}",
                  "--device", "cpu", "--out", out, "--no-figures", "--no-lpips", "--noise", "none"])
    assert rc == 0
    by = {r["method"]: r for r in read_rows(out / "results.csv")}
    assert set(by) == {"HR", "linear", "INR"}
    assert float(by["INR"]["psnr"]) == pytest.approx(float(by["linear"]["psnr"]), abs=0.01)
    assert float(by["INR"]["dice_bone"]) == pytest.approx(float(by["linear"]["dice_bone"]), abs=0.01)
