"""Volume nodes <-> numpy arrays, ITK geometry and temporary NRRD files.

Pure MRML + numpy: no Qt, so it runs both inside Slicer and with PyPI's ``slicer-core``.

Conventions
-----------
* Arrays are (k, j, i) = (z, y, x), as ``slicer.util.arrayFromVolume`` returns them; axis 0 is the
  slice axis K whatever its physical orientation (axial, flipped, oblique, sagittal...).
* ``cycleinr.geometry.Geometry`` is ITK's view: (x, y, z) spacing and origin in LPS, row-major
  direction (row = physical axis, column = index axis). Slicer stores RAS, so the L/R and A/P rows of
  origin and direction change sign; spacing and the S row are shared.
* A volume under a parent transform is handled in its local (untransformed) coordinates; the output
  node is put under the same transform, so it overlays the input exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid

import numpy as np
import slicer
import vtk

from cycleinr.geometry import Geometry  # numpy only: the cycleinr package loads torch lazily

# RAS <-> LPS: negate the first two physical axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------- geometry

def ijkToRASDirections(node) -> np.ndarray:
    """3x3 direction matrix of a volume node: column c is the RAS unit vector of index axis c."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def geometryFromNode(node) -> Geometry:
    """ITK (LPS) geometry of a volume node, from its IJKToRAS spacing, origin and directions."""
    spacing = tuple(float(s) for s in node.GetSpacing())
    originLPS = _RAS_TO_LPS @ np.asarray(node.GetOrigin(), dtype=float)
    directionLPS = _RAS_TO_LPS @ ijkToRASDirections(node)
    return Geometry(spacing=spacing, origin=tuple(float(v) for v in originLPS),
                    direction=tuple(float(v) for v in directionLPS.reshape(-1)))


def applyGeometryToNode(node, geometry: Geometry) -> None:
    """Set a volume node's IJKToRAS (spacing, origin, directions) from an ITK (LPS) geometry."""
    directionRAS = _RAS_TO_LPS @ np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    originRAS = _RAS_TO_LPS @ np.asarray(geometry.origin, dtype=float)
    node.SetSpacing(*[float(s) for s in geometry.spacing])
    node.SetOrigin(*[float(v) for v in originRAS])
    node.SetIJKToRASDirections(*[float(v) for v in directionRAS.reshape(-1)])


def sliceSpacing(node) -> float:
    """Spacing along K (array axis 0) in mm: the slice spacing that CycleINR upsamples."""
    return float(node.GetSpacing()[2])


def ijkToRASMatrix(node) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a volume node as numpy (local coordinates, no parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sliceCenterRAS(node, k: float) -> np.ndarray:
    """RAS position (local coordinates) of the centre of voxel (0, 0, k): where slice k starts."""
    return (ijkToRASMatrix(node) @ np.array([0.0, 0.0, float(k), 1.0]))[:3]


def kAxisRAS(node) -> np.ndarray:
    """Unit RAS vector of the slice axis K."""
    return ijkToRASDirections(node)[:, 2].copy()


# ------------------------------------------------------------------------------------ node <-> array

def arrayAndGeometryFromNode(node) -> tuple[np.ndarray, Geometry]:
    """(k, j, i) copy of the voxels and the ITK (LPS) geometry of a scalar volume node."""
    if node is None or node.GetImageData() is None:
        raise ValueError("the input volume has no image data; load or select a volume first")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"'{node.GetName()}' has {node.GetImageData().GetNumberOfScalarComponents()} "
                         "components per voxel; CycleINR needs a scalar (grey-level) volume")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    return array, geometryFromNode(node)


def formatThickness(thickness: float) -> str:
    """Short mm label for node names: 1.0 -> '1', 1.25 -> '1.25', 0.625 -> '0.625'."""
    return f"{float(thickness):.4g}"


def outputNodeName(inputName: str, targetThickness: float) -> str:
    """Name of the upsampled node: '<input name>_<t>mm'."""
    return f"{inputName}_{formatThickness(targetThickness)}mm"


def _addVolumeNodeLike(inputNode, outputNode, name: str):
    """Add a filled (not yet in scene) volume node next to the input: name, transform, display."""
    scene = inputNode.GetScene()
    if scene is None:
        raise ValueError("the input volume is not in a scene")
    outputNode.SetName(name)
    scene.AddNode(outputNode)
    try:
        transformId = inputNode.GetTransformNodeID()
        if transformId:
            outputNode.SetAndObserveTransformNodeID(transformId)
        outputNode.CreateDefaultDisplayNodes()
        copyDisplaySettings(inputNode, outputNode)
        placeNextToInSubjectHierarchy(inputNode, outputNode)
    except Exception:
        removeVolumeNode(outputNode)          # a failed result adds nothing, not half a node
        raise
    return outputNode


def removeVolumeNode(node) -> None:
    """Take a volume node out of its scene with the display and storage nodes made for it, which
    ``vtkMRMLScene.RemoveNode`` leaves behind, and its subject-hierarchy item."""
    scene = node.GetScene()
    if scene is None:
        return
    owned = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    owned += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(node) if shNode is not None else 0
    if item:
        shNode.RemoveItem(item, False, False)     # the item only: the node is removed below
    scene.RemoveNode(node)
    for other in owned:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)


def placeNextToInSubjectHierarchy(inputNode, outputNode) -> None:
    """Put the output in the input's subject-hierarchy folder (its DICOM study, typically) instead of the
    scene's top level. Creates the output's item if the scene has none yet (outside the Slicer application
    nothing creates items automatically)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(inputNode.GetScene())
    if shNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputNode)
    if not inputItem:
        return
    parent = shNode.GetItemParent(inputItem)
    outputItem = shNode.GetItemByDataNode(outputNode)
    if outputItem:
        shNode.SetItemParent(outputItem, parent)
    else:
        shNode.CreateItem(parent, outputNode)


def copyDisplaySettings(inputNode, outputNode) -> None:
    """Same window/level and colour table as the input, so the two compare at a glance."""
    src, dst = inputNode.GetDisplayNode(), outputNode.GetDisplayNode()
    if src is None or dst is None:
        return
    if src.GetColorNodeID():
        dst.SetAndObserveColorNodeID(src.GetColorNodeID())
    dst.SetAutoWindowLevel(src.GetAutoWindowLevel())
    if not src.GetAutoWindowLevel():
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())


def createUpsampledVolumeNode(inputNode, array: np.ndarray, targetSpacing: float, name: str | None = None):
    """NEW scalar volume node holding ``array`` (k, j, i) with the input's origin and IJK->RAS directions,
    its I/J spacing and ``targetSpacing`` along K. The input node is never modified."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"upsampled array must be 3D (k, j, i), got shape {array.shape}")
    inputDims = inputNode.GetImageData().GetDimensions()  # (i, j, k)
    if (array.shape[2], array.shape[1]) != (inputDims[0], inputDims[1]):
        raise ValueError(f"upsampled array slices are {array.shape[2]}x{array.shape[1]} but the input's are "
                         f"{inputDims[0]}x{inputDims[1]}; only the slice axis may change")
    geometry = geometryFromNode(inputNode).with_slice_spacing(float(targetSpacing))
    outputNode = slicer.vtkMRMLScalarVolumeNode()
    applyGeometryToNode(outputNode, geometry)
    slicer.util.updateVolumeFromArray(outputNode, np.ascontiguousarray(array))
    if name is None:
        name = outputNodeName(inputNode.GetName(), targetSpacing)
    return _addVolumeNodeLike(inputNode, outputNode, name)


# ---------------------------------------------------------------------------------- node <-> file

def writeVolumeToFile(node, path: str) -> str:
    """Write a volume node's voxels and local IJK->RAS geometry to a NRRD file (for the background
    process). Uses a standalone storage node, so the scene and the node's own storage stay untouched."""
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(node):
        raise OSError(f"could not write '{node.GetName()}' to {path}")
    return str(path)


def readVolumeFromFile(path: str):
    """Read a NRRD file into a NEW scalar volume node that is not yet in any scene.

    The NRRD storage node keeps the file's IJK order and directions (unlike the archetype reader used by
    ``slicer.util.loadVolume``, which may reverse a negative slice axis), so slice k of the file is
    slice k of the node."""
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    if not os.path.isfile(path) or not storage.ReadData(node) or node.GetImageData() is None:
        raise OSError(f"could not read the upsampled volume from {path}")
    return node


def addResultVolumeNode(inputNode, path: str, targetSpacing: float, name: str | None = None,
                        tolerance: float = 1e-3):
    """Load the background process's result file as a NEW node next to the input.

    Checks that the file has the geometry the contract promises (input origin and directions, input I/J
    spacing, ``targetSpacing`` along K, input in-plane size); a mismatch raises instead of silently
    placing the result somewhere else."""
    resultNode = readVolumeFromFile(path)
    expected = geometryFromNode(inputNode).with_slice_spacing(float(targetSpacing))
    got = geometryFromNode(resultNode)
    problems = []
    if not np.allclose(got.spacing, expected.spacing, rtol=tolerance, atol=tolerance):
        problems.append(f"spacing {got.spacing} != {expected.spacing}")
    if not np.allclose(got.origin, expected.origin, atol=tolerance * max(1.0, max(expected.spacing))):
        problems.append(f"origin {got.origin} != {expected.origin}")
    if not np.allclose(got.direction, expected.direction, atol=tolerance):
        problems.append(f"direction {got.direction} != {expected.direction}")
    inputDims = inputNode.GetImageData().GetDimensions()
    gotDims = resultNode.GetImageData().GetDimensions()
    if tuple(gotDims[:2]) != tuple(inputDims[:2]):
        problems.append(f"slice size {gotDims[:2]} != {inputDims[:2]}")
    if problems:
        raise ValueError("the upsampled volume does not line up with the input: " + "; ".join(problems))
    # Use the input's exact geometry (the file's differs only by float rounding).
    applyGeometryToNode(resultNode, expected)
    if name is None:
        name = outputNodeName(inputNode.GetName(), targetSpacing)
    return _addVolumeNodeLike(inputNode, resultNode, name)


def makeTemporaryFolder(prefix: str = "CycleINR-") -> str:
    """A new, empty folder of its own: in Slicer's temporary folder (``slicer.util.tempDirectory``; the
    random part keeps two runs started in the same millisecond apart), else (slicer-core) the system's."""
    if hasattr(slicer, "app"):
        return slicer.util.tempDirectory(key=f"{prefix}{uuid.uuid4().hex[:8]}-")
    return tempfile.mkdtemp(prefix=prefix)


class TemporaryFolder:
    """A private temporary folder for the input/output/report files of one run; ``cleanup()`` removes it
    (idempotent). Usable as a context manager."""

    def __init__(self, prefix: str = "CycleINR-"):
        self.path = makeTemporaryFolder(prefix)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cleanup(self, attempts: int = 10) -> None:
        # Retried briefly: on Windows a just-killed process may hold its files open for a moment.
        for attempt in range(attempts):
            if not (self.path and os.path.isdir(self.path)):
                return
            shutil.rmtree(self.path, ignore_errors=True)
            if os.path.isdir(self.path) and attempt < attempts - 1:
                time.sleep(0.1)
        if os.path.isdir(self.path):
            logging.warning("CycleINR: could not remove the temporary folder %s", self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False
