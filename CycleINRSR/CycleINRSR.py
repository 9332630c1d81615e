"""CycleINR Super-Resolution: upsample thick-slice CT/MR along the slice axis (3D Slicer module).

Thin module file following Slicer's scripted module template; the work is in CycleINRSRLib (volume
transfer, background process, layout, dependencies) and in the ``cycleinr`` core package, which runs
in a separate Python process so that Slicer stays responsive and a cancel is immediate.
"""

import enum
import logging
import os
import pathlib
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (
    Decimals,
    SingleStep,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CycleINRSRLib import process as cycleinrProcess

# Checked before the classes below, which (like the core) use Python 3.10+ syntax that an older Slicer
# cannot run: an older Slicer says why instead of failing on a TypeError or SyntaxError.
MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 10)  # what this code needs; Slicer 5.10 has Python 3.12
if sys.version_info < MINIMUM_PYTHON_VERSION or (
        hasattr(slicer, "app") and (slicer.app.majorVersion, slicer.app.minorVersion) < MINIMUM_SLICER_VERSION):
    raise ImportError(
        "The CycleINR extension needs 3D Slicer {}.{} or later (with Python 3.12); this is Slicer {} with Python "
        "{}. Please install a current Slicer from https://download.slicer.org.".format(
            *MINIMUM_SLICER_VERSION,
            getattr(getattr(slicer, "app", None), "applicationVersion", "?"), sys.version.split()[0]))

SAMPLE_FILE = "CycleINRSampleChestCT5mm.nrrd"
SAMPLE_NAME = "CycleINRSampleChestCT5mm"


#
# CycleINRSR
#


class CycleINRSR(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CycleINR Super-Resolution")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["CycleINR developers (CycleINR project)"]
        self.parent.helpText = _("""
Upsamples a thick-slice CT volume (in Hounsfield units; the bundled models are trained on CT only, MR needs
a model trained on MR with CycleINR Train) along its slice axis to any thinner slice spacing with CycleINR
(Wei Fang et al., "CycleINR: Cycle Implicit Neural Representation for Arbitrary-Scale Volumetric
Super-Resolution of Medical Data", CVPR 2024). The result is a new volume named
&lt;input&gt;_&lt;thickness&gt;mm with the input's origin and orientation; the input is not modified.
The network runs in a background process (CPU or CUDA) and can be cancelled. Model "Automatic" uses
the bundled model chosen for the device (today the small fast one, on CPU and CUDA: ten times faster on a CPU, while the
CPU-trained paper-size model is better at x2 and x3 on held-out CT); the status line says which ran.
"Match noise" (on by default) gives generated slices the noise level of the acquired ones; untick it for
the network's own, smoother output. "Self-ensemble" averages the network over 2, 4 or 8 flipped copies of
the input: a higher fidelity for that many times the run time. SNLI (slice-wise noise level inconsistency) of
input and output is reported; "Show comparison layout" shows both side by side.
Needs 3D Slicer 5.10 or later and the PyTorch extension. See the <a href="https://github.com/CycleINR/SlicerCycleINR#readme">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Based on the CycleINR method by Wei Fang, Yuxing Tang, Heng Guo, Mingze Yuan, Tony C. W. Mok, Ke Yan,
Jiawen Yao, Xin Chen, Zaiyi Liu, Le Lu, Ling Zhang and Minfeng Xu (CVPR 2024). PyTorch is installed
through the PyTorch extension (Fernando Pérez-García, Andras Lasso). Module structure follows the
3D Slicer scripted module template (Jean-Christophe Fillion-Robin, Andras Lasso, Steve Pieper).
""")
        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the bundled thick-slice chest CT to the Sample Data module (if it is installed)."""
    import SampleData

    path = cycleinrProcess.findResourceFile("SampleData", SAMPLE_FILE)
    if path is None:
        logging.info(f"CycleINR: sample data {SAMPLE_FILE} not found; not registered")
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CycleINR",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "CycleINRSR.png"),
        uris=pathlib.Path(path).resolve().as_uri(),
        fileNames=SAMPLE_FILE,
        nodeNames=SAMPLE_NAME,
        loadFileTypes="VolumeFile",
    )


#
# CycleINRSRParameterNode
#


class ModelChoice(enum.Enum):
    AUTO = "auto"  # --model auto: the core picks by device (weights.AUTO_MODEL; 'fast' on both today)
    DEFAULT = "default"
    FAST = "fast"
    FILE = "file"

    def label(self):
        return {"auto": _("Automatic (by device)"),
                "default": _("CycleINR (bundled, paper configuration)"),
                "fast": _("CycleINR fast (bundled, smaller)"),
                "file": _("Weights file...")}[self.value]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self):
        return {"auto": _("Auto"), "cpu": _("CPU"), "cuda": _("CUDA (NVIDIA GPU)")}[self.value]


class SelfEnsemble(enum.Enum):
    """Passes over flipped copies of the input whose outputs are averaged (cycleinr --ensemble)."""
    OFF = "1"
    TWO = "2"
    FOUR = "4"
    EIGHT = "8"

    def label(self):
        return {"1": _("Off (fastest)"), "2": _("2 passes (slice-axis flip, 2x time)"),
                "4": _("4 passes (2x2 flips, 4x time)"), "8": _("8 passes (all flips, 8x time)")}[self.value]


@parameterNodeWrapper
class CycleINRSRParameterNode:
    """
    inputVolume - thick-slice volume to upsample (never modified).
    outputVolume - the last result (a new node created by Apply), used for SNLI and the comparison.
    targetThickness - output slice spacing along K, in mm.
    device - auto, cpu or cuda.
    modelChoice - automatic (by device, the core's choice: fast on CPU and CUDA today), bundled default / fast model,
                  or a weights file (modelPath).
    window, overlap, tile - advanced chunking; 0 means the core's default.
    adaptSeconds - "Adapt to this scan": fine-tune a copy of the model on the input first (0 = off).
    matchNoise - give generated slices the noise level of the acquired ones (cycleinr --noise match).
    ensemble - self-ensemble: passes over flipped copies of the input, averaged (cycleinr --ensemble).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    targetThickness: Annotated[float, WithinRange(0.05, 20.0), Decimals(3), SingleStep(0.25)] = 1.0
    device: Device = Device.AUTO
    modelChoice: ModelChoice = ModelChoice.AUTO
    modelPath: pathlib.Path
    window: Annotated[int, WithinRange(0, 512)] = 0
    overlap: Annotated[int, WithinRange(0, 256)] = 0
    tile: Annotated[int, WithinRange(0, 4096)] = 0
    adaptSeconds: Annotated[float, WithinRange(0, 3600)] = 0.0
    matchNoise: bool = True
    ensemble: SelfEnsemble = SelfEnsemble.OFF


#
# CycleINRSRWidget
#


class CycleINRSRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._probe = None
        self._deviceInfo = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CycleINRSR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CycleINRSRLogic()

        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.setVisible(False)

        # The background process is followed by polling from the GUI thread.
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showComparisonButton.connect("clicked(bool)", self.onShowComparisonButton)

        self.initializeParameterNode()
        self.startDeviceProbe()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None and self._job.running:
            self._job.cancel()
        if self._probe is not None and self._probe.running:
            self._probe.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Keep following a running job (the timer) but stop reacting to parameter changes.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self):
        """Reload CycleINRSRLib and the core package ``cycleinr`` too (Slicer's Reload only reloads this
        file); the background process always starts with the current files anyway."""
        packages = ("CycleINRSRLib", "cycleinr")
        for name in [n for n in sys.modules if n in packages or n.startswith(tuple(p + "." for p in packages))]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    # -- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" dynamic property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Information labels and button states from the parameter node."""
        p = self._parameterNode
        if p is None:
            return
        running = self._job is not None and self._job.running
        info, factor, problem = self.logic.describeInput(p)
        self.ui.inputInfoLabel.text = info
        self.ui.factorLabel.text = factor

        useFile = p.modelChoice == ModelChoice.FILE
        self.ui.modelPathLineEdit.setVisible(useFile)
        self.ui.modelInfoLabel.text = self.logic.describeModel(p, self._deviceInfo)
        if not problem:
            problem = self.logic.modelProblem(p) or self.logic.sizeProblem(p)

        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running upsampling; nothing is added to the scene.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.enabled = not problem
            self.ui.applyButton.toolTip = problem or _("Upsample the input in a background process.")
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = not running

        report = self.logic.resultReport(p.outputVolume)
        self.ui.inputSNLILabel.text = self.logic.formatSNLI(report, "input")
        self.ui.outputSNLILabel.text = self.logic.formatSNLI(report, "output")
        self.ui.showComparisonButton.enabled = bool(p.outputVolume) and not running

    # -- device detection (in the background process's Python, so torch is not loaded into Slicer)
    def startDeviceProbe(self) -> None:
        if self._probe is not None and self._probe.running:
            return
        self.ui.deviceInfoLabel.text = _("Detecting devices...")
        try:
            self._probe = cycleinrProcess.UpsampleProcess(
                cycleinrProcess.deviceProbeCommand(cycleinrProcess.pythonExecutable()),
                env=cycleinrProcess.buildEnvironment())
            self._probe.start()
            self._timer.start()
        except OSError as exc:
            self._probe = None
            self.ui.deviceInfoLabel.text = _("Could not detect devices: {error}").format(error=exc)

    def _pollProbe(self) -> None:
        if self._probe is None or self._probe.poll() is None:
            return
        self._deviceInfo = cycleinrProcess.parseDeviceProbe(self._probe.parser.lines) or {}
        self.ui.deviceInfoLabel.text = cycleinrProcess.describeDevices(self._deviceInfo)
        self._probe = None
        self.updateGUI()  # the automatic model choice depends on the devices found

    # -- run
    def onApplyButton(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()  # onJobFinished updates the GUI
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start upsampling."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            if self._deviceInfo is not None and not self._deviceInfo.get("torch"):
                self.startDeviceProbe()  # PyTorch was just installed: say what it sees
            self._job = self.logic.startUpsample(
                self._parameterNode.inputVolume, self.logic.settingsFromParameterNode(self._parameterNode),
                onProgress=self.onJobProgress, onFinished=self.onJobFinished, onLine=self.onJobLine)
            self.ui.statusLabel.setVisible(True)
            self.ui.statusLabel.setStyleSheet("")
            self.ui.statusLabel.text = _("Starting (loading the model)...")
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self._timer.start()
            self.updateGUI()

    def onTimer(self) -> None:
        self._pollProbe()
        if self._job is not None and self._job.running:
            self._job.poll()
        if self._probe is None and (self._job is None or not self._job.running):
            self._timer.stop()

    def onJobLine(self, line: str) -> None:
        """The CLI says which model it chose ('cycleinr: model fast (auto: small model) on cpu')."""
        chosen = cycleinrProcess.parseModelLine(line)
        if chosen is not None:
            self.ui.statusLabel.text = _("Loaded model {model} on {device}; reading the input...").format(
                model=chosen[0], device=chosen[1])

    def _withModel(self, text: str) -> str:
        used = self._job.describeModelUsed() if self._job is not None else ""
        return f"{text} ({used})" if used else text

    def onJobProgress(self, percent: float) -> None:
        self.ui.progressBar.value = int(round(percent))
        lines = self._job.process.parser.lines if self._job is not None and self._job.process else []
        if lines and "adapting" in lines[-1]:  # its own phase before upsampling (--adapt)
            text = _("Adapting to this scan... {percent:.0f}%").format(percent=percent)
        else:
            text = _("Upsampling... {percent:.0f}%").format(percent=percent)
        self.ui.statusLabel.text = self._withModel(text)

    def onJobFinished(self, job) -> None:
        self.ui.progressBar.setVisible(False)
        if job.state == job.SUCCEEDED:
            warnings = job.warnings()
            self.ui.statusLabel.setStyleSheet("color: #b9770e" if warnings else "")
            self.ui.statusLabel.text = self._withModel(_("Created '{name}' in {seconds:.1f} s").format(
                name=job.outputNode.GetName(), seconds=job.seconds)) + "." + "".join(
                "\n" + _("Warning: {text}").format(text=text) for text in warnings)
            if self._parameterNode is not None:
                self._parameterNode.outputVolume = job.outputNode
            slicer.util.setSliceViewerLayers(background=job.outputNode, fit=True)
        elif job.state == job.CANCELLED:
            self.ui.statusLabel.setStyleSheet("")
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        else:
            self.ui.statusLabel.setStyleSheet("color: #c0392b")
            self.ui.statusLabel.text = _("Error: {message}").format(message=job.errorMessage)
        self.updateGUI()

    def onShowComparisonButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the comparison."), waitCursor=True):
            self.logic.showComparison(self._parameterNode.outputVolume, self._parameterNode.inputVolume)


#
# CycleINRSRLogic
#


class CycleINRSRLogic(ScriptedLoadableModuleLogic):
    """Computation without GUI; delegates to CycleINRSRLib. Usable from the Python console:

    >>> logic = slicer.util.getModuleLogic("CycleINRSR")
    >>> job = logic.upsample(slicer.util.getNode("CT"), targetThickness=1.0, model="fast", device="cpu")
    >>> job.outputNode, job.report["output"]["snli"]
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CycleINRSRParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        from CycleINRSRLib import dependencies

        return dependencies.ensureDependencies(askConfirmation)

    @staticmethod
    def modelSpec(parameterNode) -> str:
        """'auto', 'default', 'fast' or the weights file path, as the command line takes it."""
        if parameterNode.modelChoice == ModelChoice.FILE:
            return str(parameterNode.modelPath)
        return parameterNode.modelChoice.value

    def settingsFromParameterNode(self, parameterNode):
        from CycleINRSRLib.upsampling import UpsampleSettings

        return UpsampleSettings(targetThickness=float(parameterNode.targetThickness),
                                model=self.modelSpec(parameterNode), device=parameterNode.device.value,
                                window=int(parameterNode.window), overlap=int(parameterNode.overlap),
                                tile=int(parameterNode.tile), adaptSeconds=float(parameterNode.adaptSeconds),
                                matchNoise=bool(parameterNode.matchNoise),
                                ensemble=int(parameterNode.ensemble.value))

    def startUpsample(self, inputVolume, settings, onProgress=None, onFinished=None, onLine=None):
        """Start a background run; returns the UpsampleJob (poll it, or wait for it)."""
        from CycleINRSRLib.upsampling import UpsampleJob

        job = UpsampleJob(inputVolume, settings, onProgress=onProgress, onFinished=onFinished, onLine=onLine)
        job.start()
        return job

    def upsample(self, inputVolume, targetThickness: float, model: str = "auto", device: str = "auto",
                 window: int = 0, overlap: int = 0, tile: int = 0, timeout: float | None = None):
        """Synchronous run (batch use, self-test). Returns the finished job; raises RuntimeError on failure."""
        from CycleINRSRLib.upsampling import UpsampleSettings

        settings = UpsampleSettings(targetThickness=float(targetThickness), model=model, device=device,
                                    window=window, overlap=overlap, tile=tile)
        job = self.startUpsample(inputVolume, settings)  # every output line goes to the log
        job.wait(timeout=timeout)  # keeps Slicer's GUI responsive (processes events while waiting)
        if job.state != job.SUCCEEDED:
            raise RuntimeError(f"CycleINR upsampling {job.state}: {job.errorMessage}")
        return job

    # -- descriptions for the panel
    @staticmethod
    def describeInput(parameterNode) -> tuple[str, str, str]:
        """(input description, factor description, why Apply cannot run or '') for the panel."""
        node = parameterNode.inputVolume
        if node is None or node.GetImageData() is None:
            return _("No input volume selected."), "", _("Select an input volume.")
        dims = node.GetImageData().GetDimensions()
        spacing = float(node.GetSpacing()[2])
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASDirectionMatrix(matrix)
        k = [matrix.GetElement(r, 2) for r in range(3)]
        axis = max(range(3), key=lambda r: abs(k[r]))
        towards = ("R", "A", "S")[axis] if k[axis] > 0 else ("L", "P", "I")[axis]
        info = _("{i} x {j} x {n} slices; slice spacing {s:g} mm along K (towards {d})").format(
            i=dims[0], j=dims[1], n=dims[2], s=spacing, d=towards)
        target = float(parameterNode.targetThickness)
        if dims[2] < 2:
            return info, "", _("The input has a single slice.")
        if target >= spacing - 1e-9:
            return (info, _("Choose a target thinner than {s:g} mm.").format(s=spacing),
                    _("The target slice thickness must be smaller than the input's slice spacing."))
        try:
            from cycleinr.geometry import output_slice_count

            factor = _("Factor x{f:.3g}: {m} output slices of {t:g} mm").format(
                f=spacing / target, m=output_slice_count(dims[2], spacing, target), t=target)
        except Exception:  # noqa: BLE001 - core dependencies (torch) not installed (or not loadable) yet
            factor = _("Factor x{f:.3g}").format(f=spacing / target)
        return info, factor, ""

    @staticmethod
    def describeModel(parameterNode, deviceInfo=None) -> str:
        """Which weights Apply will use; for Automatic, the model for the device (``deviceInfo``: the
        device probe's result, needed when the device is Auto)."""
        choice = parameterNode.modelChoice
        if choice == ModelChoice.FILE:
            return ""
        missing = _("Bundled weights not found (Resources/Models); reinstall the extension or pick a file.")
        if choice == ModelChoice.AUTO:
            device = parameterNode.device.value
            chosen = cycleinrProcess.autoModel(device, deviceInfo)
            if chosen is None:  # devices not detected yet
                if not all(cycleinrProcess.bundledModelFile(m) for m in cycleinrProcess.BUNDLED_MODELS):
                    return missing
                return _("Automatic: the bundled model for the device (the small fast one on CPU and CUDA today).")
            path = cycleinrProcess.bundledModelFile(chosen)
            if path is None:
                return missing
            onDevice = "cuda" if device == "cuda" or (device == "auto" and deviceInfo.get("cuda")) else "cpu"
            return _("Automatic: {model} ({name}) on {device}").format(
                model=chosen, name=os.path.basename(path), device=onDevice.upper())
        path = cycleinrProcess.bundledModelFile(choice.value)
        if path is None:
            return missing
        return _("Weights: {name}").format(name=os.path.basename(path))

    @staticmethod
    def modelProblem(parameterNode) -> str:
        if parameterNode.modelChoice != ModelChoice.FILE:
            return ""
        path = str(parameterNode.modelPath)
        if not path or path == "." or not os.path.isfile(path):
            return _("Select a weights file (.safetensors).")
        return ""

    @staticmethod
    def sizeProblem(parameterNode) -> str:
        """Why the Advanced window / overlap / tile cannot run, or ''."""
        from CycleINRSRLib.upsampling import sizeProblem

        return sizeProblem(int(parameterNode.window), int(parameterNode.overlap), int(parameterNode.tile))

    @staticmethod
    def resultReport(outputNode):
        if outputNode is None:
            return None
        from CycleINRSRLib.upsampling import reportOf

        return reportOf(outputNode)

    @staticmethod
    def formatSNLI(report, which: str) -> str:
        from CycleINRSRLib.upsampling import snliFromReport

        value = snliFromReport(report, which)
        return "-" if value is None else f"{value:.3f}"

    def showComparison(self, outputVolume, fallbackInputVolume=None) -> None:
        """Comparison layout for a result node (its source volume on the left, the result on the right)."""
        from CycleINRSRLib import layout
        from CycleINRSRLib.upsampling import reportOf, sourceOf

        if outputVolume is None:
            raise ValueError("No upsampled volume selected.")
        inputVolume = sourceOf(outputVolume) or fallbackInputVolume
        if inputVolume is None:
            raise ValueError("The input volume of this result is no longer in the scene.")
        layout.showComparisonLayout(inputVolume, outputVolume, reportOf(outputVolume))


#
# CycleINRSRTest
#


class CycleINRSRTest(ScriptedLoadableModuleTest):
    """Tier-3 self-test: real Slicer, real background process, fast model on CPU.

    Run it with Slicer's "Reload and Test" (developer mode), with ctest (py_CycleINRSR), or from a shell:
    see README.md, section "3D Slicer module". ctest runs each ``test_*`` method alone (in alphabetical
    order), so every one of them prepares what it needs (``_prepare``).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CycleINRSR_geometry()
        self.setUp()
        self.test_CycleINRSR_cancel()
        if slicer.app.layoutManager() is not None:  # no views with --no-main-window
            self.setUp()
            self.test_CycleINRSR_comparison_layout()

    # -- helpers
    def _prepare(self):
        """Dependencies (installed without asking in testing mode) and the bundled fast model."""
        self.assertTrue(CycleINRSRLogic.ensureDependencies(askConfirmation=False),
                        "PyTorch or another Python package is missing and could not be installed")
        self.assertIsNotNone(cycleinrProcess.bundledModelFile("fast"),
                             "the bundled fast model (Resources/Models/cycleinr_fast.safetensors) is missing")

    def _syntheticVolume(self, name="CycleINRTestOblique"):
        """Small oblique volume with a negative-ish, non-S/I slice axis and distinct voxel values."""
        import numpy as np

        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(np.arange(7), np.arange(40), np.arange(44), indexing="ij")
        array = (200.0 * np.sin(i / 5.0) * np.cos(j / 7.0) + 40.0 * k
                 + rng.normal(0.0, 10.0, size=k.shape)).astype(np.int16)
        node = slicer.util.addVolumeFromArray(array, name=name)
        node.SetSpacing(0.8, 0.9, 4.0)
        node.SetOrigin(12.5, -30.0, 40.0)
        c, s = np.cos(0.4), np.sin(0.4)
        # columns: I, J, K axis directions in RAS; K = (0, s, -c) is oblique, points mostly inferior, and
        # the frame is left-handed (like a volume whose slice order was flipped)
        directions = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, s, -c]])
        node.SetIJKToRASDirections(*directions.reshape(-1))
        return node, array

    @staticmethod
    def _ijkToRAS(node):
        import numpy as np

        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    # -- tests
    def test_CycleINRSR_geometry(self):
        import math

        import numpy as np

        self.delayDisplay("Starting the geometry test")
        self._prepare()
        logic = CycleINRSRLogic()
        from cycleinr.geometry import output_slice_count

        inputNode, inputArray = self._syntheticVolume()
        inputMatrix = self._ijkToRAS(inputNode)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        target = 1.5

        # the panel's default model choice: Automatic, which the CLI resolves to 'fast' on the CPU
        job = logic.upsample(inputNode, target, model="auto", device="cpu", timeout=600)
        out = job.outputNode
        self.delayDisplay(f"Upsampled in {job.seconds:.1f} s ({job.describeModelUsed()})")
        self.assertEqual(job.deviceUsed, "cpu")
        self.assertTrue((job.modelUsed or "").startswith("fast (auto"), job.modelUsed)
        self.assertEqual(out.GetAttribute("CycleINR.Model"), job.modelUsed)

        self.assertIsNotNone(out)
        self.assertNotEqual(out.GetID(), inputNode.GetID())
        self.assertEqual(out.GetName(), "CycleINRTestOblique_1.5mm")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), nodesBefore + 1)
        # input untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), inputArray)
        np.testing.assert_allclose(self._ijkToRAS(inputNode), inputMatrix)
        # geometry: I/J spacing kept, K spacing = target, same origin and directions
        np.testing.assert_allclose(out.GetSpacing(), (0.8, 0.9, target), atol=1e-6)
        np.testing.assert_allclose(out.GetOrigin(), inputNode.GetOrigin(), atol=1e-6)
        outMatrix = self._ijkToRAS(out)
        np.testing.assert_allclose(outMatrix[:3, :3] / [0.8, 0.9, target],
                                   inputMatrix[:3, :3] / [0.8, 0.9, 4.0], atol=1e-6)
        dims = out.GetImageData().GetDimensions()
        self.assertEqual(dims[:2], (44, 40))
        self.assertEqual(dims[2], output_slice_count(7, 4.0, target))
        self.assertEqual(dims[2], math.floor(6 * 4.0 / target + 1e-6) + 1)
        # slice k of the output lies at input index k * target / spacing along K
        for k in range(dims[2]):
            expected = inputMatrix @ np.array([0.0, 0.0, k * target / 4.0, 1.0])
            np.testing.assert_allclose(outMatrix @ np.array([0.0, 0.0, k, 1.0]), expected, atol=1e-4)
        # pixel type kept, first slice close to the first input slice
        self.assertEqual(slicer.util.arrayFromVolume(out).dtype, inputArray.dtype)
        # SNLI values are reported and finite
        for which in ("input", "output"):
            value = job.snli(which)
            self.assertIsNotNone(value, f"no {which} SNLI in the report")
            self.assertTrue(math.isfinite(value))
            self.assertEqual(len(job.report[which]["sigmas"]), 7 if which == "input" else dims[2])
        self.delayDisplay("Geometry test passed")

    def test_CycleINRSR_cancel(self):
        import os.path
        import time

        self.delayDisplay("Starting the cancel test")
        self._prepare()
        logic = CycleINRSRLogic()
        from CycleINRSRLib.upsampling import UpsampleSettings

        inputNode, _array = self._syntheticVolume("CycleINRTestCancel")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startUpsample(inputNode, UpsampleSettings(targetThickness=0.5, model="fast", device="cpu"))
        folder = job.temporaryFolder
        self.assertTrue(os.path.isdir(folder))
        started = time.monotonic()
        job.cancel()
        self.assertLess(time.monotonic() - started, 5.0, "cancel blocked the GUI")
        self.assertEqual(job.state, job.CANCELLED)
        self.assertFalse(job.running or job.process.running)
        self.assertIsNone(job.outputNode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertFalse(os.path.exists(folder))
        self.delayDisplay("Cancel test passed")

    def test_CycleINRSR_comparison_layout(self):
        if slicer.app.layoutManager() is None:
            self.skipTest("needs the main window (started without --no-main-window)")
        self.delayDisplay("Starting the comparison layout test")
        self._prepare()
        from CycleINRSRLib import layout

        inputNode, _array = self._syntheticVolume("CycleINRTestLayout")
        logic = CycleINRSRLogic()
        job = logic.upsample(inputNode, 2.0, model="fast", device="cpu", timeout=600)
        logic.showComparison(job.outputNode)
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, layout.COMPARISON_LAYOUT_ID)
        for name, (column, _row) in layout.VIEWS.items():
            composite = layoutManager.sliceWidget(name).sliceLogic().GetSliceCompositeNode()
            self.assertEqual(composite.GetBackgroundVolumeID(), inputNode.GetID())
            if column == "output":
                self.assertEqual(composite.GetForegroundVolumeID(), job.outputNode.GetID())
        self.delayDisplay("Comparison layout test passed")
