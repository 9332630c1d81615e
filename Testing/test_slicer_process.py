"""Tier 2: the background-process side of the Slicer module (CycleINRSRLib.process, .upsampling).

The command building and output parsing are pure functions; the runner and the job are exercised with the
REAL ``python -m cycleinr upsample`` command line in a subprocess (tiny randomly initialised weights, tiny
volumes), and the job with real MRML from slicer-core. Nothing here needs Qt.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CycleINRSR"))

from CycleINRSRLib import process as proc  # noqa: E402

# ------------------------------------------------------------------------------------ command line

def test_command_with_thickness_and_defaults():
    """The panel's default model is 'auto' (the core chooses by device), and never --quiet: the panel
    follows the progress lines and the 'cycleinr: model ... on ...' line."""
    cmd = proc.buildUpsampleCommand("py", "in.nrrd", "out.nrrd", thickness=1.25)
    assert cmd == ["py", "-m", "cycleinr", "upsample", "in.nrrd", "out.nrrd", "--thickness", "1.25",
                   "--model", "auto", "--device", "auto", "--noise", "match"]
    for model in ("default", "fast"):
        cmd = proc.buildUpsampleCommand("py", "i", "o", thickness=1, model=model, adaptSeconds=5, reportPath="r")
        assert cmd[cmd.index("--model") + 1] == model and "--quiet" not in cmd


def test_command_with_everything():
    cmd = proc.buildUpsampleCommand("py", "a b/in.nrrd", "out.nrrd", factor=4, model="/w/m.safetensors",
                                    device="CUDA", window=8, overlap=2, tile=128, reportPath="r.json")
    assert cmd[:6] == ["py", "-m", "cycleinr", "upsample", "a b/in.nrrd", "out.nrrd"]
    args = cmd[6:]
    assert args == ["--factor", "4.0", "--model", "/w/m.safetensors", "--device", "cuda", "--window", "8",
                    "--overlap", "2", "--tile", "128", "--report", "r.json", "--noise", "match"]


def test_match_noise_reaches_the_core_command_line():
    """The panel's "Match noise" option (on by default, as in the core) is always stated on the command
    line, --noise match or --noise none, and cycleinr's own parser accepts both."""
    from cycleinr.cli import build_parser
    default = proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1)
    plain = proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1, matchNoise=False)
    assert default[-2:] == ["--noise", "match"] and plain[-2:] == ["--noise", "none"]
    assert build_parser().parse_args(default[3:]).noise == "match"
    assert build_parser().parse_args(plain[3:]).noise == "none"
    assert build_parser().parse_args(default[3:-2]).noise == "match"     # the core's default agrees


def test_command_zero_means_core_default():
    cmd = proc.buildUpsampleCommand("py", "i", "o", thickness=1, window=0, overlap=None, tile=0)
    assert "--window" not in cmd and "--overlap" not in cmd and "--tile" not in cmd


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one"),
    (dict(thickness=1, factor=2), "exactly one"),
    (dict(thickness=0), "> 0"),
    (dict(thickness=-1), "> 0"),
    (dict(factor=2, device="tpu"), "device"),
    (dict(factor=2, model=""), "model"),
    (dict(factor=2, window=-3), "window"),
])
def test_command_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        proc.buildUpsampleCommand("py", "i", "o", **kwargs)


def test_environment_puts_core_first(tmp_path):
    env = proc.buildEnvironment({"PYTHONPATH": os.pathsep.join(["/x", str(tmp_path)]), "HOME": "/h"},
                                corePath=str(tmp_path), modelsDir="/models")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/x"]
    assert env["HOME"] == "/h" and env["PYTHONUNBUFFERED"] == "1" and env["CYCLEINR_MODELS"] == "/models"
    env = proc.buildEnvironment({})
    assert env["PYTHONPATH"] == proc.corePackageParent()
    assert (Path(proc.corePackageParent()) / "cycleinr").is_dir()
    assert "CYCLEINR_MODELS" not in env


def test_python_executable_outside_slicer():
    assert proc.pythonExecutable(inSlicer=False) == sys.executable
    assert proc.pythonExecutable() == sys.executable  # slicer-core has no slicer.app


def test_models_and_resources_lookup(tmp_path, monkeypatch):
    """The panel finds models with the core's own code (cycleinr.weights), so it agrees with the CLI."""
    from cycleinr import weights

    monkeypatch.delenv("CYCLEINR_MODELS", raising=False)
    assert proc.findModelsDir() == str(weights.models_dir())
    for choice in ("default", "fast"):
        try:
            expected = str(weights.resolve(choice))
        except weights.WeightsError:
            expected = None
        assert proc.bundledModelFile(choice) == expected
    assert proc.bundledModelFile("auto") is None and proc.bundledModelFile("nonsense") is None
    # $CYCLEINR_MODELS, when set, is the only folder searched (as in the core)
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("CYCLEINR_MODELS", str(models))
    assert proc.findModelsDir() == str(models)
    assert proc.bundledModelFile("fast") is None
    (models / "cycleinr_fast.safetensors").write_bytes(b"x")
    assert proc.bundledModelFile("fast") == str(models / "cycleinr_fast.safetensors")
    assert proc.bundledModelFile("default") is None
    monkeypatch.setenv("CYCLEINR_MODELS", str(tmp_path / "absent"))
    assert proc.findModelsDir() == str(tmp_path / "absent")  # named explicitly: not silently bypassed
    # an explicit folder
    assert proc.bundledModelFile("fast", str(models)) == str(models / "cycleinr_fast.safetensors")
    assert proc.bundledModelFile("default", str(models)) is None
    assert proc.bundledModelFile("nonsense", str(models)) is None
    module = tmp_path / "qt-scripted-modules"
    (module / "Resources" / "SampleData").mkdir(parents=True)
    (module / "Resources" / "SampleData" / "s.nrrd").write_bytes(b"x")
    assert proc.findResourceFile("SampleData", "s.nrrd", str(module)).endswith("s.nrrd")
    assert proc.findResourceFile("SampleData", "other.nrrd", str(module)) is None


def _copy_core_and_helpers(site: Path) -> None:
    """The core package and CycleINRSRLib, sources only, into ``site`` (a wheel's or Slicer's layout)."""
    import shutil

    for package in ("cycleinr", "CycleINRSRLib"):
        shutil.copytree(ROOT / "CycleINRSR" / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__", "models"))


def test_panel_finds_the_wheels_package_data_models_without_torch(tmp_path):
    """A wheel ships the models as package data (cycleinr/models/); the panel finds them there first,
    as cycleinr.weights.models_dir does, and locating them loads no torch into Slicer's process."""
    site = tmp_path / "site"
    _copy_core_and_helpers(site)
    (site / "cycleinr" / "models").mkdir()
    for name in ("cycleinr_fast.safetensors", "cycleinr_fast.json"):
        (site / "cycleinr" / "models" / name).write_bytes(b"x")
    (site / "Resources" / "Models").mkdir(parents=True)  # an extension's folder too: found after the wheel's
    (site / "Resources" / "Models" / "cycleinr_paper.safetensors").write_bytes(b"x")
    code = ("import json, sys\n"
            "from CycleINRSRLib import process as p\n"
            "import cycleinr\n"
            "print(json.dumps([cycleinr.__file__, p.findModelsDir(), p.bundledModelFile('fast'),\n"
            "                  p.bundledModelFile('default'), p.autoModel('cpu'), p.autoModel('cuda'),\n"
            "                  'torch' in sys.modules]))\n")
    env = {k: v for k, v in os.environ.items() if k != "CYCLEINR_MODELS"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    core, folder, fast, default, cpu, cuda, torch_loaded = json.loads(out.stdout)
    assert Path(core).parent == site / "cycleinr"
    assert folder == str(site / "cycleinr" / "models")
    assert fast == str(site / "cycleinr" / "models" / "cycleinr_fast.safetensors")
    assert default == str(site / "Resources" / "Models" / "cycleinr_paper.safetensors")
    assert (cpu, cuda) == ("fast", "fast")       # weights.AUTO_MODEL: the better model on held-out CT
    assert torch_loaded is False


def test_auto_model_follows_the_device(monkeypatch):
    """The panel's "Automatic" answer is the core's policy for the probed device (``AUTO_MODEL``, 'fast'
    on both today); a policy that differs by device reaches the panel as such."""
    from cycleinr import weights
    from cycleinr.weights import model_for_device

    assert proc.autoModel("cpu") == model_for_device("cpu") == "fast"
    assert proc.autoModel("CUDA") == model_for_device("cuda:1") == "fast"
    assert proc.autoModel("auto") is None  # not known before the device probe has answered
    assert proc.autoModel("auto", {"torch": None}) is None
    monkeypatch.setitem(weights.AUTO_MODEL, "cuda", "default")
    assert proc.autoModel("auto", {"torch": "2.4", "cuda": []}) == "fast"
    assert proc.autoModel("auto", {"torch": "2.4", "cuda": ["NVIDIA H200"]}) == "default"


# ------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("line, value", [
    ("cycleinr: progress 12.5% (window 1/8)", 12.5),
    ("progress 100%", 100.0),
    ("progress 3%  progress 7.25%", 7.25),
    ("no progress here", None),
    ("progress 12.5 %", None),
    ("", None),
])
def test_parse_progress(line, value):
    assert proc.parseProgress(line) == value


def test_parse_error_and_message():
    assert proc.parseErrorLine("cycleinr: error: input has 1 slice") == "input has 1 slice"
    assert proc.parseErrorLine("warning: x") is None
    lines = ["cycleinr: progress 10.0%", "cycleinr: error: target 6 mm is not smaller than 5 mm", ""]
    assert proc.errorMessage(lines, 2) == "target 6 mm is not smaller than 5 mm"
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: CUDA out of memory"]
    assert proc.errorMessage(["cycleinr: progress 50.0%"] + traceback, 1).endswith("RuntimeError: CUDA out of memory")
    assert "SIGKILL" in proc.errorMessage([], -signal.SIGKILL)
    assert "exit code 1" in proc.errorMessage(["cycleinr: progress 1%"], 1)


@pytest.mark.parametrize("line, chosen", [
    ("cycleinr: model fast (auto: small model) on cpu", ("fast (auto: small model)", "cpu")),
    ("cycleinr: model default (auto: paper-size model) on cuda:0",
     ("default (auto: paper-size model)", "cuda:0")),
    ("cycleinr: model /data/runs on disk/w.safetensors on cuda", ("/data/runs on disk/w.safetensors", "cuda")),
    ("cycleinr: progress 10.0% (window 1/8)", None),
    ("cycleinr: warning: intensities 0..4000 do not look like CT", None),
    ("", None),
])
def test_parse_model_line(line, chosen):
    assert proc.parseModelLine(line) == chosen


def test_output_parser_handles_chunks_and_carriage_returns():
    seen = []
    parser = proc.OutputParser(onProgress=seen.append)
    for chunk in ["cycleinr: prog", "ress 10.0%\rcycleinr: progress 2", "0.0%\r\n", "cycleinr: err",
                  "or: bad thing\nlast line without newline"]:
        parser.feed(chunk)
    assert seen == [10.0, 20.0]
    assert parser.model is None
    assert parser.error == "bad thing"
    assert list(parser.lines)[-1] == "cycleinr: error: bad thing"
    parser.close()
    assert list(parser.lines)[-1] == "last line without newline"
    parser = proc.OutputParser()
    for chunk in ["cycleinr: model fast (auto: sm", "all model) on cpu\r\n", "cycleinr: progress 5.0%\n"]:
        parser.feed(chunk)
    assert (parser.model, parser.device) == ("fast (auto: small model)", "cpu")


def test_device_probe_runs_here():
    out = subprocess.run(proc.deviceProbeCommand(sys.executable), capture_output=True, text=True, timeout=120)
    info = proc.parseDeviceProbe(out.stdout.splitlines())
    assert info is not None and "torch" in info
    text = proc.describeDevices(info)
    assert ("CUDA" in text) or ("CPU" in text) or ("not installed" in text)
    assert proc.describeDevices(None) == "Could not detect devices."
    assert "not installed" in proc.describeDevices({"torch": None})
    assert "GPU" in proc.describeDevices({"torch": "2.1", "cuda": ["NVIDIA H100"]})


def test_runner_on_plain_python(tmp_path):
    """The runner itself: progress parsed while running, exit code, error line, without the core."""
    script = ("import sys, time\n"
              "for p in (25, 50, 75):\n"
              "    print(f'cycleinr: progress {p}.0%', file=sys.stderr, flush=True); time.sleep(0.05)\n"
              "print('cycleinr: error: something the user can fix', file=sys.stderr)\n"
              "sys.exit(2)\n")
    seen = []
    runner = proc.UpsampleProcess([sys.executable, "-c", script], onProgress=seen.append)
    runner.start()
    assert runner.wait(timeout=60) == 2
    assert seen == [25.0, 50.0, 75.0]
    assert not runner.succeeded
    assert runner.errorMessage() == "something the user can fix"


def test_runner_cancel_kills_children(tmp_path):
    marker = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(marker)!r}, 'w').write(str(c.pid))\n"
              "print('cycleinr: progress 1.0%', file=sys.stderr, flush=True)\n"
              "time.sleep(60)\n")
    runner = proc.UpsampleProcess([sys.executable, "-c", script])
    runner.start()
    _wait_for(lambda: runner.poll() is None and runner.progress is not None, 30)
    runner.cancel()
    code = runner.wait(timeout=30)
    assert code != 0 and runner.cancelled and runner.errorMessage() == "cancelled"
    if os.name != "nt":
        child = int(marker.read_text(encoding="utf-8"))
        _wait_for(lambda: not _alive(child), 10)


TREE_SCRIPT = """
import subprocess, sys, time
# a child that starts a grandchild, as PythonSlicer starts python-real which may start workers
code = "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
code += "open(sys.argv[1], 'w').write(str(g.pid)); time.sleep(120)"
c = subprocess.Popen([sys.executable, '-c', code, sys.argv[2]])
open(sys.argv[1], 'w').write(str(c.pid))
print('cycleinr: progress 1.0%', flush=True)
time.sleep(120)
"""


def _pids_from(*files, timeout=30):
    _wait_for(lambda: all(f.is_file() and f.read_text(encoding="utf-8").strip() for f in files), timeout)
    return [int(f.read_text(encoding="utf-8")) for f in files]


@pytest.mark.skipif(os.name == "nt", reason="checks PIDs through /proc")
def test_cancel_kills_child_and_grandchild_quickly(tmp_path):
    """No process of the tree is left behind, and cancel does not block (the GUI) for long."""
    files = (tmp_path / "child.pid", tmp_path / "grandchild.pid")
    runner = proc.UpsampleProcess([sys.executable, "-c", TREE_SCRIPT, *map(str, files)])
    runner.start()
    pids = [runner.pid] + _pids_from(*files)
    _wait_for(lambda: runner.poll() is None and runner.progress is not None, 30)
    assert all(_alive(pid) for pid in pids)
    started = time.monotonic()
    runner.cancel()
    assert time.monotonic() - started < 3.0
    assert not runner.running and runner.poll() is not None and runner.cancelled
    _wait_for(lambda: not any(_alive(pid) for pid in pids), 10)


@pytest.mark.skipif(os.name == "nt", reason="checks PIDs through /proc")
def test_cancel_kills_grandchild_left_after_the_process_ended(tmp_path):
    """The started process ended but a grandchild still runs and holds the output pipe (what python-real
    does on Windows when only the launcher is killed): cancel still kills it, without blocking."""
    marker = tmp_path / "orphan.pid"
    script = ("import subprocess, sys\n"
              "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(marker)!r}, 'w').write(str(g.pid))\n")
    runner = proc.UpsampleProcess([sys.executable, "-c", script])
    runner.start()
    (orphan,) = _pids_from(marker)
    _wait_for(lambda: runner._process.poll() is not None, 30)  # the started process itself has ended
    assert _alive(orphan)
    started = time.monotonic()
    runner.cancel()
    assert time.monotonic() - started < 3.0
    assert not runner.running
    _wait_for(lambda: not _alive(orphan), 10)


def test_cancel_timeout_does_not_leave_the_job_running(scene, tiny_weights, monkeypatch):
    """If the process does not confirm its end in time (a kill that does not reach it), cancel still
    returns within the timeout, the job is CANCELLED, nothing is added and the folder is removed."""
    from CycleINRSRLib import upsampling

    node = add_volume(scene, shape=(40, 48, 48))
    n_nodes = scene.GetNumberOfNodes()
    job = upsampling.UpsampleJob(node, upsampling.UpsampleSettings(0.25, model=tiny_weights, device="cpu",
                                                                   window=2, overlap=1, tile=16))
    job.start()
    folder, process = job.temporaryFolder, job.process._process
    try:
        monkeypatch.setattr(proc, "killProcessTree", lambda process: None)  # the kill does not take effect
        started = time.monotonic()
        job.cancel(timeout=0.5)
        assert time.monotonic() - started < 3.0
        assert job.state == job.CANCELLED and not job.running and not job.process.running
        assert job.outputNode is None and scene.GetNumberOfNodes() == n_nodes
        assert process.poll() is None  # really still running: the timeout path was taken
    finally:
        monkeypatch.undo()
        proc.killProcessTree(process)
        process.wait(timeout=30)
    assert not os.path.exists(folder)
    job.cancel()  # a second cancel is harmless
    assert job.state == job.CANCELLED


def test_every_output_line_is_logged(caplog):
    """A failure's whole traceback reaches the log (Slicer's log in Slicer), not only the lines shown."""
    script = ("import sys\n"
              "for i in range(600):\n"
              "    print(f'line {i}', flush=i % 50 == 0)\n"
              "raise RuntimeError('the real reason')\n")
    runner = proc.UpsampleProcess([sys.executable, "-c", script])
    with caplog.at_level("INFO", logger="CycleINR"):
        runner.start()
        assert runner.wait(timeout=60) == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "CycleINR"]
    assert [f"CycleINR: line {i}" for i in range(600)] == logged[:600]
    assert logged[600] == "CycleINR: Traceback (most recent call last):"
    assert logged[-1] == "CycleINR: RuntimeError: the real reason"
    assert len(runner.parser.lines) == 500  # what the panel keeps is bounded; the log has everything
    assert runner.errorMessage().endswith("RuntimeError: the real reason")


def test_utf8_characters_split_between_reads():
    text = "naïve → 3 µm ✓ 😀\nzweite Zeile: Größe\n"
    data = text.encode("utf-8")
    parser = proc.OutputParser()
    for i in range(len(data)):
        parser.feedBytes(data[i:i + 1])  # every multibyte character arrives in pieces
    parser.close()
    assert list(parser.lines) == ["naïve → 3 µm ✓ 😀", "zweite Zeile: Größe"]
    parser = proc.OutputParser()
    parser.feedBytes("end ✓".encode()[:-1])
    parser.close()
    assert list(parser.lines) == ["end \ufffd"]  # a truncated last character is replaced, not raised


def test_utf8_split_by_a_real_process():
    script = ("import sys, time\n"
              "data = 'Größe µm ✓\\n'.encode('utf-8')\n"
              "for i in range(len(data)):\n"
              "    sys.stdout.buffer.write(data[i:i + 1]); sys.stdout.buffer.flush(); time.sleep(0.01)\n")
    runner = proc.UpsampleProcess([sys.executable, "-c", script])
    runner.start()
    while runner.poll() is None:  # poll often: reads arrive byte by byte
        time.sleep(0.002)
    assert list(runner.parser.lines) == ["Größe µm ✓"]


def test_synchronous_wait_pumps_events(scene, tiny_weights):
    """wait() calls the event pump between polls (in Slicer: slicer.app.processEvents)."""
    from CycleINRSRLib import upsampling

    assert proc.processEvents() is None  # outside the Slicer application there is nothing to pump
    calls = []
    runner = proc.UpsampleProcess([sys.executable, "-c", "import time; time.sleep(0.5)"])
    runner.start()
    assert runner.wait(timeout=60, pumpEvents=lambda: calls.append(time.monotonic())) == 0
    assert len(calls) >= 3
    calls.clear()
    job = upsampling.UpsampleJob(add_volume(scene), upsampling.UpsampleSettings(2.0, model=tiny_weights,
                                                                                device="cpu"))
    job.start()
    assert job.wait(timeout=300, pumpEvents=lambda: calls.append(1)) == job.SUCCEEDED, job.errorMessage
    assert len(calls) >= 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by init) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _wait_for(condition, timeout):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --------------------------------------------------------------------------- real command line

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Randomly initialised tiny CycleINR weights saved in the real format (bundled ones may not exist)."""
    import torch

    from cycleinr.config import preset
    from cycleinr.model import CycleINR
    from cycleinr.weights import save_model

    torch.manual_seed(0)
    model = CycleINR(preset("fast", encoder_blocks=1, convs_per_block=2, features=8, code_length=16,
                            decoder_layers=4, decoder_width=32, skip_layer=2))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_model(path, model)
    return str(path)


def write_nrrd(path, shape=(5, 12, 14), spacing=(0.8, 0.8, 4.0), direction=None, seed=0):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    array = (rng.normal(40, 20, size=shape)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return array


def test_real_cli_progress_report_and_geometry(tmp_path, tiny_weights):
    import SimpleITK as sitk

    direction = (1, 0, 0, 0, 0, -1, 0, 1, 0)  # K along -y (LPS): a coronal acquisition
    array = write_nrrd(tmp_path / "in.nrrd", direction=direction)
    cmd = proc.buildUpsampleCommand(sys.executable, str(tmp_path / "in.nrrd"), str(tmp_path / "out.nrrd"),
                                    thickness=1.5, model=tiny_weights, device="cpu", window=2, overlap=1,
                                    reportPath=str(tmp_path / "report.json"))
    seen = []
    runner = proc.UpsampleProcess(cmd, env=proc.buildEnvironment(), onProgress=seen.append)
    runner.start()
    code = runner.wait(timeout=300)
    assert code == 0, runner.errorMessage()
    assert runner.succeeded
    assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(100.0)
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert out.GetSize()[2] == int(np.floor(4 * 4.0 / 1.5 + 1e-6)) + 1
    assert out.GetSpacing() == pytest.approx((0.8, 0.8, 1.5))
    assert out.GetOrigin() == pytest.approx((10.0, -20.0, 30.0))
    assert out.GetDirection() == pytest.approx(direction)
    assert out.GetPixelID() == sitk.sitkInt16
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert len(report["input"]["sigmas"]) == array.shape[0]
    assert len(report["output"]["sigmas"]) == out.GetSize()[2]
    assert np.isfinite(report["input"]["snli"]) and np.isfinite(report["output"]["snli"])


def test_real_cli_bad_input_shows_reason(tmp_path, tiny_weights):
    write_nrrd(tmp_path / "in.nrrd")
    cmd = proc.buildUpsampleCommand(sys.executable, str(tmp_path / "in.nrrd"), str(tmp_path / "out.nrrd"),
                                    thickness=6.0, model=tiny_weights, device="cpu")
    runner = proc.UpsampleProcess(cmd, env=proc.buildEnvironment())
    runner.start()
    assert runner.wait(timeout=300) == proc.EXIT_BAD_INPUT
    message = runner.errorMessage()
    assert "6" in message and "smaller" in message and "cycleinr: error" not in message
    assert not (tmp_path / "out.nrrd").exists()


def test_real_cli_cancel_leaves_no_output(tmp_path, tiny_weights):
    write_nrrd(tmp_path / "in.nrrd", shape=(40, 48, 48))
    cmd = proc.buildUpsampleCommand(sys.executable, str(tmp_path / "in.nrrd"), str(tmp_path / "out.nrrd"),
                                    thickness=0.25, model=tiny_weights, device="cpu", window=2, overlap=1,
                                    tile=16)
    runner = proc.UpsampleProcess(cmd, env=proc.buildEnvironment())
    runner.start()
    _wait_for(lambda: runner.poll() is not None or runner.progress is not None, 300)
    assert runner.returnCode is None, "finished before it could be cancelled; make the test volume larger"
    runner.cancel()
    runner.wait(timeout=30)
    assert runner.cancelled and not runner.succeeded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]  # no output, no partial file


# ------------------------------------------------------------------ job: MRML + real command line

@pytest.fixture
def scene():
    import slicer  # PyPI slicer-core; run_tests.sh installs it

    return slicer.vtkMRMLScene()


def add_volume(scene, shape=(5, 12, 14), spacing=(0.8, 0.9, 4.0), name="thick"):
    import slicer

    rng = np.random.default_rng(3)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, rng.normal(0, 30, size=shape).astype(np.int16))
    node.SetSpacing(*spacing)
    node.SetOrigin(5.0, 6.0, -7.0)
    node.SetIJKToRASDirections(0, 0, 1, 1, 0, 0, 0, -1, 0)  # sagittal, K pointing posterior
    return node


def test_job_success_creates_tagged_node(scene, tiny_weights):
    from CycleINRSRLib import upsampling, volumes

    node = add_volume(scene)
    finished = []
    job = upsampling.UpsampleJob(node, upsampling.UpsampleSettings(2.0, model=tiny_weights, device="cpu"),
                                 onFinished=finished.append)
    job.start()
    folder = job.temporaryFolder
    assert job.wait(timeout=300) == job.SUCCEEDED, job.errorMessage
    assert finished == [job] and not os.path.exists(folder)
    out = job.outputNode
    assert out.GetScene() is scene and out.GetName() == "thick_2mm"
    assert out.GetImageData().GetDimensions() == (14, 12, 9)
    assert out.GetSpacing() == pytest.approx((0.8, 0.9, 2.0))
    for k in range(9):
        np.testing.assert_allclose(volumes.sliceCenterRAS(out, k), volumes.sliceCenterRAS(node, k / 2), atol=1e-6)
    assert upsampling.sourceOf(out) is node
    assert upsampling.reportOf(out)["output"]["sigmas"] == job.report["output"]["sigmas"]
    # the model and device the CLI reported ('cycleinr: model ... on ...'), kept on the node
    assert (job.modelUsed, job.deviceUsed) == (tiny_weights, "cpu")
    assert job.describeModelUsed() == f"model {tiny_weights} on cpu"
    assert out.GetAttribute("CycleINR.Model") == tiny_weights == job.report["model"]
    assert np.isfinite(job.snli("input")) and np.isfinite(job.snli("output"))
    assert job.warnings() == []                     # x2: inside the model's training scales


def test_job_warnings_reach_the_panel(scene, tiny_weights):
    """What the core warns about comes back with the result (the panel shows it), not only in the log."""
    from CycleINRSRLib import upsampling

    job = upsampling.UpsampleJob(add_volume(scene, shape=(3, 12, 14)),
                                 upsampling.UpsampleSettings(0.5, model=tiny_weights, device="cpu"))
    job.start()
    assert job.wait(timeout=300) == job.SUCCEEDED, job.errorMessage
    assert [w for w in job.warnings() if "x8 is outside the scales the model was trained on" in w]
    job.report = {"warnings": [], "adaptation": {"kept": "original (adaptation did not lower the loss)"}}
    assert job.warnings() == ["adaptation: used the original (adaptation did not lower the loss) weights"]


def test_job_with_the_panels_default_model_choice(scene):
    """The panel's default, 'auto', runs the bundled model the core picks for the device (on a CPU:
    'fast'); the job and the result node say which."""
    from CycleINRSRLib import upsampling

    if proc.bundledModelFile("fast") is None:
        pytest.skip("the bundled fast model is not in this checkout")
    job = upsampling.UpsampleJob(add_volume(scene), upsampling.UpsampleSettings(2.0, device="cpu"))
    job.start()
    assert job.command[job.command.index("--model") + 1] == "auto"
    assert job.wait(timeout=300) == job.SUCCEEDED, job.errorMessage
    assert (job.modelUsed, job.deviceUsed) == ("fast (auto: small model)", "cpu")
    assert job.outputNode.GetAttribute("CycleINR.Model") == job.modelUsed == job.report["model"]
    assert job.report["model_file"] == proc.bundledModelFile("fast")


def test_job_cancel_leaves_scene_unchanged(scene, tiny_weights):
    from CycleINRSRLib import upsampling

    node = add_volume(scene, shape=(40, 48, 48))
    n_nodes, mtime = scene.GetNumberOfNodes(), scene.GetMTime()
    job = upsampling.UpsampleJob(node, upsampling.UpsampleSettings(0.25, model=tiny_weights, device="cpu",
                                                                   window=2, overlap=1, tile=16))
    job.start()
    folder = job.temporaryFolder
    _wait_for(lambda: job.poll() or job.progress > 0, 300)
    job.cancel()
    assert job.state == job.CANCELLED and job.outputNode is None
    assert scene.GetNumberOfNodes() == n_nodes and scene.GetMTime() == mtime
    assert not os.path.exists(folder)


def test_job_failure_reports_reason_and_adds_nothing(scene, tmp_path):
    from CycleINRSRLib import upsampling

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not weights")
    node = add_volume(scene)
    n_nodes = scene.GetNumberOfNodes()
    job = upsampling.UpsampleJob(node, upsampling.UpsampleSettings(1.0, model=str(bad), device="cpu"))
    job.start()
    assert job.wait(timeout=300) == job.FAILED
    assert "broken.safetensors" in job.errorMessage
    assert scene.GetNumberOfNodes() == n_nodes


def test_job_validation(scene):
    from CycleINRSRLib import upsampling

    assert upsampling.UpsampleSettings(1.0).model == "auto"  # the panel's default: chosen by device
    node = add_volume(scene)
    for settings, message in [
        (upsampling.UpsampleSettings(4.0), "smaller than the input"),
        (upsampling.UpsampleSettings(0.0), "> 0"),
        (upsampling.UpsampleSettings(1.0, model="/no/such.safetensors"), "not found"),
        (upsampling.UpsampleSettings(1.0, window=4, overlap=4), "overlap"),
        (upsampling.UpsampleSettings(1.0, window=1, overlap=0), "at least 2 slices"),
        (upsampling.UpsampleSettings(1.0, tile=7), "at least 8 pixels"),
    ]:
        with pytest.raises(ValueError, match=message):
            upsampling.UpsampleJob(node, settings).start()
    with pytest.raises(ValueError, match="Select an input"):
        upsampling.UpsampleJob(None, upsampling.UpsampleSettings(1.0)).start()


def test_panel_size_limits_are_the_command_lines():
    """Sizes at the command line's limits pass the panel's check (0 = automatic; an automatic overlap fits
    the window: the command line's rule, tested in test_cli_outputs)."""
    from CycleINRSRLib import upsampling

    for window, overlap, tile in ((2, 0, 8), (2, 1, 0), (0, 5, 0), (0, 0, 0)):
        assert upsampling.sizeProblem(window, overlap, tile) == "", (window, overlap, tile)


@pytest.mark.parametrize("window, overlap, tile", [
    (1, 0, 0), (2, 0, 0), (2, 1, 0), (2, 2, 0), (3, 2, 0), (5, 7, 0), (0, 5, 0), (0, 0, 7), (0, 0, 8), (6, 0, 9)])
def test_panel_size_limits_agree_with_the_command_line(window, overlap, tile):
    """The panel repeats the command line's size limits as literals (its helpers must not import the core,
    which needs torch): for sizes on both sides of each limit, the panel refuses exactly what the command
    it builds would refuse (the parser's bounds, then check_options)."""
    from cycleinr import upsample_cmd
    from cycleinr.cli import build_parser
    from CycleINRSRLib import upsampling

    words = proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1, window=window, overlap=overlap,
                                      tile=tile)[3:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            upsample_cmd.check_options(build_parser().parse_args(words))
        command_line = True
    except (SystemExit, ValueError):
        command_line = False
    assert (upsampling.sizeProblem(window, overlap, tile) == "") == command_line, (window, overlap, tile)


def test_importing_the_slicer_helpers_does_not_load_torch():
    """The panel imports these in Slicer's own process before torch may be installed."""
    import slicer  # noqa: F401                    # the helpers import it; PyPI slicer-core provides it
    code = ("import sys\n"
            "import CycleINRSRLib.dependencies, CycleINRSRLib.layout, CycleINRSRLib.process\n"
            "import CycleINRSRLib.upsampling, CycleINRSRLib.volumes\n"
            "p = CycleINRSRLib.process\n"
            "p.findModelsDir(), p.bundledModelFile('fast'), p.autoModel('cpu')  # the core's weights module\n"
            "print(sorted(m for m in ('torch', 'cycleinr.model', 'qt') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=proc.buildEnvironment())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dependency_checks_read_metadata_only():
    from CycleINRSRLib import dependencies

    assert dependencies.missingRequirements(["pytest", "no-such-distribution-cycleinr>=1", "pytest>=999"]) == [
        "no-such-distribution-cycleinr>=1", "pytest>=999"]
    assert dependencies.missingRequirements() == []  # everything the core needs is installed here
    assert dependencies.torchMissing() is None
    assert dependencies.ensureDependencies(askConfirmation=False)  # nothing missing: no dialog, no Slicer needed
    assert dependencies.splitRequirement("scikit-image>=0.21") == ("scikit-image", ">=0.21")
    assert dependencies.versionSatisfies("2.5.1+cu121", ">=2.1")
    assert not dependencies.versionSatisfies("2.0.1", dependencies.TORCH_REQUIREMENT)
    assert dependencies.versionSatisfies("2.1.0", dependencies.TORCH_REQUIREMENT)


def test_one_confirmation_lists_everything():
    from CycleINRSRLib import dependencies

    text = dependencies.confirmationText("PyTorch is not installed", ["safetensors>=0.4", "PyWavelets>=1.4"])
    for item in ("torch>=2.1", "PyTorch is not installed", "safetensors>=0.4", "PyWavelets>=1.4"):
        assert item in text
    assert "torch" not in dependencies.confirmationText(None, ["scipy"])


def test_requirements_file_matches_pyproject():
    """The packages Slicer installs are the core's (pyproject) with the same version floors; torch's floor
    is TORCH_REQUIREMENT."""
    import tomllib

    from CycleINRSRLib import dependencies

    def floors(requirements):
        return dict(dependencies.splitRequirement(r) for r in requirements)

    project = floors(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"])
    slicer_side = floors(dependencies.readRequirements())
    assert (ROOT / "CycleINRSR" / "Resources" / "requirements.txt").is_file()
    assert project["torch"] == dependencies.TORCH_REQUIREMENT
    for name, floor in slicer_side.items():
        if name in project:
            assert project[name] == floor, name
    shipped_with_slicer = {"numpy", "SimpleITK", "matplotlib", "torch"}  # matplotlib: figures only, not in Slicer
    assert set(project) - shipped_with_slicer <= set(slicer_side)


def test_self_ensemble_reaches_the_core_command_line():
    """The panel's "Self-ensemble" choice becomes --ensemble N (left out when off), which cycleinr's parser
    accepts; the panel's sizes are the core's."""
    from cycleinr.cli import build_parser
    from cycleinr.inference import ENSEMBLE_SIZES
    assert proc.ENSEMBLE_SIZES == ENSEMBLE_SIZES
    off = proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1)
    eight = proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1, ensemble=8)
    assert "--ensemble" not in off and eight[-2:] == ["--ensemble", "8"]
    assert build_parser().parse_args(eight[3:]).ensemble == 8
    assert build_parser().parse_args(off[3:]).ensemble == 1
    with pytest.raises(ValueError, match="self-ensemble"):
        proc.buildUpsampleCommand("py", "i.nrrd", "o.nrrd", thickness=1, ensemble=3)
