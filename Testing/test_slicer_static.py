"""Static checks of the Slicer module: .ui <-> Python names, parameter node bindings, undefined names
(ruff), CMake file lists (and a CMake configure against a stub Slicer package when cmake is available),
icons. The module file needs Slicer's Qt, so it is only parsed here, never imported."""

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "CycleINRSR"
MODULE_PY = MODULE / "CycleINRSR.py"
LIB = MODULE / "CycleINRSRLib"
UI = MODULE / "Resources" / "UI" / "CycleINRSR.ui"
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QProgressBar",
              "QCheckBox", "QLineEdit", "QGroupBox", "QFrame"}


def ui_widgets() -> dict:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def module_source() -> str:
    return MODULE_PY.read_text(encoding="utf-8")


def class_node(name: str) -> ast.ClassDef:
    tree = ast.parse(module_source())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_PY.name}")


def test_every_ui_name_used_in_python_exists_in_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", module_source()))
    assert used, "no self.ui.NAME found: did the module stop using the .ui?"
    missing = used - set(ui_widgets())
    assert not missing, f"widgets used in CycleINRSR.py but missing from the .ui: {sorted(missing)}"


def test_bound_widgets_match_parameter_node():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (name, widget.get("class"))
    fields = {t.target.id: ast.unparse(t.annotation) for t in class_node("CycleINRSRParameterNode").body
              if isinstance(t, ast.AnnAssign)}
    assert set(bound) == set(fields), (set(bound) ^ set(fields))
    # widget classes that Slicer's parameterNodeWrapper can connect to these types
    expected = {"inputVolume": "qMRMLNodeComboBox", "outputVolume": "qMRMLNodeComboBox",
                "targetThickness": "QDoubleSpinBox", "device": "QComboBox", "modelChoice": "QComboBox",
                "modelPath": "ctkPathLineEdit", "window": "QSpinBox", "overlap": "QSpinBox", "tile": "QSpinBox"}
    for param, cls in expected.items():
        assert bound[param][1] == cls, (param, bound[param])
    # sliders/spin boxes for numbers need bounds in the annotation (WithinRange)
    for param in ("targetThickness", "window", "overlap", "tile"):
        assert "WithinRange" in fields[param], param


def test_ui_custom_widgets_declared_and_scene_connected():
    root = ET.parse(UI).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")} - QT_CLASSES
    assert used <= declared, used - declared
    assert root.find("widget").get("class") == "qMRMLWidget"
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos <= connected, combos - connected


def test_logic_methods_called_by_widget_exist():
    called = set(re.findall(r"self\.logic\.(\w+)", module_source()))
    defined = {f.name for f in class_node("CycleINRSRLogic").body if isinstance(f, ast.FunctionDef)}
    defined |= {"getParameterNode"}
    assert called <= defined, called - defined


def test_module_structure_follows_template():
    source = module_source()
    for name in ("CycleINRSR", "CycleINRSRWidget", "CycleINRSRLogic", "CycleINRSRTest", "CycleINRSRParameterNode"):
        class_node(name)
    assert '_("CycleINR Super-Resolution")' in source
    assert '"Filtering")]' in source
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in source
    assert "@parameterNodeWrapper" in source
    assert "CycleINRSampleChestCT5mm.nrrd" in source
    test_methods = [f.name for f in class_node("CycleINRSRTest").body if isinstance(f, ast.FunctionDef)]
    assert "runTest" in test_methods and any(m.startswith("test_") for m in test_methods)


def test_lib_does_not_import_qt():
    for path in LIB.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert not names & {"qt", "ctk", "PythonQt"}, (path.name, names)


@pytest.mark.skipif(shutil.which("ruff") is None and
                    subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode != 0,
                    reason="ruff not installed")
def test_ruff_pyflakes_no_undefined_names():
    cmd = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    result = subprocess.run(cmd + ["check", "--select", "F", "--output-format", "concise", "--no-cache",
                                   str(MODULE_PY), str(LIB)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------- CMake

def cmake_list(text: str, var: str) -> list[str]:
    match = re.search(rf"set\({var}\s+(.*?)\)", text, re.S)
    assert match, var
    return [t for t in match.group(1).split() if not t.startswith("#")]


def test_module_cmakelists_lists_every_python_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = {s.replace("${MODULE_NAME}", "CycleINRSR") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    expected = {"CycleINRSR.py"} | {f"CycleINRSRLib/{p.name}" for p in LIB.glob("*.py")}
    assert expected <= scripts, expected - scripts
    for s in scripts - {"${_cycleinr_core_files}"}:
        assert (MODULE / s).is_file(), s
    assert "${_cycleinr_core_files}" in scripts
    assert re.search(r'file\(GLOB_RECURSE _cycleinr_core_files .*"\$\{CMAKE_CURRENT_SOURCE_DIR\}/cycleinr/\*\.py"',
                     text, re.S)
    resources = {s.replace("${MODULE_NAME}", "CycleINRSR") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    assert resources == {"Resources/Icons/CycleINRSR.png", "Resources/UI/CycleINRSR.ui"}
    for r in resources:
        assert (MODULE / r).is_file(), r
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)


def test_extension_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({var} \"[^\"]+\"\)", text), var
    assert 'set(EXTENSION_CATEGORY "Filtering")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(CycleINRSR)",
             "add_subdirectory(CycleINRTrain)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources" in text


def test_icons():
    from PIL import Image

    for path in (ROOT / "CycleINR.png", MODULE / "Resources" / "Icons" / "CycleINRSR.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path


STUB_CONFIG = """
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.9/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.9/qt-scripted-modules")
"""
STUB_USE = """
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(f IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
      message(FATAL_ERROR "nonexistent file ${f}")
    endif()
  endforeach()
  file(WRITE "${CMAKE_BINARY_DIR}/${MY_NAME}.scripts" "${MY_SCRIPTS}")
endfunction()
function(SlicerMacroBuildScriptedCLI)
  cmake_parse_arguments(MY "" "NAME" "" ${ARGN})
  foreach(ext IN ITEMS py xml)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_NAME}.${ext}")
      message(FATAL_ERROR "nonexistent file ${MY_NAME}.${ext}")
    endif()
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  file(APPEND "${CMAKE_BINARY_DIR}/unittests" "${ARGN};")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_against_stub_slicer(tmp_path):
    """Checks the CMake code itself (syntax, globbing, file existence) with stand-ins for Slicer's
    macros. It is not a Slicer build: that needs the Slicer SDK."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Empty.cmake").write_text("")
    if (ROOT / "CycleINRTrain" / "CMakeLists.txt").is_file():
        source = ROOT
    else:  # the training module's CMakeLists is written by a colleague: configure only this module
        source = tmp_path / "wrapper"
        source.mkdir()
        (source / "CMakeLists.txt").write_text(
            "cmake_minimum_required(VERSION 3.16)\nproject(W NONE)\nfind_package(Slicer REQUIRED)\n"
            f'include(${{Slicer_USE_FILE}})\nset(BUILD_TESTING ON)\nadd_subdirectory("{MODULE.as_posix()}" CycleINRSR)\n')
    build = tmp_path / "build"
    result = subprocess.run(["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={stub}",
                             "-DBUILD_TESTING=ON"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    scripts = set((build / "CycleINRSR.scripts").read_text().split(";"))
    core = {f"cycleinr/{p.relative_to(MODULE / 'cycleinr').as_posix()}" for p in (MODULE / "cycleinr").rglob("*.py")}
    assert core and core <= scripts, core - scripts
    assert "CycleINRSR.py" in scripts
    assert "SCRIPT;CycleINRSR.py" in (build / "unittests").read_text()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_installs_models_and_sample_data_into_module_resources(tmp_path):
    """The top-level install rules, on a copy of the extension's CMakeLists with placeholder resources."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Empty.cmake").write_text("")
    src = tmp_path / "src"
    for sub in ("CycleINRSR", "CycleINRTrain", "Resources/Models", "Resources/SampleData"):
        (src / sub).mkdir(parents=True)
    shutil.copy(ROOT / "CMakeLists.txt", src / "CMakeLists.txt")
    (src / "CycleINRSR" / "CMakeLists.txt").write_text("")
    (src / "CycleINRTrain" / "CMakeLists.txt").write_text("")
    files = ["Models/cycleinr_paper.safetensors", "Models/cycleinr_paper.json", "Models/cycleinr_fast.safetensors",
             "Models/cycleinr_fast.json", "SampleData/CycleINRSampleChestCT5mm.nrrd"]
    for f in files:
        (src / "Resources" / f).write_bytes(b"placeholder")
    (src / "Resources" / "Models" / ".gitkeep").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    for cmd in (["cmake", "-S", str(src), "-B", str(build), f"-DSlicer_DIR={stub}"],
                ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    modules = "lib/Slicer-5.9/qt-scripted-modules/Resources"
    for f in files:
        assert (build / modules / f).is_file(), f  # build tree (Slicer run from the build folder)
        assert (prefix / modules / f).is_file(), f  # installed extension
    assert not (prefix / modules / "Models" / ".gitkeep").exists()
