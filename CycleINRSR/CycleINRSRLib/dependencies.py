"""Python packages the background process needs, installed into Slicer's Python on first use.

Nothing is installed or imported at module import time. ``ensureDependencies()`` is called when the
user clicks Apply (and by the self-test). It asks once, listing everything that is missing, then installs
torch (``TORCH_REQUIREMENT``) through the PyTorch extension's PyTorchUtils, which picks a build that
matches the NVIDIA driver, and the packages of ``Resources/requirements.txt`` with
``slicer.packaging.pip_ensure`` (Slicer 5.12+) or ``slicer.util.pip_install`` (Slicer 5.10). Without the
PyTorch extension it offers to install that extension, as SlicerNNUnet does. Installed versions are read
from package metadata, never by importing, so the checks are cheap and tested with pytest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re

from .process import corePackageParent

TORCH_REQUIREMENT = ">=2.1"
PYTORCH_EXTENSION = "PyTorch"
TITLE = "CycleINR: install Python packages"


# ----------------------------------------------------------------------------- checks (no Slicer needed)

def requirementsFile() -> str:
    """The module's requirements.txt (pip requirements besides torch; numpy and SimpleITK ship with Slicer)."""
    return os.path.join(corePackageParent(), "Resources", "requirements.txt")


def readRequirements(path: str | None = None) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    with open(path or requirementsFile(), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith("-")]


def splitRequirement(requirement: str) -> tuple[str, str]:
    """'scikit-image>=0.21' -> ('scikit-image', '>=0.21')."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1), match.group(2).strip()


def installedVersion(distribution: str) -> str | None:
    """Version of an installed distribution from its metadata (nothing is imported), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versionSatisfies(version: str, specifier: str) -> bool:
    """True if ``version`` (e.g. '2.5.1+cu121') meets ``specifier`` (e.g. '>=2.1')."""
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # no 'packaging': compare the numeric release of a single '>=' only
        def release(text):
            return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])

        match = re.fullmatch(r">=\s*([\d.]+)", specifier.strip())
        return match is None or release(version) >= release(match.group(1))
    return SpecifierSet(specifier).contains(version, prereleases=True)


def requirementSatisfied(requirement: str) -> bool:
    name, specifier = splitRequirement(requirement)
    version = installedVersion(name)
    return version is not None and versionSatisfies(version, specifier)


def missingRequirements(requirements: list[str] | None = None) -> list[str]:
    """The requirements (default: requirements.txt) that are not installed or too old."""
    requirements = readRequirements() if requirements is None else requirements
    return [req for req in requirements if not requirementSatisfied(req)]


def torchMissing() -> str | None:
    """Why torch must be installed (missing or older than TORCH_REQUIREMENT), or None if it is fine."""
    version = installedVersion("torch")
    if version is None:
        return "PyTorch is not installed"
    if not versionSatisfies(version, TORCH_REQUIREMENT):
        return f"PyTorch {version} is installed; CycleINR needs torch{TORCH_REQUIREMENT}"
    return None


def confirmationText(torchReason: str | None, packages: list[str]) -> str:
    """The one question asked before installing anything."""
    items = []
    if torchReason:
        items.append(f"torch{TORCH_REQUIREMENT} ({torchReason}; about 1-3 GB, through the PyTorch extension)")
    items += packages
    return ("CycleINR needs these Python packages, which will be downloaded and installed into Slicer's Python "
            "now (this can take several minutes):\n  " + "\n  ".join(items) + "\nContinue?")


# ------------------------------------------------------------------------------- installing (Slicer only)

def _confirm(text: str) -> bool:
    import slicer

    if slicer.app.commandOptions().testingEnabled:
        return True
    return slicer.util.confirmOkCancelDisplay(text, TITLE)


def _pyTorchUtilsLogic():
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()


def offerPyTorchExtension(askConfirmation: bool = True) -> bool:
    """The PyTorch extension is missing: offer to install it from the extensions server (Slicer then asks
    to restart). Returns False: the caller cannot go on in this session."""
    import slicer

    manager = slicer.app.extensionsManagerModel() if hasattr(slicer.app, "extensionsManagerModel") else None
    if manager is not None and manager.isExtensionInstalled(PYTORCH_EXTENSION):
        slicer.util.errorDisplay("The PyTorch extension is installed but not loaded yet: restart Slicer, then "
                                 "try again.", windowTitle=TITLE)
        return False
    manual = ("Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, then try again.")
    if manager is None or slicer.app.commandOptions().testingEnabled:
        slicer.util.errorDisplay("CycleINR needs PyTorch, which the PyTorch extension installs. " + manual,
                                 windowTitle=TITLE)
        return False
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "CycleINR needs PyTorch, which the PyTorch extension installs, and that extension is not installed. "
            "Install it now? Slicer has to restart afterwards; then click Apply again.", TITLE):
        return False
    if not askConfirmation:  # Slicer's extensions manager asks (install? restart?) itself
        if not manager.installExtensionFromServer(PYTORCH_EXTENSION):
            slicer.util.errorDisplay("Could not install the PyTorch extension. " + manual, windowTitle=TITLE)
        return False
    interactive = manager.interactive
    manager.interactive = False  # the user said yes above: the manager would ask the same question again
    try:
        installed = manager.installExtensionFromServer(PYTORCH_EXTENSION, False)  # False: no restart yet
    finally:
        manager.interactive = interactive
    if not installed:
        slicer.util.errorDisplay("Could not install the PyTorch extension. " + manual, windowTitle=TITLE)
    elif slicer.util.confirmOkCancelDisplay("The PyTorch extension is installed. Restart Slicer now? "
                                            "Then click Apply again.", TITLE):
        slicer.util.restart()
    return False


def installPackages(packages: list[str]) -> None:
    """pip-install: ``slicer.packaging.pip_ensure`` with the requirements file on Slicer 5.12+, else
    ``slicer.util.pip_install``. Raises on failure."""
    import slicer

    try:
        import slicer.packaging as slicerPackaging

        pipEnsure = slicerPackaging.pip_ensure
    except (ImportError, AttributeError):  # Slicer 5.10
        pipEnsure = None
    logging.info("CycleINR: installing %s", " ".join(packages))
    if pipEnsure is not None:
        pipEnsure(slicerPackaging.load_requirements(requirementsFile()), prompt_install=False, requester="CycleINR",
                  skip_in_testing=False)
    else:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(" ".join(packages))


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """torch (via PyTorchUtils) and the other packages; True when all are available. One confirmation."""
    torchReason, packages = torchMissing(), missingRequirements()
    if torchReason is None and not packages:
        return True
    import slicer

    torchLogic = _pyTorchUtilsLogic() if torchReason else None
    if torchReason and torchLogic is None:
        return offerPyTorchExtension(askConfirmation)
    if askConfirmation and not _confirm(confirmationText(torchReason, packages)):
        return False
    try:
        if torchReason and torchLogic.installTorch(askConfirmation=False,
                                                   torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise RuntimeError("PyTorchUtils did not install PyTorch")
        if packages:
            installPackages(packages)
    except Exception as exc:  # noqa: BLE001 - shown to the user, details in the log
        logging.exception("CycleINR: installing Python packages failed")
        slicer.util.errorDisplay(f"Installing Python packages failed: {exc}\nSee the application log for details.",
                                 windowTitle=TITLE)
        return False
    importlib.invalidate_caches()
    still = ([f"torch{TORCH_REQUIREMENT}"] if torchMissing() else []) + missingRequirements()
    if still:
        slicer.util.errorDisplay("Could not install: " + ", ".join(still), windowTitle=TITLE)
        return False
    return True
