"""``cycleinr upsample``: every bad output path or option is one ``cycleinr: error:`` line and exit status 2
*before any work* (the input is not read, the network does not run), and outputs appear all together or
not at all, so a failure never replaces a good file."""

import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr import cli, outputs, upsample_cmd

from conftest import phantom


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.nrrd"
    image = sitk.GetImageFromArray(phantom((4, 12, 12)))
    image.SetSpacing((1.0, 1.0, 5.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to read the input or to run the network fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the command line was checked")
    monkeypatch.setattr(upsample_cmd, "read_volume", forbidden)
    monkeypatch.setattr(upsample_cmd, "upsample", forbidden)


def one_error_line(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cycleinr: error: "), err
    assert "Traceback" not in err[0] and ".cycleinr-probe" not in err[0]
    return err[0]


@pytest.mark.parametrize("name, message", [
    ("o.xyz", "extension '.xyz' is not supported"),
    ("o.v2.5mm", "extension '.5mm' is not supported"),
    ("o", "extension 'none' is not supported"),
    ("o.mhd", "extension '.mhd' is not supported"),     # header + data file: a rename would break it
    ("missing/o.nrrd", "does not exist"),
    ("folder.nrrd", "is a folder"),
])
def test_bad_output_paths_fail_before_work(tmp_path, src, weights, no_work, capsys, name, message):
    (tmp_path / "folder.nrrd").mkdir()
    code = cli.main(["upsample", str(src), str(tmp_path / name), "--factor", "2", "--model", str(weights)])
    assert message in one_error_line(capsys, code)


def test_unwritable_folder_fails_before_work(src, weights, no_work, capsys):
    code = cli.main(["upsample", str(src), "/proc/x.nrrd", "--factor", "2", "--model", str(weights)])
    assert "cannot create files in /proc" in one_error_line(capsys, code)


def test_read_only_folder_is_detected(tmp_path, monkeypatch):
    """Root ignores permission bits, so the refusal is simulated where the probe file is created."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(outputs.OutputError, match="cannot create files in .*Permission denied"):
        outputs.check_output(tmp_path / "o.nrrd", outputs.VOLUME_FORMATS)


@pytest.mark.parametrize("extra, message", [
    (["--report", "{tmp}/r.txt"], "--report"),
    (["--report", "{tmp}/nowhere/r.json"], "does not exist"),
    (["--report", "{tmp}/folder.json"], "is a folder"),
    (["--figure", "{tmp}/c.xyz"], "--figure"),
])
def test_bad_report_or_figure_fails_before_work_and_keeps_good_volume(tmp_path, src, weights, no_work, capsys,
                                                                       extra, message):
    (tmp_path / "folder.json").mkdir()
    good = tmp_path / "out.nrrd"
    good.write_bytes(b"previous good result")
    extra = [e.format(tmp=tmp_path) for e in extra]
    code = cli.main(["upsample", str(src), str(good), "--factor", "2", "--model", str(weights), *extra])
    assert message in one_error_line(capsys, code)
    assert good.read_bytes() == b"previous good result"


def test_output_may_not_be_the_input(src, weights, no_work, capsys, tmp_path):
    code = cli.main(["upsample", str(src), str(src), "--factor", "2", "--model", str(weights)])
    assert "is the input" in one_error_line(capsys, code)
    link = tmp_path / "link.nrrd"                 # the same file through a link: refused too, input untouched
    link.symlink_to(src)
    before = src.read_bytes()
    code = cli.main(["upsample", str(link), str(src), "--factor", "2", "--model", str(weights)])
    assert "is the input" in one_error_line(capsys, code)
    assert src.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--tile", "0"], "--tile: must be >= 8"),
    (["--overlap", "-3"], "--overlap: must be >= 0"),
    (["--window", "1"], "--window: must be >= 2"),
    (["--window", "4", "--overlap", "4"], "must be smaller than --window"),
    (["--tile", "abc"], "not a whole number"),
    (["--thickness", "nan"], "must be a number > 0"),
    (["--factor", "-2"], "must be a number > 0"),
    (["--model", "nothere.safetensors"], "not found"),
    (["--device", "tpu"], "invalid choice"),
])
def test_bad_options_fail_before_work(tmp_path, src, weights, no_work, capsys, args, message):
    size = [] if "--thickness" in args or "--factor" in args else ["--factor", "2"]
    model = [] if "--model" in args else ["--model", str(weights)]
    try:
        code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), *size, *model, *args])
    except SystemExit as exc:                     # argparse's own exit, with our one-line message
        code = exc.code
    assert message in one_error_line(capsys, code)
    assert not (tmp_path / "o.nrrd").exists()


def test_smallest_window_runs_with_the_overlap_it_allows(tmp_path, src, weights, capsys):
    """``--window 2`` alone is allowed (its help says >= 2): the default overlap, not given, is fitted to
    the 2-slice window by inference instead of being refused."""
    out = tmp_path / "o.nrrd"
    assert cli.main(["upsample", str(src), str(out), "--factor", "2", "--model", str(weights), "--quiet",
                     "--window", "2"]) == 0
    assert sitk.ReadImage(str(out)).GetSize()[2] == 7


def test_failure_while_writing_leaves_every_target_untouched(tmp_path, src, weights, monkeypatch, capsys):
    """The figure fails after the volume and report are staged: nothing replaces the old files."""
    import cycleinr.comparison as comparison

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(comparison, "comparison_figure", broken)
    out, report, figure = tmp_path / "out.nrrd", tmp_path / "r.json", tmp_path / "c.png"
    out.write_bytes(b"good volume")
    report.write_text("good report")
    code = cli.main(["upsample", str(src), str(out), "--factor", "2", "--model", str(weights), "--quiet",
                     "--report", str(report), "--figure", str(figure)])
    line = one_error_line(capsys, code)
    assert "c.png: could not be written (disk full)" in line
    assert out.read_bytes() == b"good volume" and report.read_text(encoding="utf-8") == "good report" and not figure.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temporary file left


def test_all_outputs_written_together(tmp_path, src, weights, capsys):
    out, report, figure = tmp_path / "out.nii.gz", tmp_path / "r.json", tmp_path / "c.png"
    code = cli.main(["upsample", str(src), str(out), "--thickness", "2.5", "--model", str(weights), "--quiet",
                     "--report", str(report), "--figure", str(figure)])
    assert code == 0, capsys.readouterr().err
    assert sitk.ReadImage(str(out)).GetSize() == (12, 12, 7)
    assert json.loads(report.read_text(encoding="utf-8"))["output_shape"] == [7, 12, 12]
    assert figure.read_bytes()[:4] == b"\x89PNG"
    mode = os.stat(out).st_mode & 0o777
    assert mode == outputs.default_file_mode() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_auto_model_is_fast_on_cpu_and_said(tmp_path, src, capsys):
    report = tmp_path / "r.json"
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--factor", "2", "--device", "cpu",
                     "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "model fast (auto" in err
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert rep["model"].startswith("fast (auto") and rep["model_file"].endswith("cycleinr_fast.safetensors")
    assert "lower" in rep["snli_note"]


def test_warnings_for_untrained_scale_and_non_ct_input(tmp_path, capsys):
    """x10 is beyond the trained x2-x6; 0..4000 values are not CT in HU: both run, both are said."""
    src = tmp_path / "mr.nrrd"
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 4000, (3, 10, 10)).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 10.0))
    sitk.WriteImage(image, str(src))
    report = tmp_path / "r.json"
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--factor", "10", "--model", "fast",
                     "--device", "cpu", "--quiet", "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("cycleinr: warning:")]
    assert len(warnings) == 2
    assert "x10 is outside the scales the model was trained on (x2-x6)" in warnings[0]
    assert "do not look like CT in Hounsfield units" in warnings[1]
    assert len(json.loads(report.read_text(encoding="utf-8"))["warnings"]) == 2


def test_no_warning_for_ct_in_trained_range(tmp_path, src, capsys):
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--factor", "2.5", "--model", "fast",
                     "--device", "cpu", "--quiet"])
    assert code == 0 and "cycleinr: warning" not in capsys.readouterr().err


def test_k_finer_than_in_plane_is_said(tmp_path, capsys):
    """Thick slices stored along I (5 mm) with K at 0.8 mm: upsampling K runs, with a warning that names the
    axes; a target only the thick axis allows fails with the same hint."""
    src = tmp_path / "sideways.nrrd"
    image = sitk.GetImageFromArray(phantom((12, 12, 4)))
    image.SetSpacing((5.0, 0.8, 0.8))
    sitk.WriteImage(image, str(src))
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--factor", "2", "--model", "fast",
                     "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "cycleinr: warning: the slices along K are 0.8 mm apart, finer than the in-plane" in err
    code = cli.main(["upsample", str(src), str(tmp_path / "o2.nrrd"), "--thickness", "2.5", "--model", "fast"])
    line = one_error_line(capsys, code)
    assert "not smaller than the input's 0.8 mm" in line and "the thick axis seems to be I or J" in line


@pytest.mark.parametrize("values, thickness, message", [
    ((0.0, 1.0), 2.5, "span less than 20 HU: this is not CT in Hounsfield units"),        # normalised MR
    ((-1000.0, 1000.0), 1e-4, "more than this machine's"),                                   # a typo: 0.0001 mm
])
def test_inputs_that_cannot_give_a_result_fail_before_work(tmp_path, capsys, monkeypatch, values, thickness,
                                                            message):
    monkeypatch.setattr(upsample_cmd, "upsample", lambda *a, **k: pytest.fail("work started"))
    src = tmp_path / "in.nrrd"
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.uniform(*values, size=(4, 64, 64)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 5.0))
    sitk.WriteImage(image, str(src))
    if sys.platform.startswith("linux"):
        assert upsample_cmd.physical_memory() > 2**28       # the OS says how much memory there is
    monkeypatch.setattr(upsample_cmd, "physical_memory", lambda: 2**30)   # 1 GiB: 150 000 slices of 64² do not fit
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--thickness", str(thickness),
                     "--model", "fast", "--device", "cpu"])
    assert message in one_error_line(capsys, code)
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                                  "tried to allocate 367002648576 bytes"),
                                     RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_out_of_memory_is_one_line_and_keeps_the_old_output(tmp_path, src, weights, monkeypatch, capsys, failure):
    def exhausted(*args, **kwargs):
        raise failure
    monkeypatch.setattr(upsample_cmd, "upsample", exhausted)
    out = tmp_path / "out.nrrd"
    out.write_bytes(b"good volume")
    code = cli.main(["upsample", str(src), str(out), "--factor", "2", "--model", str(weights), "--quiet"])
    assert "out of memory" in one_error_line(capsys, code) and out.read_bytes() == b"good volume"


def test_cancel_is_not_taken_for_out_of_memory(tmp_path, src, weights, monkeypatch, capsys):
    """Cancelled is a RuntimeError: it still ends as a cancel (exit 130), not as an escaped traceback."""
    from cycleinr.inference import Cancelled

    def cancelled(*args, **kwargs):
        raise Cancelled("upsampling cancelled")
    monkeypatch.setattr(upsample_cmd, "upsample", cancelled)
    code = cli.main(["upsample", str(src), str(tmp_path / "o.nrrd"), "--factor", "2", "--model", str(weights),
                     "--quiet"])
    assert code == 130 and "cancelled" in capsys.readouterr().err and not (tmp_path / "o.nrrd").exists()
