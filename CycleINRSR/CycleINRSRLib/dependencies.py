"""Python packages the background process needs, installed into Slicer's Python on first use.

Nothing is installed or imported at module import time. ``ensureDependencies()`` is called when the
user clicks Apply (and by the self-test): torch through the PyTorch extension's PyTorchUtils (it picks
a build that matches the NVIDIA driver), the rest with ``slicer.util.pip_install``, each after the user
confirmed. ``missingPackages`` is pure and tested with pytest.
"""

from __future__ import annotations

import importlib.util
import logging

# import name -> pip requirement (the core's needs besides torch; numpy and SimpleITK ship with Slicer)
REQUIREMENTS = {
    "numpy": "numpy",
    "SimpleITK": "SimpleITK",
    "safetensors": "safetensors>=0.4",
    "pywt": "PyWavelets>=1.4",
    "skimage": "scikit-image>=0.21",
    "scipy": "scipy",
}


def isInstalled(importName: str) -> bool:
    """True if the module can be found, without importing it (cheap, no side effects)."""
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingPackages(requirements: dict | None = None) -> list[str]:
    """pip requirements of the packages that are not installed."""
    requirements = REQUIREMENTS if requirements is None else requirements
    return [req for name, req in requirements.items() if not isInstalled(name)]


def torchInstalled() -> bool:
    return isInstalled("torch")


def _confirm(text: str) -> bool:
    import slicer

    if slicer.app.commandOptions().testingEnabled:
        return True
    return slicer.util.confirmOkCancelDisplay(text, "CycleINR: install Python packages")


def ensureTorch(askConfirmation: bool = True) -> bool:
    """Make torch importable in Slicer's Python via the PyTorch extension. False if the user declined or
    the PyTorch extension is missing."""
    if torchInstalled():
        return True
    import slicer

    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay(
            "CycleINR needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, restart "
            "Slicer, then try again.")
        return False
    if askConfirmation and not _confirm(
            "CycleINR needs PyTorch, which is not installed yet. Download and install it now (about 1-3 GB; "
            "this can take several minutes)?"):
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    if torch is None:
        slicer.util.errorDisplay("PyTorch could not be installed; see the Python console for details.")
        return False
    return True


def ensurePackages(askConfirmation: bool = True) -> bool:
    """pip-install the other missing packages (after confirmation). False if declined."""
    missing = missingPackages()
    if not missing:
        return True
    import slicer

    if askConfirmation and not _confirm(
            "CycleINR needs these Python packages, which are not installed yet:\n  " + "\n  ".join(missing)
            + "\nInstall them now?"):
        return False
    logging.info("CycleINR: installing %s", " ".join(missing))
    with slicer.util.WaitCursor():
        slicer.util.pip_install(" ".join(missing))  # a string works with every Slicer 5.x
    importlib.invalidate_caches()
    still = missingPackages()
    if still:
        slicer.util.errorDisplay("Could not install: " + ", ".join(still))
        return False
    return True


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """torch (via PyTorchUtils) and the other packages; True when all are available."""
    return ensureTorch(askConfirmation) and ensurePackages(askConfirmation)
