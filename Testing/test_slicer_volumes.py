"""Tier 2: CycleINRSRLib.volumes and CycleINRSRLib.layout against REAL MRML from PyPI's slicer-core.

slicer-core's ``import slicer`` gives the compiled MRML libraries (vtkMRMLScene, vtkMRMLScalarVolumeNode,
storage, layout, plot and table nodes) and Slicer's own ``slicer.util`` (arrayFromVolume,
updateVolumeFromArray), but no application, Qt, ``slicer.mrmlScene`` or ScriptedLoadableModule. So each
test makes its own vtkMRMLScene; the module file CycleINRSR.py (Qt) is exercised by the tier-3 self-test.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # PyPI slicer-core (real MRML, no Qt); Testing/run_tests.sh installs it, a missing one fails

assert hasattr(slicer, "vtkMRMLScene"), "this 'slicer' module has no MRML classes: install PyPI slicer-core"
import vtk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CycleINRSR"))

from cycleinr.geometry import Geometry, output_slice_count  # noqa: E402
from cycleinr.volume_io import write_volume  # noqa: E402
from CycleINRSRLib import layout, volumes  # noqa: E402

try:
    from cycleinr.baselines import interpolate as _core_interpolate
except ImportError:  # pragma: no cover - the core may not have baselines yet
    _core_interpolate = None


def linear_upsample(array: np.ndarray, spacing_xyz, target: float) -> np.ndarray:
    """Upsample along axis 0 onto the contract's grid (core baseline if present, else numpy)."""
    if _core_interpolate is not None:
        return _core_interpolate(array, spacing_xyz, target_spacing=target, method="linear").array
    n = array.shape[0]
    m = output_slice_count(n, spacing_xyz[2], target)
    pos = np.minimum(np.arange(m) * target / spacing_xyz[2], n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo)[:, None, None]
    a = array.astype(np.float32)
    return (1 - w) * a[lo] + w * a[hi]


def rotation(ax, ay, az) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# RAS direction matrices (columns = I, J, K axes)
KINDS = {
    "axial": np.eye(3),
    # slice order reversed: K points inferior (as many scanners store head-first-supine series)
    "flipped": np.diag([1.0, 1.0, -1.0]),
    # oblique: K is far from S/I (mostly anterior), with in-plane rotation
    "oblique": rotation(math.radians(75), math.radians(20), math.radians(-30)),
}
SPACING = (0.7, 0.8, 5.0)
ORIGIN = (-12.5, 30.25, 81.0)


def make_volume(scene, kind: str, shape=(6, 9, 11), name=None, dtype=np.int16):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1500, size=shape).astype(dtype)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or f"CT_{kind}")
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(*SPACING)
    node.SetOrigin(*ORIGIN)
    node.SetIJKToRASDirections(*KINDS[kind].reshape(-1))
    return node, array


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


# ---------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("kind", list(KINDS))
def test_geometry_from_node_is_lps_of_ijk_to_ras(scene, kind):
    node, _ = make_volume(scene, kind)
    g = volumes.geometryFromNode(node)
    assert g.spacing == pytest.approx(SPACING)
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(g.origin, flip @ np.array(ORIGIN))
    np.testing.assert_allclose(np.reshape(g.direction, (3, 3)), flip @ KINDS[kind], atol=1e-12)
    # same physical point for any index: Geometry (LPS) vs node IJKToRAS (RAS)
    for ijk in [(0, 0, 0), (3, 2, 1), (10, 8, 5), (1.5, 0.25, 2.75)]:
        lps = g.index_to_physical(ijk)
        ras = ijk_to_ras(node) @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(flip @ lps, ras[:3], atol=1e-9)
    # round trip
    other = slicer.vtkMRMLScalarVolumeNode()
    volumes.applyGeometryToNode(other, g)
    np.testing.assert_allclose(ijk_to_ras(other), ijk_to_ras(node), atol=1e-12)


def test_array_and_geometry_is_a_copy(scene):
    node, array = make_volume(scene, "axial")
    got, g = volumes.arrayAndGeometryFromNode(node)
    np.testing.assert_array_equal(got, array)
    got[:] = 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    assert isinstance(g, Geometry)


def test_output_name():
    assert volumes.outputNodeName("chest", 1.0) == "chest_1mm"
    assert volumes.outputNodeName("chest", 1.25) == "chest_1.25mm"
    assert volumes.outputNodeName("CT 5mm", 0.625) == "CT 5mm_0.625mm"


# ------------------------------------------------------------------------- upsample -> new node

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("target", [1.0, 2.0, 1.7])
def test_upsampled_node_geometry(scene, kind, target):
    node, array = make_volume(scene, kind)
    before = ijk_to_ras(node)
    nodes_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")

    data, g = volumes.arrayAndGeometryFromNode(node)
    up = linear_upsample(data, g.spacing, target)
    out = volumes.createUpsampledVolumeNode(node, up, target)

    # a NEW node; input untouched
    assert out is not node and out.GetID() != node.GetID()
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == nodes_before + 1
    assert out.GetName() == f"CT_{kind}_{target:g}mm"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    np.testing.assert_allclose(ijk_to_ras(node), before)

    # spacing, origin, directions, slice count
    assert out.GetSpacing() == pytest.approx((SPACING[0], SPACING[1], target))
    assert out.GetOrigin() == pytest.approx(ORIGIN)
    np.testing.assert_allclose(volumes.ijkToRASDirections(out), KINDS[kind], atol=1e-12)
    m = output_slice_count(array.shape[0], SPACING[2], target)
    assert m == math.floor((array.shape[0] - 1) * SPACING[2] / target + 1e-6) + 1
    assert out.GetImageData().GetDimensions() == (array.shape[2], array.shape[1], m)

    # slice k of the output is at the RAS position of input index k * t / s along K
    out_m, in_m = ijk_to_ras(out), ijk_to_ras(node)
    for k in range(m):
        for ij in [(0, 0), (10, 8), (4, 3)]:
            expected = in_m @ np.array([ij[0], ij[1], k * target / SPACING[2], 1.0])
            np.testing.assert_allclose(out_m @ np.array([ij[0], ij[1], k, 1.0]), expected, atol=1e-9)
        np.testing.assert_allclose(volumes.sliceCenterRAS(out, k),
                                   volumes.sliceCenterRAS(node, k * target / SPACING[2]), atol=1e-9)
    # the last output slice never lies past the last input slice
    last = volumes.sliceCenterRAS(out, m - 1) - volumes.sliceCenterRAS(node, 0)
    assert np.dot(last, volumes.kAxisRAS(node)) <= (array.shape[0] - 1) * SPACING[2] + 1e-6

    # voxel values: output slices that fall on input slices equal them (linear interpolation)
    out_array = slicer.util.arrayFromVolume(out)
    for k in range(m):
        pos = k * target / SPACING[2]
        if abs(pos - round(pos)) < 1e-9:
            np.testing.assert_allclose(out_array[k], array[int(round(pos))], atol=1e-3)


def test_upsampled_node_rejects_changed_slice_size(scene):
    node, array = make_volume(scene, "axial")
    with pytest.raises(ValueError, match="only the slice axis"):
        volumes.createUpsampledVolumeNode(node, np.zeros((10, 4, 4), np.float32), 1.0)


def test_output_follows_parent_transform_and_display(scene):
    node, _ = make_volume(scene, "oblique")
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(400, 40)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    node.SetAndObserveTransformNodeID(transform.GetID())
    data, g = volumes.arrayAndGeometryFromNode(node)
    out = volumes.createUpsampledVolumeNode(node, linear_upsample(data, g.spacing, 2.5), 2.5)
    assert out.GetTransformNodeID() == transform.GetID()
    assert out.GetDisplayNode() is not None
    assert out.GetDisplayNode().GetWindow() == pytest.approx(400)
    assert out.GetDisplayNode().GetLevel() == pytest.approx(40)


# ------------------------------------------------------------------------------ node <-> file

@pytest.mark.parametrize("kind", list(KINDS))
def test_node_to_nrrd_to_simpleitk_same_physical_positions(scene, kind, tmp_path):
    node, array = make_volume(scene, kind)
    nodes_before = scene.GetNumberOfNodes()
    path = volumes.writeVolumeToFile(node, str(tmp_path / "in.nrrd"))
    assert scene.GetNumberOfNodes() == nodes_before  # writing does not touch the scene
    image = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetPixelID() == sitk.sitkInt16
    flip = np.diag([-1.0, -1.0, 1.0])
    for ijk in [(0, 0, 0), (10, 0, 0), (0, 8, 0), (0, 0, 5), (7, 3, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        ras = ijk_to_ras(node) @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(flip @ lps, ras[:3], atol=1e-6)
    # and the module's Geometry equals SimpleITK's view of the file
    g = volumes.geometryFromNode(node)
    np.testing.assert_allclose(image.GetSpacing(), g.spacing, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), g.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), g.direction, atol=1e-9)


@pytest.mark.parametrize("kind", list(KINDS))
def test_result_file_to_new_node(scene, kind, tmp_path):
    """What the background process writes (cycleinr.volume_io.write_volume with the output Geometry)
    comes back as a new node with the input's origin/directions and the target K spacing."""
    node, array = make_volume(scene, kind)
    data, g = volumes.arrayAndGeometryFromNode(node)
    target = 1.25
    up = linear_upsample(data, g.spacing, target).astype(np.int16)
    path = tmp_path / "out.nrrd"
    write_volume(path, up, g.with_slice_spacing(target))

    out = volumes.addResultVolumeNode(node, str(path), target)
    assert out.GetScene() is scene and out.GetName() == f"CT_{kind}_1.25mm"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), up)
    assert out.GetSpacing() == pytest.approx((SPACING[0], SPACING[1], target))
    np.testing.assert_allclose(out.GetOrigin(), ORIGIN, atol=1e-9)
    np.testing.assert_allclose(volumes.ijkToRASDirections(out), KINDS[kind], atol=1e-12)
    for k in range(up.shape[0]):
        np.testing.assert_allclose(volumes.sliceCenterRAS(out, k),
                                   volumes.sliceCenterRAS(node, k * target / SPACING[2]), atol=1e-6)


def test_result_file_with_wrong_geometry_adds_nothing(scene, tmp_path):
    node, _ = make_volume(scene, "flipped")
    data, g = volumes.arrayAndGeometryFromNode(node)
    up = linear_upsample(data, g.spacing, 1.0)
    wrong = Geometry(g.spacing[:2] + (1.0,), tuple(np.add(g.origin, (0, 0, 3.0))), g.direction)
    write_volume(tmp_path / "out.nrrd", up, wrong)
    n = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="origin"):
        volumes.addResultVolumeNode(node, str(tmp_path / "out.nrrd"), 1.0)
    assert scene.GetNumberOfNodes() == n
    with pytest.raises(OSError):
        volumes.addResultVolumeNode(node, str(tmp_path / "missing.nrrd"), 1.0)
    assert scene.GetNumberOfNodes() == n


@pytest.mark.parametrize("in_study", [True, False])
def test_remove_volume_node_leaves_the_scene_as_it_was(scene, tmp_path, in_study):
    """A result taken back out (a failure after it was loaded) leaves no display node, storage node or
    subject-hierarchy item behind; a failure while it is being added removes it the same way."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    node, _ = make_volume(scene, "oblique")
    if in_study:
        sh.CreateItem(sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "CT"), node)
    data, g = volumes.arrayAndGeometryFromNode(node)
    write_volume(tmp_path / "out.nrrd", linear_upsample(data, g.spacing, 1.0), g.with_slice_spacing(1.0))
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    items = sh.GetNumberOfItemChildren(sh.GetSceneItemID(), True)
    out = volumes.addResultVolumeNode(node, str(tmp_path / "out.nrrd"), 1.0)
    assert out.GetNumberOfDisplayNodes() >= 1 and scene.GetNumberOfNodes() > len(before)
    volumes.removeVolumeNode(out)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
    assert sh.GetNumberOfItemChildren(sh.GetSceneItemID(), True) == items and not sh.GetItemByDataNode(out)

    def broken(inputNode, outputNode):
        raise RuntimeError("display settings could not be copied")

    original, volumes.copyDisplaySettings = volumes.copyDisplaySettings, broken
    try:
        with pytest.raises(RuntimeError, match="display settings"):
            volumes.addResultVolumeNode(node, str(tmp_path / "out.nrrd"), 1.0)
    finally:
        volumes.copyDisplaySettings = original
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before


def test_temporary_folder_cleanup():
    with volumes.TemporaryFolder() as tmp:
        Path(tmp.file("a.nrrd")).write_text("x")
        path = tmp.path
    assert not Path(path).exists()
    tmp.cleanup()  # idempotent
    # two folders made at the same moment are distinct (in Slicer they come from slicer.util.tempDirectory)
    first, second = volumes.TemporaryFolder(), volumes.TemporaryFolder()
    assert first.path != second.path and Path(first.path).is_dir() and Path(second.path).is_dir()
    first.cleanup(), second.cleanup()


@pytest.mark.parametrize("in_study", [True, False])
def test_result_goes_into_the_input_study(scene, in_study):
    """The result sits next to its input in the subject hierarchy (the patient's study), not at the top."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    node, array = make_volume(scene, "axial")
    other, _ = make_volume(scene, "axial", name="other")
    if in_study:
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
        study = sh.CreateStudyItem(patient, "CT study")
        sh.CreateItem(study, node)
        sh.CreateItem(sh.CreateStudyItem(patient, "another study"), other)
    else:
        study = sh.GetSceneItemID()
        sh.CreateItem(study, node)
    out = volumes.createUpsampledVolumeNode(node, np.repeat(array, 2, axis=0)[:-1], 1.0)
    item = sh.GetItemByDataNode(out)
    assert item and sh.GetItemParent(item) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study  # the input stays where it was


# ---------------------------------------------------------------------------------- layout (MRML)

def test_view_orientations():
    assert layout.viewOrientations([0, 0, 1]) == ("Axial", "Coronal")
    assert layout.viewOrientations([0, 0.1, -0.99]) == ("Axial", "Coronal")
    assert layout.viewOrientations([0.2, 0.9, 0.3]) == ("Coronal", "Sagittal")
    assert layout.viewOrientations([-1, 0, 0]) == ("Sagittal", "Coronal")


def test_comparison_layout_creates_linked_views(scene):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(layout.comparisonLayoutXML())
    tags = [v.get("singletontag") for v in root.iter("view")]
    assert sorted(tags) == sorted([*layout.VIEWS, layout.PLOT_VIEW])

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout_node = layout_logic.GetLayoutNode()
    assert layout.registerComparisonLayout(layout_node) == layout.COMPARISON_LAYOUT_ID
    assert layout.registerComparisonLayout(layout_node) == layout.COMPARISON_LAYOUT_ID  # idempotent
    layout_node.SetViewArrangement(layout.COMPARISON_LAYOUT_ID)
    for name in layout.VIEWS:
        assert layout.findSliceNode(scene, name) is not None, name
    assert layout.findPlotViewNode(scene) is not None

    node, _ = make_volume(scene, "oblique")  # K mostly anterior -> coronal native plane
    data, g = volumes.arrayAndGeometryFromNode(node)
    out = volumes.createUpsampledVolumeNode(node, linear_upsample(data, g.spacing, 2.0), 2.0)
    slice_nodes = layout.configureComparisonViews(scene, node, out)
    assert set(slice_nodes) == set(layout.VIEWS)
    native, through = layout.viewOrientations(volumes.kAxisRAS(node))
    for name, (column, row) in layout.VIEWS.items():
        composite = layout.findOrAddSliceCompositeNode(scene, name)
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == (out.GetID() if column == "output" else None)
        assert composite.GetLinkedControl()
        assert slice_nodes[name].GetOrientation() == (native if row == 0 else through)
    # a second call reuses the composite nodes
    n = scene.GetNumberOfNodes()
    layout.configureComparisonViews(scene, node, out)
    assert scene.GetNumberOfNodes() == n


def test_sigma_plot(scene):
    node, _ = make_volume(scene, "axial")
    data, g = volumes.arrayAndGeometryFromNode(node)
    out = volumes.createUpsampledVolumeNode(node, linear_upsample(data, g.spacing, 1.0), 1.0)
    m = out.GetImageData().GetDimensions()[2]
    report = {"input": {"snli": 1.5, "sigmas": list(np.linspace(10, 12, 6))},
              "output": {"snli": 0.5, "sigmas": list(np.linspace(10, 11, m))}}
    chart = layout.createSigmaPlot(scene, report, node, out)
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    for i, (which, n_rows, spacing) in enumerate([("input", 6, 5.0), ("output", m, 1.0)]):
        series = chart.GetNthPlotSeriesNode(i)
        table = series.GetTableNode()
        assert table.GetNumberOfRows() == n_rows
        assert series.GetXColumnName() == "position (mm)"
        x = slicer.util.arrayFromTableColumn(table, "position (mm)")
        y = slicer.util.arrayFromTableColumn(table, "noise sigma")
        np.testing.assert_allclose(x, np.arange(n_rows) * spacing)
        np.testing.assert_allclose(y, report[which]["sigmas"])
    assert "SNLI" in chart.GetTitle()
    # showing it again reuses the nodes
    n = scene.GetNumberOfNodes()
    layout.createSigmaPlot(scene, report, node, out)
    assert scene.GetNumberOfNodes() == n
    # into the plot view of the layout
    assert not layout.showChartInPlotView(scene, chart)  # no layout yet
    view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    view.SetLayoutName(layout.PLOT_VIEW)
    assert layout.showChartInPlotView(scene, chart)
    assert view.GetPlotChartNodeID() == chart.GetID()
