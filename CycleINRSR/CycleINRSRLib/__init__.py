"""Slicer-side helpers of the CycleINR Super-Resolution module.

Submodules are imported explicitly by the module (nothing here) so that loading the module in Slicer
stays cheap: ``process`` and ``dependencies`` need only the standard library to import (``process``
finds the bundled models through the core's ``cycleinr.weights``, which loads numpy and SimpleITK but
never torch, when asked); ``volumes``, ``upsampling`` and ``layout`` need MRML (Slicer or PyPI's
slicer-core) and ``cycleinr.geometry``.
No submodule imports Qt.
"""
