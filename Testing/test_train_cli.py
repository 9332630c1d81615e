"""CycleINRTrain / ``cycleinr train``: one parameter table for argparse and the Slicer XML, the
execution-model XML itself, exact resume, Slicer's progress protocol, the weights it writes, and the
errors it reports before training."""

import argparse
import importlib.util
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cycleinr import cli, outputs, train_cli
from cycleinr.data import Volume, sample_batch
from cycleinr.train import TrainSettings
from cycleinr.weights import load_tensors

from conftest import phantom

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "CycleINRTrain" / "CycleINRTrain.py"
XML_FILE = ROOT / "CycleINRTrain" / "CycleINRTrain.xml"

# A tiny fast-preset network and run. One integer scale keeps it short and deterministic.
TINY = ["--preset", "fast", "--features", "8", "--code_length", "16", "--decoder_width", "32",
        "--decoder_layers", "4", "--patch", "12", "--thick_slices", "3", "--iterations", "2", "--batch_size", "2",
        "--scale_min", "2", "--scale_max", "2", "--learning_rate", "0.001", "--device", "cpu",
        "--checkpoint_every", "1"]


def write(path, array, spacing=(0.8, 0.8, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()] + (1.0,) * max(0, image.GetDimension() - len(spacing)))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("data") / "thin.nrrd", phantom((16, 24, 24), seed=3))


def run_script(*args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


# ------------------------------------------------------------------------ execution-model XML checker

SCALARS = {"integer", "float", "double", "string", "boolean"}
VECTORS = {"integer-vector", "float-vector", "double-vector", "string-vector", "boolean-vector"}
ENUMERATIONS = {"string-enumeration", "integer-enumeration", "float-enumeration", "double-enumeration"}
NODES = {"image", "geometry", "transform", "table", "measurement", "pointfile"}
POINTS = {"point", "point-vector", "region", "region-vector"}
PARAMETER_TAGS = SCALARS | VECTORS | ENUMERATIONS | NODES | POINTS | {"file", "directory"}
HEADER = {"category", "index", "title", "description", "version", "documentation-url", "license", "contributor",
          "acknowledgements"}
REQUIRED_HEADER = ("category", "title", "description", "version", "contributor")
COMMON = {"name", "flag", "longflag", "label", "description", "default", "channel", "index"}


def allowed_children(tag):
    extra = {"constraints"} if tag in (SCALARS | VECTORS) - {"boolean", "string"} else set()
    if tag in ENUMERATIONS:
        extra = {"element"}
    if tag in NODES or tag in POINTS:
        extra = {"reference"}
    return COMMON | extra


def allowed_attributes(tag):
    if tag == "file":
        return {"multiple", "fileExtensions"}
    if tag == "directory":
        return {"multiple"}
    if tag in NODES:
        return {"type", "reference", "hidden", "multiple", "fileExtensions", "aggregate", "coordinateSystem"}
    if tag in POINTS:
        return {"multiple", "coordinateSystem", "hidden"}
    if tag == "boolean" or tag in ENUMERATIONS:
        return {"hidden"}
    return {"hidden", "multiple"}


def identifier(text):
    return bool(text) and (text[0].isalpha() or text[0] == "_") and all(c.isalnum() or c == "_" for c in text)


def sem_problems(root):
    """What a SlicerExecutionModel parser would reject (elements, nesting, required children, values)."""
    problems = []
    if root.tag != "executable":
        return [f"root element is <{root.tag}>, not <executable>"]
    tags = [child.tag for child in root]
    for child in root:
        if child.tag not in HEADER | {"parameters"}:
            problems.append(f"<{child.tag}> is not allowed in <executable>")
        elif child.tag != "parameters" and tags.count(child.tag) > 1:
            problems.append(f"<{child.tag}> appears twice in <executable>")
    problems += [f"<executable> lacks <{t}>" for t in REQUIRED_HEADER if t not in tags]
    if "parameters" not in tags:
        problems.append("<executable> has no <parameters>")
    seen = {"name": set(), "longflag": set(), "flag": set()}
    for group in root.iter("parameters"):
        if set(group.attrib) - {"advanced"} or group.get("advanced", "false") not in ("true", "false"):
            problems.append(f"<parameters> has bad attributes {group.attrib}")
        kinds = [child.tag for child in group]
        if kinds.count("label") != 1 or kinds.count("description") != 1:
            problems.append("<parameters> needs exactly one <label> and one <description>")
        if not set(kinds) & PARAMETER_TAGS:
            problems.append("<parameters> holds no parameter")
        for param in group:
            if param.tag in ("label", "description"):
                continue
            if param.tag not in PARAMETER_TAGS:
                problems.append(f"<{param.tag}> is not a parameter element")
                continue
            problems += parameter_problems(param, seen)
    return problems


def parameter_problems(param, seen):
    tag, problems = param.tag, []
    children = [c.tag for c in param]
    where = f"<{tag}> {param.findtext('name')!r}"
    if set(param.attrib) - allowed_attributes(tag):
        problems.append(f"{where}: attributes {sorted(set(param.attrib) - allowed_attributes(tag))} not allowed")
    if param.get("multiple", "false") not in ("true", "false"):
        problems.append(f"{where}: multiple must be true or false")
    if (param.text or "").strip():
        problems.append(f"{where}: stray text")
    for child in set(children):
        if child not in allowed_children(tag):
            problems.append(f"{where}: <{child}> not allowed here")
        elif child != "element" and children.count(child) > 1:
            problems.append(f"{where}: <{child}> appears twice")
    for required in ("name", "label", "description"):
        if required not in children:
            problems.append(f"{where}: no <{required}>")
    name, flag, longflag = (param.findtext(t, "").strip() for t in ("name", "flag", "longflag"))
    index = param.findtext("index")
    if not identifier(name):
        problems.append(f"{where}: name is not an identifier")
    if (flag or longflag) and index is not None:
        problems.append(f"{where}: <index> together with a flag")
    if not (flag or longflag) and index is None:
        problems.append(f"{where}: needs <flag>, <longflag> or <index>")
    if flag and len(flag.lstrip("-")) != 1:
        problems.append(f"{where}: <flag> must be one character")
    if longflag and not identifier(longflag.lstrip("-")):
        problems.append(f"{where}: <longflag> must be an identifier")
    for key, value in (("name", name), ("longflag", longflag), ("flag", flag)):
        if value and value in seen[key]:
            problems.append(f"{where}: {key} {value!r} used twice")
        seen[key].add(value)
    channel = param.findtext("channel")
    if tag in NODES | {"file"} and channel is None:
        problems.append(f"{where}: needs <channel>")
    if channel is not None and channel.strip() not in ("input", "output"):
        problems.append(f"{where}: channel must be input or output")
    default = param.findtext("default")
    if default is not None:
        default = default.strip()
        try:
            if tag == "boolean" and default not in ("true", "false"):
                raise ValueError
            if tag in ("integer", "integer-enumeration"):
                int(default)
            if tag in ("float", "double", "float-enumeration", "double-enumeration"):
                float(default)
        except ValueError:
            problems.append(f"{where}: default {default!r} does not fit <{tag}>")
    if tag in ENUMERATIONS:
        elements = [e.text.strip() for e in param.iter("element")]
        if not elements:
            problems.append(f"{where}: enumeration without <element>")
        if default is not None and default not in elements:
            problems.append(f"{where}: default {default!r} is not one of the elements")
    for constraints in param.iter("constraints"):
        if {c.tag for c in constraints} - {"minimum", "maximum", "step"}:
            problems.append(f"{where}: <constraints> holds other than minimum/maximum/step")
    return problems


# ------------------------------------------------------------------------------------------- XML

def test_script_prints_the_committed_xml():
    result = run_script("--xml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == XML_FILE.read_text(encoding="utf-8"), (
        "CycleINRTrain.xml is stale: python CycleINRTrain/CycleINRTrain.py --xml > CycleINRTrain/CycleINRTrain.xml")
    assert ET.fromstring(result.stdout.encode()).tag == "executable"
    assert train_cli.sem_xml() == result.stdout


def test_xml_is_a_valid_execution_model_description():
    root = ET.fromstring(XML_FILE.read_bytes())
    assert sem_problems(root) == []
    assert root.findtext("title") and root.findtext("category")


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.find("parameters/integer").remove(r.find("parameters/integer/name")), "no <name>"),
    (lambda r: ET.SubElement(r, "integer"), "not allowed in <executable>"),
    (lambda r: ET.SubElement(r.find("parameters/double"), "index").__setattr__("text", "0"), "together with a flag"),
    (lambda r: r.find("parameters/string-enumeration/default").__setattr__("text", "nope"), "not one of"),
    (lambda r: r.find("parameters/file").remove(r.find("parameters/file/channel")), "needs <channel>"),
    (lambda r: r.find("parameters/integer/longflag").__setattr__("text", "bad-flag"), "identifier"),
    (lambda r: r.find("parameters/boolean/default").__setattr__("text", "yes"), "does not fit"),
    (lambda r: ET.SubElement(r.find("parameters/integer"), "element"), "not allowed here"),
])
def test_xml_checker_catches_mistakes(mutate, expected):
    root = ET.fromstring(XML_FILE.read_bytes())
    mutate(root)
    assert any(expected in p for p in sem_problems(root)), sem_problems(root)


def xml_parameters():
    root = ET.fromstring(XML_FILE.read_bytes())
    return [p for group in root.iter("parameters") for p in group if p.tag in PARAMETER_TAGS]


def parsers():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {"standalone": train_cli.build_argparser(), "cycleinr train": sub.choices["train"]}


@pytest.mark.parametrize("which", ["standalone", "cycleinr train"])
def test_argparse_and_xml_carry_the_same_parameters(which):
    actions = [a for a in parsers()[which]._actions if a.dest not in ("help", "xml")]
    by_long = {s: a for a in actions for s in a.option_strings}
    params = xml_parameters()
    assert len(params) == len(actions) == len(train_cli.PARAMETERS)
    for param in params:
        name, tag = param.findtext("name"), param.tag
        action = by_long[f"--{param.findtext('longflag')}"]
        assert action.dest == name
        if param.findtext("flag"):
            assert f"-{param.findtext('flag')}" in action.option_strings
        default = param.findtext("default")
        if tag == "boolean":
            assert isinstance(action, argparse._StoreTrueAction) and default == "false"
        elif param.get("multiple") == "true":
            assert action.nargs == "+" and action.default is None
        elif tag in ("file", "directory"):
            assert default is None and action.default is None and action.type is str
        else:
            cast = {"integer": int, "double": float}.get(tag, str)
            assert action.type is cast and action.default == cast(default), name
        elements = [e.text for e in param.iter("element")]
        assert list(action.choices or []) == elements, name


def test_defaults_are_the_training_defaults():
    args = train_cli.build_argparser().parse_args(["-i", "a.nrrd", "-o", "w.safetensors"])
    assert train_cli.settings_from_args(args) == TrainSettings()


def slicer_command_line(values):
    """The arguments Slicer builds from the XML (vtkSlicerCLIModuleLogic): numbers and choices always as
    --longflag value, booleans only when true, files and folders only when set."""
    argv = []
    for param in xml_parameters():
        name, flag = param.findtext("name"), f"--{param.findtext('longflag')}"
        value = values.get(name, param.findtext("default"))
        if param.tag == "boolean":
            argv += [flag] if value == "true" else []
        elif value not in (None, ""):
            argv += [flag, value]
    return argv


def test_slicer_style_command_line_parses_to_the_defaults(tmp_path):
    argv = slicer_command_line({"training": "a.nrrd,b.nii.gz", "output": "w.safetensors", "no_lam": "true"})
    args = train_cli.build_argparser().parse_args(argv)
    assert train_cli._split_paths(args.training) == ["a.nrrd", "b.nii.gz"]
    settings = train_cli.settings_from_args(args)
    assert settings == TrainSettings(model_overrides={"neighbours": 0})


def test_xml_contributor_names_people_and_organization():
    """Slicer's extension index wants "Firstname Lastname (Organization)", as the extension's CMakeLists."""
    contributor = ET.fromstring(XML_FILE.read_bytes()).findtext("contributor")
    assert re.fullmatch(r"[^(),]+ \([^(),]+\)", contributor), contributor
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(EXTENSION_CONTRIBUTORS "{contributor}")' in cmake


def test_issue_11_options_reach_the_settings_and_the_model():
    args = train_cli.build_argparser().parse_args(["-i", "a", "-o", "w.safetensors", "--residual", "none",
                                                   "--loss_margin", "2", "--degradation", "interval",
                                                   "--loss", "l2"])
    settings = train_cli.settings_from_args(args)
    assert settings.model_overrides == {"residual": "none"} and settings.loss_margin == 2
    assert settings.degradation == "interval" and settings.loss == "l2"
    defaults = train_cli.settings_from_args(train_cli.build_argparser().parse_args(["-i", "a", "-o", "w.safetensors"]))
    assert defaults.model_overrides == {} and defaults.degradation == "interval_matched"
    assert defaults.loss_margin == -1
    with pytest.raises(SystemExit):
        train_cli.build_argparser().parse_args(["-i", "a", "-o", "w.safetensors", "--residual", "cubic"])
    help_text = train_cli.build_argparser().format_help()
    assert "--loss {l1,l2}" in help_text and "--residual {linear,none}" in help_text


def test_kernel_jitter_option_reaches_the_settings_and_is_checked():
    parse = train_cli.build_argparser().parse_args
    settings = train_cli.settings_from_args(parse(["-i", "a", "-o", "w.safetensors", "--blur_max", "1.2"]))
    assert settings.blur_max == 1.2
    assert train_cli.settings_from_args(parse(["-i", "a", "-o", "w.safetensors"])).blur_max == 0.0
    with pytest.raises(ValueError, match="blur_max"):
        train_cli.settings_from_args(parse(["-i", "a", "-o", "w.safetensors", "--blur_max", "-0.5"]))


def test_residual_none_trains_loads_and_upsamples(tmp_path, volume_file):
    """The paper's literal form (no residual over linear interpolation) from the command line: the written
    weights load as residual 'none' and upsample a volume."""
    from cycleinr.inference import upsample
    from cycleinr.weights import load_model

    out = tmp_path / "none.safetensors"
    assert train_main("-i", volume_file, "-o", out, *TINY, "--epochs", "2", "--iterations", "1",
                      "--residual", "none", "--scale_min", "2.5", "--scale_max", "2.5") == 0
    model = load_model(out)
    assert model.config.residual == "none"
    assert load_tensors(out)[1]["training"]["settings"]["model_overrides"]["residual"] == "none"
    lr = phantom((6, 20, 22), seed=5).astype(np.float32)
    result = upsample(lr, (0.7, 0.7, 2.0), factor=2, model=model, device="cpu")
    assert result.array.shape == (11, 20, 22) and np.isfinite(result.array).all()
    assert not np.allclose(result.array[1::2], (lr[:-1] + lr[1:]) / 2, atol=1.0)   # not linear interpolation


def test_size_overrides_keep_the_decoder_skip_inside():
    args = train_cli.build_argparser().parse_args(["-i", "a", "-o", "w.safetensors", "--decoder_layers", "3",
                                                   "--features", "16"])
    assert train_cli._model_overrides(args) == {"features": 16, "decoder_layers": 3, "skip_layer": 1}
    args.decoder_layers = 1
    with pytest.raises(ValueError, match="at least 2"):
        train_cli._model_overrides(args)


# -------------------------------------------------------------------------------------- training

def train_main(*args):
    return train_cli.main([str(a) for a in args])


def test_resume_equals_an_uninterrupted_run(tmp_path, volume_file, capsys):
    base = ["-i", volume_file, *TINY, "--iterations", "1"]
    assert train_main(*base, "-o", tmp_path / "a.safetensors", "--epochs", "2") == 0
    assert train_main(*base, "-o", tmp_path / "b.safetensors", "--epochs", "4",
                      "--resume", tmp_path / "a.ckpt.safetensors") == 0
    assert train_main(*base, "-o", tmp_path / "c.safetensors", "--epochs", "4") == 0
    resumed, meta = load_tensors(tmp_path / "b.safetensors")
    straight, _ = load_tensors(tmp_path / "c.safetensors")
    first, _ = load_tensors(tmp_path / "a.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)
    assert not all(torch.equal(resumed[k], first[k]) for k in resumed)
    assert meta["epoch"] == 4 and meta["config"]["features"] == 8 and meta["config"]["decoder_width"] == 32
    assert "resuming at epoch 2" in capsys.readouterr().out
    assert train_main(*base, "-o", tmp_path / "d.safetensors", "--epochs", "2",
                      "--resume", tmp_path / "a.ckpt.safetensors") == 2
    assert "is at epoch 2; ask for more --epochs" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_no_weights(tmp_path, volume_file):
    out = tmp_path / "w.safetensors"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-i", str(volume_file), "-o", str(out), *TINY,
                                "--iterations", "1", "--epochs", "100000", "--checkpoint_every", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in process.stdout:
            if line.startswith("<filter-comment>epoch 2/"):     # epoch 1 is complete
                break
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and f"--resume {out.with_name('w.ckpt.safetensors')}" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt.json", "w.ckpt.safetensors"]
    assert load_tensors(tmp_path / "w.ckpt.safetensors")[1]["epoch"] >= 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, volume_file):
    """One CLI run as Slicer starts it (stdout a pipe), with a validation slab held out."""
    out = tmp_path_factory.mktemp("run") / "weights.safetensors"
    result = run_script("-i", volume_file, "-o", out, *TINY, "--epochs", "3", "--iterations", "1",
                        "--validation_fraction", "0.3", "--validate_every", "100")
    assert result.returncode == 0, result.stderr
    return out, result


def test_progress_follows_slicer_cli_protocol(trained):
    _, result = trained
    lines = result.stdout.splitlines()
    assert lines[:2] == ["<filter-start>", f"<filter-name>{train_cli.NAME}</filter-name>"]
    assert lines[2].startswith("<filter-comment>") and lines[3] == "</filter-start>"
    values = [float(line[len("<filter-progress>"):-len("</filter-progress>")])
              for line in lines if line.startswith("<filter-progress>")]
    assert len(values) >= 4 and values[-1] == 1.0
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    comments = [line for line in lines if line.startswith("<filter-comment>epoch")]
    assert [c.split()[1] for c in comments] == ["1/3", "2/3", "3/3"]
    assert "val PSNR" in comments[-1] and "loss" in comments[0]
    end = lines.index("<filter-end>")
    assert lines[end + 1] == f"<filter-name>{train_cli.NAME}</filter-name>" and "</filter-end>" in lines[end:]
    assert any("held out for validation" in line and "last 6 of 16 slices" in line for line in lines)
    assert result.stderr == ""                     # Slicer shows anything on stderr as an error


def test_written_weights_upsample_a_volume(trained, tmp_path):
    weights, _ = trained
    source = write(tmp_path / "in.nrrd", phantom((6, 20, 22), seed=5), spacing=(0.7, 0.7, 2.0))
    result = subprocess.run([sys.executable, "-m", "cycleinr", "upsample", source, tmp_path / "out.nrrd", "--factor",
                             "2", "--model", weights, "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert out.GetSize() == (22, 20, 11) and out.GetSpacing()[2] == pytest.approx(1.0)


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = train_cli.Progress(2, stream=stream)
    progress.start("training")
    progress.epoch({"epoch": 1, "epochs": 2, "loss_total": 0.5})
    progress.note("hello")
    progress.epoch({"epoch": 2, "epochs": 2, "loss_total": 0.25, "val_psnr": 30.0})
    progress.end(1.0)
    text = stream.getvalue()
    assert "<filter" not in text
    assert " 50.0% epoch 1/2 loss 0.50000" in text and "100.0% epoch 2/2" in text and "val PSNR 30.00 dB" in text
    assert "\ncycleinr: hello\n" in text and text.endswith("\n")


# ---------------------------------------------------------------------------------------- checks

def test_volume_check_matches_what_sampling_needs():
    settings = TrainSettings(lr_slices=4, patch=12, scale_min=3.0, scale_max=3.0)
    need = 10                           # 4 thick slices 3 thin apart: thin slices 0..9
    fits = Volume(np.zeros((need, 12, 12), np.float32), "fits")
    train_cli.check_training_volumes([fits], settings)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample_batch(rng, [fits], 2, 4, 12, (3.0, 3.0))
    with pytest.raises(ValueError, match="too thin for the smallest training scale"):
        train_cli.check_training_volumes([Volume(np.zeros((need - 1, 12, 12), np.float32), "thin")], settings)
    wide = TrainSettings(lr_slices=4, patch=12, scale_min=2.0, scale_max=3.0)
    with pytest.raises(ValueError, match="largest training scale"):
        train_cli.check_training_volumes([Volume(np.zeros((need - 1, 12, 12), np.float32), "thin")], wide)
    with pytest.raises(ValueError, match="along y"):
        train_cli.check_training_volumes([Volume(np.zeros((need, 8, 12), np.float32), "flat", (0, 1))],
                                         TrainSettings(lr_slices=4, patch=8, scale_min=3.0, scale_max=3.0))


def test_hold_out_whole_volumes_or_an_end_slab():
    settings = TrainSettings(lr_slices=3)                          # training needs 11 slices at scale 6
    vols = [Volume(np.full((30, 8, 8), i, np.float32), f"v{i}") for i in range(3)]
    train, val, names, note = train_cli.hold_out(vols, 0.3, settings)
    assert [v.name for v in train] == ["v0", "v1"] and names == ["v2"] and "1 of 3" in note
    one = [Volume(np.arange(40, dtype=np.float32)[:, None, None] * np.ones((40, 8, 8), np.float32), "one")]
    train, val, names, note = train_cli.hold_out(one, 0.25, settings)
    assert train[0].array.shape[0] == 30 and val[0].shape[0] == 10 and val[0][0, 0, 0] == 30
    assert "slices 30-39" in note and "only one training volume" in note
    with pytest.raises(ValueError, match="too few to hold out"):
        train_cli.hold_out(one, 0.8, settings)


def error_case(tmp_path, monkeypatch, case):
    """Arguments of ``cycleinr train`` that must fail before training, and the expected message."""
    good = write(tmp_path / "good.nrrd", phantom((16, 24, 24)))
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    argv = ["-i", good, "-o", out, *TINY]
    if case == "2d":
        argv[1] = write(tmp_path / "slice.nrrd", phantom((1, 24, 24))[0])
        return argv, out, "2D"
    if case == "4d":
        image = sitk.JoinSeries([sitk.GetImageFromArray(phantom((16, 24, 24), seed=s)) for s in range(2)])
        sitk.WriteImage(image, str(tmp_path / "series.nrrd"))
        argv[1] = tmp_path / "series.nrrd"
        return argv, out, "4D"
    if case == "thin":
        argv[1] = write(tmp_path / "thin.nrrd", phantom((4, 24, 24)))
        return argv, out, "too thin for the smallest training scale"
    if case == "none":
        (tmp_path / "empty").mkdir()
        argv[1] = tmp_path / "empty"
        return argv, out, "no DICOM series"
    if case == "missing":
        argv[1] = tmp_path / "nowhere.nii.gz"
        return argv, out, "no such file"
    if case == "unwritable":
        out.parent.chmod(0o555)
        if os.access(out.parent, os.W_OK):               # root ignores permissions: fail the probe instead
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
        return argv, out, "cannot create files in"
    if case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        return [*argv, "--device", "cuda"], out, "no CUDA GPU"
    if case == "both":
        return [*argv, "--validation", good, "--validation_fraction", "0.2"], out, "not both"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["2d", "4d", "thin", "none", "missing", "unwritable", "cuda", "both"])
def test_errors_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, case):
    argv, out, expected = error_case(tmp_path, monkeypatch, case)
    try:
        assert cli.main(["train", *map(str, argv)]) == 2
    finally:
        out.parent.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("cycleinr: error: ") and err.count("\n") == 1 and expected in err, err
    assert list(out.parent.iterdir()) == []


def test_script_exit_status_on_error(tmp_path):
    flat = write(tmp_path / "slice.nrrd", phantom((1, 24, 24))[0])
    result = run_script("-i", flat, "-o", tmp_path / "w.safetensors", "--device", "cpu")
    assert result.returncode == 2 and result.stderr.startswith("cycleinr: error: ") and "2D" in result.stderr
    assert not (tmp_path / "w.safetensors").exists()


# ---------------------------------------------------------------------------------- the script

def test_script_finds_the_core_next_to_it_in_a_slicer_install(tmp_path):
    lib = tmp_path / "lib" / "Slicer-5.8"
    (lib / "cli-modules").mkdir(parents=True)
    shutil.copy(SCRIPT, lib / "cli-modules" / SCRIPT.name)
    stub = lib / "qt-scripted-modules" / "cycleinr"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "train_cli.py").write_text("def main(argv=None):\n    print('core at', __file__, argv)\n    return 0\n")
    result = subprocess.run([sys.executable, str(lib / "cli-modules" / SCRIPT.name), "--xml"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(stub / "train_cli.py") in result.stdout


def test_script_finds_the_core_in_the_source_checkout():
    spec = importlib.util.spec_from_file_location("cycleinr_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Path(module.find_core()) == ROOT / "CycleINRSR"


# ----------------------------------------------------------------------------------- multi-process

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_once_and_resume_exactly(tmp_path, volume_file):
    base = ["-i", volume_file, *TINY]
    first = torchrun(*base, "-o", tmp_path / "a.safetensors", "--epochs", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("<filter-start>") == 1 and "x 2 processes" in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt.json", "a.ckpt.safetensors", "a.json",
                                                          "a.safetensors"]
    resumed = torchrun(*base, "-o", tmp_path / "b.safetensors", "--epochs", "3", "--resume", tmp_path / "a.ckpt.safetensors")
    straight = torchrun(*base, "-o", tmp_path / "c.safetensors", "--epochs", "3")
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    b, _ = load_tensors(tmp_path / "b.safetensors")
    c, meta = load_tensors(tmp_path / "c.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b) and meta["training"]["processes"] == 2
