"""CycleINR: arbitrary-scale super-resolution of CT/MR volumes along the slice axis (CVPR 2024).

The core package of the 3D Slicer extension; it imports no Slicer, Qt or VTK code.
"""

from .config import ModelConfig, preset
from .geometry import Geometry, UpsampleResult
from .inference import Cancelled, upsample
from .model import CycleINR
from .weights import load_model, save_model

__version__ = "0.1.0"
__all__ = ["Cancelled", "CycleINR", "Geometry", "ModelConfig", "UpsampleResult", "load_model", "preset",
           "save_model", "upsample"]
