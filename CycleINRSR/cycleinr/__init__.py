"""CycleINR: arbitrary-scale super-resolution of CT/MR volumes along the slice axis (CVPR 2024).

The core package of the 3D Slicer extension; it imports no Slicer, Qt or VTK code. Names are loaded
lazily, so ``import cycleinr.geometry`` (the Slicer panel's slice-count preview) does not load torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Cancelled": "inference", "upsample": "inference", "CycleINR": "model", "ModelConfig": "config",
    "preset": "config", "Geometry": "geometry", "UpsampleResult": "geometry", "load_model": "weights",
    "save_model": "weights", "adapt_model": "adapt",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cycleinr' has no attribute {name!r}")
