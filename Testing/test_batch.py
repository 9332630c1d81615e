"""``cycleinr batch``: folders of files and DICOM series into one output folder, one model load, skips
what is done, a failing volume does not stop the others, summary.csv, and sharing under torchrun."""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr import batch, cli, upsample_cmd

from conftest import phantom
from test_volume_io import write_dicom_series


def write(path, array, spacing=(1.0, 1.0, 5.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def study(tmp_path):
    """Two volume files, one 2D file (fails), a DICOM series subfolder, and a stray text file."""
    folder = tmp_path / "study"
    folder.mkdir()
    write(folder / "a.nrrd", phantom((4, 10, 10), seed=1))
    write(folder / "b.nii.gz", phantom((5, 8, 12), seed=2))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 6), np.int16)), str(folder / "flat.nrrd"))
    write_dicom_series(folder / "series1", [0, 5, 10, 15])
    (folder / "notes.txt").write_text("not a volume")
    return folder


def read_summary(path):
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_batch_runs_skips_and_continues_after_errors(tmp_path, study, weights, capsys, monkeypatch):
    loads = []
    real = upsample_cmd.load_model
    monkeypatch.setattr(upsample_cmd, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = tmp_path / "out"
    code = cli.main(["batch", str(study), "-o", str(out), "--thickness", "2.5", "--model", str(weights), "--figures"])
    err = capsys.readouterr().err
    assert code == 1 and len(loads) == 1                     # one failure -> status 1; one model load
    rows = read_summary(out / "summary.csv")
    assert [Path(r["input"]).name for r in rows] == ["a.nrrd", "b.nii.gz", "flat.nrrd", "series1"]
    assert [r["status"] for r in rows] == ["done", "done", "error", "done"]
    assert "2D" in rows[2]["message"] and "flat.nrrd: error:" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_2.5mm.nrrd", "a_2.5mm.png", "b_2.5mm.nrrd", "b_2.5mm.png",
                                                     "series1_2.5mm.nrrd", "series1_2.5mm.png", "summary.csv"]
    assert sitk.ReadImage(str(out / "b_2.5mm.nrrd")).GetSize() == (12, 8, 9)
    assert float(rows[0]["snli_input"]) >= 0 and float(rows[0]["seconds"]) >= 0 and rows[0]["slices_output"] == "7"
    assert "a.nrrd: wrote a_2.5mm.nrrd" in err and "3 done, 0 skipped, 1 failed" in err

    before = (out / "a_2.5mm.nrrd").stat().st_mtime_ns
    code = cli.main(["batch", str(study / "a.nrrd"), str(study / "series1"), "-o", str(out), "--thickness", "2.5",
                     "--model", str(weights), "--quiet"])
    assert code == 0
    assert [r["status"] for r in read_summary(out / "summary.csv")] == ["skipped", "skipped"]
    assert (out / "a_2.5mm.nrrd").stat().st_mtime_ns == before


@pytest.mark.parametrize("args, message", [
    (["{study}/nothere.nrrd"], "no such file"),
    (["{empty}"], "holds no volume files"),
    (["{study}", "--factor", "0"], "must be a number > 0"),
    (["{study}", "--model", "nothere.safetensors"], "not found"),
    (["{study}", "-o", "{study}/a.nrrd"], "is a file"),
    (["{study}", "-o", "{tmp}/x/y"], "does not exist"),
    (["{study}/a.nrrd", "{tmp}/a.nii.gz"], "several inputs would be written"),
    (["{study}", "--summary", "{tmp}/s.txt"], "not supported"),
    (["{study}", "--summary", "{tmp}/out/s.txt"], "ending in .csv"),
    (["{study}", "-o", "{study}"], "is an input folder"),              # the next run would take them as inputs
    (["{tmp}/a.nii.gz", "{tmp}/a_2mm.nrrd", "-o", "{tmp}"], "would replace the input {tmp}/a_2mm.nrrd"),
])
def test_batch_command_errors_are_one_line_before_work(tmp_path, study, weights, capsys, monkeypatch, args, message):
    monkeypatch.setattr(batch, "process_one", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "empty").mkdir()
    write(tmp_path / "a.nii.gz", phantom((3, 6, 6)))
    write(tmp_path / "a_2mm.nrrd", phantom((3, 6, 6)))
    message = message.format(tmp=tmp_path)
    args = [a.format(study=study, empty=tmp_path / "empty", tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    if "--factor" not in args:
        args += ["--thickness", "2"]
    if "--model" not in args:
        args += ["--model", str(weights)]
    try:
        code = cli.main(["batch", *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cycleinr: error:") and message in err[0], err
    assert not (tmp_path / "out").exists()                  # not even the output folder was created


def test_shard_splits_round_robin():
    items = list(range(7))
    shares = [batch.shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == items


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        bar = batch.Progress(2, quiet=False, stream=stream)
        bar.update(0, 0.5, "a.nrrd")
        bar.line("[1/2] a.nrrd: wrote a_1mm.nrrd")
        bar.update(1, 1.0, "b.nrrd")
    assert "\r[#######" in tty.getvalue() and "100.0%" in tty.getvalue()
    assert log.getvalue().splitlines() == ["cycleinr: progress 25.0% (volume 1/2)",
                                           "cycleinr: [1/2] a.nrrd: wrote a_1mm.nrrd",
                                           "cycleinr: progress 100.0% (volume 2/2)"]


def test_torchrun_two_cpu_processes_share_the_volumes(tmp_path, study, weights):
    """2 CPU processes (gloo): each volume is done once, by rank i % 2, and rank 0 merges the tables."""
    for name in ("flat.nrrd", "notes.txt"):
        (study / name).unlink()
    write(study / "c.nrrd", phantom((4, 6, 6), seed=3))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "cycleinr", "batch", str(study), "-o", str(out), "--factor", "2",
                           "--model", str(weights), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_summary(out / "summary.csv")
    assert [Path(r["input"]).name for r in rows] == ["a.nrrd", "b.nii.gz", "c.nrrd", "series1"]
    assert all(r["status"] == "done" for r in rows)
    assert "rank 0/2: 2 of 4 volume(s)" in proc.stderr and "rank 1/2: 2 of 4 volume(s)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.nrrd", "b_x2.nrrd", "c_x2.nrrd", "series1_x2.nrrd",
                                                     "summary.csv"]
