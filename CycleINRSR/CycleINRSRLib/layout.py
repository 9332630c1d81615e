"""Comparison layout (input | output, native plane and a plane through the slice axis, linked) and the
per-slice noise sigma plot behind SNLI.

Everything except ``showComparisonLayout`` is plain MRML (layout node, slice/composite/plot nodes,
tables), so it is tested with slicer-core; ``showComparisonLayout`` adds the GUI steps (layout manager,
fitting the views) and only runs inside Slicer.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

COMPARISON_LAYOUT_ID = 19721  # arbitrary, away from Slicer's built-in layout ids (< 1000)
PLOT_VIEW = "CycleINRPlot"
# Layout name -> (column, row): left column shows the input, right column the output; top row is the
# native slice plane, bottom row a plane that contains the slice axis (where thick slices show as steps).
VIEWS = {
    "CycleINRInputNative": ("input", 0),
    "CycleINROutputNative": ("output", 0),
    "CycleINRInputThrough": ("input", 1),
    "CycleINROutputThrough": ("output", 1),
}
_VIEW_STYLE = {  # label, colour, default orientation
    "CycleINRInputNative": ("I1", "#F34A33", "Axial"),
    "CycleINROutputNative": ("O1", "#EDD54C", "Axial"),
    "CycleINRInputThrough": ("I2", "#6EB04B", "Coronal"),
    "CycleINROutputThrough": ("O2", "#4A8ACF", "Coronal"),
}


def _sliceView(name: str) -> str:
    label, color, orientation = _VIEW_STYLE[name]
    return (f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewcolor" action="default">{color}</property>'
            '<property name="viewgroup" action="default">0</property>'
            '</view></item>')


def comparisonLayoutXML() -> str:
    """Layout description: 2x2 linked slice views (input left, output right) above a plot view."""
    row = '<item><layout type="horizontal" split="true">{}{}</layout></item>'
    return ('<layout type="vertical" split="true">'
            + row.format(_sliceView("CycleINRInputNative"), _sliceView("CycleINROutputNative"))
            + row.format(_sliceView("CycleINRInputThrough"), _sliceView("CycleINROutputThrough"))
            + f'<item splitSize="250"><view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW}">'
            '<property name="viewlabel" action="default">P</property></view></item>'
            '</layout>')


def registerComparisonLayout(layoutNode) -> int:
    """Add (or refresh) the layout description on a vtkMRMLLayoutNode; returns its id."""
    xml = comparisonLayoutXML()
    if layoutNode.IsLayoutDescription(COMPARISON_LAYOUT_ID):
        layoutNode.SetLayoutDescription(COMPARISON_LAYOUT_ID, xml)
    else:
        layoutNode.AddLayoutDescription(COMPARISON_LAYOUT_ID, xml)
    return COMPARISON_LAYOUT_ID


def viewOrientations(kDirectionRAS) -> tuple[str, str]:
    """(native plane, plane through the slice axis) for a slice axis direction given in RAS: axial
    acquisitions (K mostly S/I) -> (Axial, Coronal), coronal (K mostly A/P) -> (Coronal, Sagittal),
    sagittal (K mostly R/L) -> (Sagittal, Coronal). Oblique volumes use the closest anatomical plane."""
    axis = int(np.argmax(np.abs(np.asarray(kDirectionRAS, dtype=float))))
    return {0: ("Sagittal", "Coronal"), 1: ("Coronal", "Sagittal"), 2: ("Axial", "Coronal")}[axis]


def _nodesByClass(scene, className: str):
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return nodes


def findSliceNode(scene, layoutName: str):
    for node in _nodesByClass(scene, "vtkMRMLSliceNode"):
        if node.GetLayoutName() == layoutName:
            return node
    return None


def findOrAddSliceCompositeNode(scene, layoutName: str):
    """The composite node of a slice view (Slicer's slice logic creates it when the view is shown; it
    adopts an existing one with the same layout name, so creating it here is safe)."""
    for node in _nodesByClass(scene, "vtkMRMLSliceCompositeNode"):
        if node.GetLayoutName() == layoutName:
            return node
    node = slicer.vtkMRMLSliceCompositeNode()
    node.SetLayoutName(layoutName)
    scene.AddNode(node)
    return node


def findPlotViewNode(scene, layoutName: str = PLOT_VIEW):
    for node in _nodesByClass(scene, "vtkMRMLPlotViewNode"):
        if node.GetLayoutName() == layoutName:
            return node
    return None


def volumeCenterRAS(volumeNode) -> np.ndarray:
    """RAS (local) centre of a volume's voxel grid."""
    dims = np.asarray(volumeNode.GetImageData().GetDimensions(), dtype=float)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    center = matrix.MultiplyPoint(list((dims - 1.0) / 2.0) + [1.0])
    return np.asarray(center[:3])


def configureComparisonViews(scene, inputNode, outputNode) -> dict:
    """Put the input in the background of the left views, the output in the foreground (opacity 1, over
    the input, so the view controller's fade slider compares them) of the right views; orient the rows
    by the input's slice axis, link the views and centre them on the input. Returns {layout name: slice
    node} for the views that exist."""
    from . import volumes

    native, through = viewOrientations(volumes.kAxisRAS(inputNode))
    center = volumeCenterRAS(inputNode)
    sliceNodes = {}
    for name, (column, row) in VIEWS.items():
        composite = findOrAddSliceCompositeNode(scene, name)
        composite.SetBackgroundVolumeID(inputNode.GetID())
        if column == "output" and outputNode is not None:
            composite.SetForegroundVolumeID(outputNode.GetID())
            composite.SetForegroundOpacity(1.0)
        else:
            composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        sliceNode = findSliceNode(scene, name)
        if sliceNode is not None:
            sliceNode.SetOrientation(native if row == 0 else through)
            sliceNode.JumpSliceByCentering(*center)
            sliceNodes[name] = sliceNode
    return sliceNodes


# ------------------------------------------------------------------------------------------- plot

def _getOrAddNode(scene, className: str, name: str):
    node = scene.GetFirstNode(name, className, False)
    if node is None:
        node = scene.AddNewNodeByClass(className, name)
    return node


def _fillTable(table, positions, sigmas) -> None:
    vtable = table.GetTable()
    vtable.Initialize()
    for columnName, values in (("position (mm)", positions), ("noise sigma", sigmas)):
        array = vtk.vtkDoubleArray()
        array.SetName(columnName)
        for v in np.asarray(values, dtype=float):
            array.InsertNextValue(float(v))
        vtable.AddColumn(array)
    table.Modified()


def createSigmaPlot(scene, report: dict, inputNode, outputNode, baseName: str | None = None):
    """Plot chart of the per-slice noise sigmas (the quantity whose spread is SNLI) of input and output
    against position along the slice axis (mm from the first slice). Reuses nodes of the same name, so
    showing the plot twice does not clutter the scene. Returns the vtkMRMLPlotChartNode."""
    baseName = baseName or (outputNode.GetName() if outputNode is not None else inputNode.GetName())
    chart = _getOrAddNode(scene, "vtkMRMLPlotChartNode", f"{baseName} SNLI")
    chart.RemoveAllPlotSeriesNodeIDs()
    series = (("input", inputNode, (0.85, 0.30, 0.20)), ("output", outputNode, (0.20, 0.45, 0.85)))
    titles = []
    for which, node, color in series:
        part = (report or {}).get(which) or {}
        sigmas = part.get("sigmas")
        if node is None or sigmas is None or len(sigmas) == 0:
            continue
        spacing = float(node.GetSpacing()[2])
        positions = np.arange(len(sigmas), dtype=float) * spacing
        table = _getOrAddNode(scene, "vtkMRMLTableNode", f"{baseName} sigma {which}")
        _fillTable(table, positions, sigmas)
        plot = _getOrAddNode(scene, "vtkMRMLPlotSeriesNode", f"{which} ({node.GetName()})")
        plot.SetAndObserveTableNodeID(table.GetID())
        plot.SetXColumnName("position (mm)")
        plot.SetYColumnName("noise sigma")
        plot.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        plot.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if which == "input"
                            else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        plot.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(plot.GetID())
        if part.get("snli") is not None:
            titles.append(f"{which} SNLI {float(part['snli']):.3g}")
    chart.SetTitle("Per-slice noise sigma" + (f" ({', '.join(titles)})" if titles else ""))
    chart.SetXAxisTitle("position along the slice axis (mm)")
    chart.SetYAxisTitle("noise sigma (intensity units)")
    return chart


def showChartInPlotView(scene, chartNode, layoutName: str = PLOT_VIEW) -> bool:
    """Show a chart in the comparison layout's plot view; False if that view does not exist yet."""
    view = findPlotViewNode(scene, layoutName)
    if view is None:
        return False
    view.SetPlotChartNodeID(chartNode.GetID() if chartNode is not None else None)
    return True


# ------------------------------------------------------------------------------------ Slicer only

def showComparisonLayout(inputNode, outputNode, report: dict | None = None) -> None:
    """Switch Slicer to the comparison layout and fill it (needs the Slicer application)."""
    layoutManager = slicer.app.layoutManager()
    scene = slicer.mrmlScene
    registerComparisonLayout(layoutManager.layoutLogic().GetLayoutNode())
    layoutManager.setLayout(COMPARISON_LAYOUT_ID)
    slicer.app.processEvents()  # let the layout manager create the views and their slice logics
    configureComparisonViews(scene, inputNode, outputNode)
    for name in VIEWS:
        widget = layoutManager.sliceWidget(name)
        if widget is not None:
            widget.sliceLogic().FitSliceToAll()
    if report:
        chart = createSigmaPlot(scene, report, inputNode, outputNode)
        showChartInPlotView(scene, chart)
