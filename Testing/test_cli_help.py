"""Help texts a newcomer reads first: every command listed, no reST markup, every option explained."""

import argparse
import os
import platform
import subprocess
import sys

import pytest

from cycleinr import cli


def helps():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser.format_help(), {name: p.format_help() for name, p in sub.choices.items()}


def test_top_level_summary_names_every_command():
    top, commands = helps()
    summary = cli.build_parser().description
    assert set(commands) == {"upsample", "batch", "train", "export", "evaluate", "bench", "lpips-weights"}
    for name in commands:
        assert name in summary, name
    assert "``" not in top


@pytest.mark.parametrize("name", ["upsample", "batch", "train", "export", "evaluate", "bench", "lpips-weights"])
def test_no_raw_markup_and_no_empty_defaults(name):
    text = helps()[1][name]
    assert "``" not in text and "(default: None)" not in text


@pytest.mark.parametrize("name", ["upsample", "batch"])
def test_upsample_options_are_explained(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    for action in sub._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    model = next(a for a in sub._actions if "--model" in a.option_strings)
    assert model.default == "auto" and ".json" in model.help and "beside" in model.help and "fast" in model.help


def test_train_says_when_training_volumes_are_required():
    text = " ".join(helps()[1]["train"].split())
    assert "Required unless --training_folder is given" in text


@pytest.mark.parametrize("preset, command, expected", [
    (None, "upsample", "PASSIVE"), (None, "batch", "PASSIVE"), ("ACTIVE", "upsample", "ACTIVE"), (None, "train", None),
])
def test_inference_commands_let_openmp_threads_sleep(preset, command, expected):
    """Spinning OpenMP threads made the demo 4x slower on a shared CPU: upsample/batch set the passive
    wait policy before torch loads, unless the user chose one; other commands are left alone."""
    code = ("import os, sys\nfrom cycleinr import cli\nassert 'torch' not in sys.modules\n"
            f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == str(expected)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator (Linux); elsewhere it is a no-op")
@pytest.mark.parametrize("command, kept", [("upsample", True), ("batch", True), ("train", False)])
def test_upsampling_commands_keep_freed_memory_for_reuse(command, kept):
    """On glibc, upsample/batch keep freed blocks (the sliding window's ~40 MB attention blocks) in the
    heap instead of unmapping and page-faulting them again: a freed 96 MB array stays resident. Other
    commands leave the allocator as it is, and then the same array is returned to the system."""
    code = ("import numpy as np\nfrom cycleinr import cli\n"
            f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "def rss():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) >> 10\n"
            "block = np.ones(96 << 17)\nbefore = rss()\ndel block\nprint(before - rss())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    released_mb = int(proc.stdout.strip().splitlines()[-1])
    assert (released_mb < 16) if kept else (released_mb > 80), released_mb
