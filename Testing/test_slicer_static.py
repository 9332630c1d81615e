"""Static checks of the Slicer module: .ui <-> Python names, parameter node bindings, undefined names
(ruff), CMake file lists (and a CMake configure against a stub Slicer package when cmake is available),
icons. The module file needs Slicer's Qt, so it is only parsed here, never imported."""

import ast
import json
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


def test_model_choice_defaults_to_automatic_by_device():
    """The panel's first and default model choice is Automatic ('auto', which the core resolves by device);
    the explicit bundled models and a weights file stay; the model the CLI chose reaches the status line."""
    members = [(t.targets[0].id, ast.literal_eval(t.value)) for t in class_node("ModelChoice").body
               if isinstance(t, ast.Assign)]
    assert members == [("AUTO", "auto"), ("DEFAULT", "default"), ("FAST", "fast"), ("FILE", "file")]
    assert '"auto": _("Automatic (by device)")' in module_source()
    fields = {t.target.id: ast.unparse(t.value) for t in class_node("CycleINRSRParameterNode").body
              if isinstance(t, ast.AnnAssign) and t.value is not None}
    assert fields["modelChoice"] == "ModelChoice.AUTO"
    widget = ast.unparse(class_node("CycleINRSRWidget"))
    assert "onLine=self.onJobLine" in widget and "cycleinrProcess.parseModelLine(line)" in widget
    assert "self.logic.describeModel(p, self._deviceInfo)" in widget
    logic = {f.name: f for f in class_node("CycleINRSRLogic").body if isinstance(f, ast.FunctionDef)}
    assert ast.unparse(logic["upsample"].args.defaults[0]) == "'auto'"
    assert "cycleinrProcess.autoModel(" in ast.unparse(logic["describeModel"])


def test_every_self_test_method_stands_alone():
    """ctest runs each test_* method alone, in alphabetical order: each prepares dependencies and the
    model itself before it runs the module (the tier-3 test itself needs a real Slicer)."""
    methods = {f.name: f for f in class_node("CycleINRSRTest").body if isinstance(f, ast.FunctionDef)}
    tests = [name for name in methods if name.startswith("test_")]
    assert len(tests) >= 3
    prepare = ast.unparse(methods["_prepare"])
    assert "ensureDependencies(askConfirmation=False)" in prepare and "bundledModelFile('fast')" in prepare
    for name in tests:
        calls = [ast.unparse(n.func) for n in ast.walk(methods[name]) if isinstance(n, ast.Call)]
        assert "self._prepare" in calls, name
        runs = [i for i, c in enumerate(calls) if c.endswith((".upsample", ".startUpsample"))]
        assert runs and calls.index("self._prepare") < min(runs), name


def test_old_slicer_is_told_the_minimum_version():
    """Slicer 5.8 has Python 3.9: the module and the CLI script must parse there and stop with a message
    before the first class (whose annotations need Python 3.10) is defined."""
    for path in (MODULE_PY, ROOT / "CycleINRTrain" / "CycleINRTrain.py"):
        ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    tree = ast.parse(module_source())
    first_class = next(i for i, n in enumerate(tree.body) if isinstance(n, ast.ClassDef))
    checks = [i for i, n in enumerate(tree.body) if isinstance(n, ast.If) and "MINIMUM_SLICER_VERSION" in ast.unparse(n)
              and any(isinstance(m, ast.Raise) for m in ast.walk(n))]
    assert checks and checks[0] < first_class
    assert "MINIMUM_SLICER_VERSION = (5, 10)" in module_source()
    assert "5.10" in (ROOT / "CMakeLists.txt").read_text(encoding="utf-8") and "5.10" in (ROOT / "README.md").read_text(encoding="utf-8")
    for path in LIB.glob("*.py"):  # imported before the check: no runtime 3.10+ annotations
        text = path.read_text(encoding="utf-8")
        ast.parse(text, feature_version=(3, 9))
        assert "from __future__ import annotations" in text or "|" not in text, path.name


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
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "CycleINRSR") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    expected = {"CycleINRSR.py"} | {f"CycleINRSRLib/{p.name}" for p in LIB.glob("*.py")}
    assert expected <= scripts, expected - scripts
    for s in scripts - {"${_cycleinr_core_files}"}:
        assert (MODULE / s).is_file(), s
    assert "${_cycleinr_core_files}" in scripts
    assert re.search(r'file\(GLOB_RECURSE _cycleinr_core_files .*"\$\{CMAKE_CURRENT_SOURCE_DIR\}/cycleinr/\*\.py"',
                     text, re.S)
    resources = {s.replace("${MODULE_NAME}", "CycleINRSR") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    assert resources == {"Resources/Icons/CycleINRSR.png", "Resources/UI/CycleINRSR.ui", "Resources/requirements.txt"}
    for r in resources:
        assert (MODULE / r).is_file(), r
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)


def cmake_value(text: str, var: str) -> str:
    match = re.search(rf"set\({var} \"([^\"]+)\"\)", text)
    assert match, var
    return match.group(1)


RAW_URL = "https://raw.githubusercontent.com/CycleINR/SlicerCycleINR/main/"


def test_extension_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        cmake_value(text, var)
    # "Firstname Lastname (Organization)", comma-separated
    for contributor in cmake_value(text, "EXTENSION_CONTRIBUTORS").split(","):
        assert re.fullmatch(r"\s*[^(),]+ \([^(),]+\)\s*", contributor), contributor
    assert "Slicer 5.10" in cmake_value(text, "EXTENSION_DESCRIPTION")
    # icon and screenshots name files that exist in this repository (at its planned public address)
    urls = [cmake_value(text, "EXTENSION_ICONURL")] + cmake_value(text, "EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        assert url.startswith(RAW_URL), url
        assert (ROOT / url[len(RAW_URL):]).is_file(), url
    assert 'set(EXTENSION_CATEGORY "Filtering")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(CycleINRSR)",
             "add_subdirectory(CycleINRTrain)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    # models and sample data are copied into the module's build folder, which the module macro installs
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/Resources" in text and not re.search(r"^\s*install\(", text, re.M)


def test_extensions_index_entry():
    """What a pull request to Slicer/ExtensionsIndex adds: <project name>.json (catalog schema v1.0.2)."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\((\w+)\)", text).group(1)
    path = ROOT / "Utilities" / "ExtensionsIndex" / f"{project}.json"
    entry = json.loads(path.read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["build_dependencies"] == ["PyTorch"] == cmake_value(text, "EXTENSION_DEPENDS").split()
    assert entry["category"] == cmake_value(text, "EXTENSION_CATEGORY")
    assert entry["scm_url"].startswith("https://github.com/")
    repository = entry["scm_url"].removesuffix(".git").rstrip("/").rsplit("/", 1)[1]
    assert repository.startswith("Slicer") and not project.startswith("Slicer")
    assert cmake_value(text, "EXTENSION_HOMEPAGE").startswith(entry["scm_url"].removesuffix(".git"))
    assert 1 <= entry.get("tier", 1) <= 5


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
  # as ctkMacroCompilePythonScript (called with NO_INSTALL_SUBDIR) does: the whole build folder is installed
  install(DIRECTORY "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/"
    DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
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
    scripts = set((build / "CycleINRSR.scripts").read_text(encoding="utf-8").split(";"))
    core = {f"cycleinr/{p.relative_to(MODULE / 'cycleinr').as_posix()}" for p in (MODULE / "cycleinr").rglob("*.py")}
    assert core and core <= scripts, core - scripts
    assert "CycleINRSR.py" in scripts
    assert "SCRIPT;CycleINRSR.py" in (build / "unittests").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_installs_models_and_sample_data_into_module_resources(tmp_path):
    """The top-level rules, on a copy of the extension's CMakeLists with placeholder resources: weights and
    sample data installed once each (by the module's folder install), the model card, its figures and
    make_sample.py not at all."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Empty.cmake").write_text("")
    src = tmp_path / "src"
    for sub in ("CycleINRSR", "CycleINRTrain", "Resources/Models", "Resources/SampleData"):
        (src / sub).mkdir(parents=True)
    shutil.copy(ROOT / "CMakeLists.txt", src / "CMakeLists.txt")
    (src / "CycleINRSR" / "CMakeLists.txt").write_text("slicerMacroBuildScriptedModule(NAME CycleINRSR SCRIPTS m.py)\n")
    (src / "CycleINRSR" / "m.py").write_text("")
    (src / "CycleINRTrain" / "CMakeLists.txt").write_text("")
    not_shipped = ["Models/README.md", "Models/figures/x2_views.png", "SampleData/make_sample.py"]
    (src / "Resources" / "Models" / "figures").mkdir()
    for f in not_shipped:
        (src / "Resources" / f).write_text("repository only")
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
    install_log = result.stdout
    modules = "lib/Slicer-5.9/qt-scripted-modules/Resources"
    for f in files:
        assert (build / modules / f).is_file(), f  # build tree (Slicer run from the build folder)
        assert (prefix / modules / f).is_file(), f  # installed extension
        assert install_log.count(f"{modules}/{f}") == 1, (f, install_log)  # installed once
    for f in not_shipped + ["Models/.gitkeep"]:
        assert not (build / modules / f).exists() and not (prefix / modules / f).exists(), f
