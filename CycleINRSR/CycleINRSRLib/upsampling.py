"""One upsampling run of a volume node: temporary NRRD -> background CLI -> NEW output node.

MRML + the process runner, no Qt: runs in Slicer (polled from a QTimer by the widget, or synchronously
by the logic and the self-test) and with slicer-core under pytest. The scene is modified only when the
run succeeded: a failed or cancelled run adds no node and leaves no temporary file behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import process as proc
from . import volumes


@dataclass
class UpsampleSettings:
    """What the panel asks for. ``model`` is 'auto' (the core chooses by device, ``weights.AUTO_MODEL``:
    'fast' on CUDA and CPU today), 'default', 'fast' or a weights file path; window, overlap and tile of 0
    mean the core's defaults."""

    targetThickness: float
    model: str = proc.AUTO_MODEL
    device: str = "auto"
    window: int = 0
    overlap: int = 0
    tile: int = 0
    adaptSeconds: float = 0.0    # > 0: "Adapt to this scan" for at most this long before upsampling
    matchNoise: bool = True      # generated slices get the acquired slices' noise level (--noise match|none)
    ensemble: int = 1            # self-ensemble passes over flipped copies, 1/2/4/8 (--ensemble)


def sizeProblem(window: int, overlap: int, tile: int) -> str:
    """Why the Advanced sizes cannot run, or '' (0 = the core's default): the command line's own limits,
    checked before a process starts so that Apply is disabled instead of failing seconds later."""
    if window and window < 2:
        return "The window must be at least 2 slices (or 0: automatic)."
    if tile and tile < 8:
        return "The tile must be at least 8 pixels (or 0: automatic)."
    if window and overlap and overlap >= window:   # an automatic overlap fits the window (the core's rule)
        return f"The window overlap ({overlap}) must be smaller than the window ({window} slices)."
    return ""


def validateSettings(inputNode, settings: UpsampleSettings) -> None:
    """Raise ValueError with a message for the user if the run cannot start."""
    if inputNode is None or inputNode.GetImageData() is None:
        raise ValueError("Select an input volume.")
    dims = inputNode.GetImageData().GetDimensions()
    if dims[2] < 2:
        raise ValueError(f"'{inputNode.GetName()}' has {dims[2]} slice; upsampling needs at least 2.")
    spacing = volumes.sliceSpacing(inputNode)
    t = float(settings.targetThickness)
    if not t > 0:
        raise ValueError("The target slice thickness must be > 0 mm.")
    if t >= spacing - 1e-9:
        raise ValueError(f"The target slice thickness ({t:g} mm) must be smaller than the input's slice "
                         f"spacing ({spacing:g} mm).")
    if (settings.model != proc.AUTO_MODEL and settings.model not in proc.BUNDLED_MODELS
            and not os.path.isfile(str(settings.model))):
        raise ValueError(f"Model weights file not found: {settings.model}")
    problem = sizeProblem(settings.window, settings.overlap, settings.tile)
    if problem:
        raise ValueError(problem)
    if not 0 <= float(settings.adaptSeconds) <= 24 * 3600:
        raise ValueError("The adaptation time must be between 0 (off) and 86400 s (24 h).")


REPORT_ATTRIBUTE = "CycleINR.Report"
SOURCE_REFERENCE = "CycleINRSource"


def tagResult(outputNode, inputNode, report: dict | None, settings: UpsampleSettings,
              modelUsed: str | None = None) -> None:
    """Remember on the output node where it came from (node reference, kept when the scene is saved) and
    the report (SNLI, sigmas), so the panel can show and compare any earlier result. CycleINR.Model is
    the model the CLI used (e.g. 'fast (auto: small model)') when known, else the setting."""
    outputNode.SetNodeReferenceID(SOURCE_REFERENCE, inputNode.GetID())
    outputNode.SetAttribute("CycleINR.TargetThickness", f"{float(settings.targetThickness):g}")
    outputNode.SetAttribute("CycleINR.Model", str(modelUsed or settings.model))
    if report is not None:
        outputNode.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))


def reportOf(outputNode) -> dict | None:
    """The report stored on a result node by ``tagResult``, or None."""
    text = outputNode.GetAttribute(REPORT_ATTRIBUTE) if outputNode is not None else None
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def sourceOf(outputNode):
    """The input volume a result node was computed from, or None."""
    return outputNode.GetNodeReference(SOURCE_REFERENCE) if outputNode is not None else None


def snliFromReport(report: dict | None, which: str) -> float | None:
    """SNLI of the 'input' or 'output' in a report, if present and a number."""
    try:
        return float(report[which]["snli"])
    except (TypeError, KeyError, ValueError):
        return None


def readReport(path: str) -> dict | None:
    """The CLI's --report JSON, or None if it is missing or unreadable (the run itself still counts)."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        return report if isinstance(report, dict) else None
    except (OSError, ValueError):
        return None


class UpsampleJob:
    """Upsample ``inputNode`` in a background process.

    Typical use: ``job.start()`` then ``job.poll()`` from a timer until it returns True (or ``job.wait()``).
    After that ``state`` is 'succeeded' (``outputNode`` is the new node, ``report`` the CLI's report),
    'failed' (``errorMessage`` says why) or 'cancelled'. ``onFinished(job)`` is called once at the end.
    """

    IDLE, RUNNING, SUCCEEDED, FAILED, CANCELLED = "idle", "running", "succeeded", "failed", "cancelled"

    def __init__(self, inputNode, settings: UpsampleSettings, python: str | None = None,
                 onProgress: Callable[[float], None] | None = None,
                 onFinished: Callable[[UpsampleJob], None] | None = None,
                 onLine: Callable[[str], None] | None = None, outputName: str | None = None):
        self.inputNode = inputNode
        self.settings = settings
        self.python = python or proc.pythonExecutable()
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.onLine = onLine
        self.outputName = outputName
        self.state = self.IDLE
        self.outputNode = None
        self.report: dict | None = None
        self.errorMessage = ""
        self.seconds = 0.0
        self.command: list[str] = []
        self.process: proc.UpsampleProcess | None = None
        self._tmp: volumes.TemporaryFolder | None = None
        self._start = 0.0

    @property
    def running(self) -> bool:
        return self.state == self.RUNNING

    @property
    def progress(self) -> float:
        return (self.process.progress or 0.0) if self.process is not None else 0.0

    @property
    def modelUsed(self) -> str | None:
        """The model the CLI chose, from its ``cycleinr: model ... on ...`` line (None until it is printed)."""
        return self.process.parser.model if self.process is not None else None

    @property
    def deviceUsed(self) -> str | None:
        return self.process.parser.device if self.process is not None else None

    def describeModelUsed(self) -> str:
        """'model fast (auto: small model) on cpu', or '' before the CLI has said."""
        return f"model {self.modelUsed} on {self.deviceUsed}" if self.modelUsed else ""

    @property
    def temporaryFolder(self) -> str | None:
        return self._tmp.path if self._tmp is not None else None

    def start(self) -> None:
        if self.state != self.IDLE:
            raise RuntimeError("a job can only be started once")
        validateSettings(self.inputNode, self.settings)
        self._tmp = volumes.TemporaryFolder()
        try:
            inputPath = volumes.writeVolumeToFile(self.inputNode, self._tmp.file("input.nrrd"))
            self.command = proc.buildUpsampleCommand(
                self.python, inputPath, self._tmp.file("output.nrrd"),
                thickness=float(self.settings.targetThickness), model=str(self.settings.model),
                device=self.settings.device, window=self.settings.window or None,
                overlap=self.settings.overlap or None, tile=self.settings.tile or None,
                reportPath=self._tmp.file("report.json"), adaptSeconds=self.settings.adaptSeconds or None,
                matchNoise=self.settings.matchNoise, ensemble=self.settings.ensemble)
            # No CYCLEINR_MODELS of our own: the core in the background process looks for the bundled
            # models where the panel's proc.bundledModelFile (the same core code) found them.
            env = proc.buildEnvironment()
            self.process = proc.UpsampleProcess(self.command, env=env, cwd=self._tmp.path,
                                                onProgress=self.onProgress, onLine=self.onLine)
            logging.info("CycleINR: " + " ".join(self.command))
            self._start = time.monotonic()
            self.process.start()
        except Exception:
            self._tmp.cleanup()
            self._tmp = None
            raise
        self.state = self.RUNNING

    def poll(self) -> bool:
        """Handle new output; True once the job has finished (successfully or not)."""
        if self.state != self.RUNNING:
            return self.state != self.IDLE
        code = self.process.poll()
        if code is None:
            return False
        self._finish(code)
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             pumpEvents: Callable[[], None] | None = proc.processEvents) -> str:
        """Block until finished; returns the final state. On timeout the job is cancelled. ``pumpEvents``
        runs between polls (default: Slicer's event loop, so the application does not freeze)."""
        if self.state == self.IDLE:
            raise RuntimeError("the job was not started")
        start = time.monotonic()
        while not self.poll():
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                raise TimeoutError(f"upsampling did not finish within {timeout} s; cancelled")
            if pumpEvents is not None:
                pumpEvents()
            time.sleep(interval)
        return self.state

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the process tree; the job finishes as 'cancelled' without touching the scene, even if the
        process does not confirm its end within ``timeout`` seconds."""
        if self.state != self.RUNNING:
            return
        try:
            self.process.cancel(timeout=timeout)
        finally:
            self._finish(self.process.returnCode)

    def _finish(self, code: int | None) -> None:
        self.seconds = time.monotonic() - self._start
        try:
            if self.process.cancelled:
                self.state = self.CANCELLED
                self.errorMessage = "Cancelled."
            elif code != 0:
                self.state = self.FAILED
                self.errorMessage = self.process.errorMessage()
                if self.process.parser.error is None:  # e.g. a traceback: only its last lines are shown
                    self.errorMessage += "\n(The whole output of the process is in the application log.)"
            elif self.inputNode.GetScene() is None:
                self.state = self.FAILED
                self.errorMessage = "The input volume was removed from the scene while it was being upsampled."
            else:
                self.report = readReport(self._tmp.file("report.json"))
                target = float(self.settings.targetThickness)
                if self.report and self.report.get("target_spacing"):
                    target = float(self.report["target_spacing"])
                node = volumes.addResultVolumeNode(
                    self.inputNode, self._tmp.file("output.nrrd"), target, name=self.outputName)
                self.outputNode = node
                tagResult(node, self.inputNode, self.report, self.settings, modelUsed=self.modelUsed)
                self.state = self.SUCCEEDED
                logging.info("CycleINR: created %s in %.1f s (%s)", node.GetName(), self.seconds,
                             self.describeModelUsed() or f"model {self.settings.model}")
        except Exception as exc:  # noqa: BLE001 - reported to the user, never leaves a half-made node
            logging.exception("CycleINR: could not load the result")
            self.state = self.FAILED
            self.errorMessage = f"Could not load the result: {exc}"
            if self.outputNode is not None:
                volumes.removeVolumeNode(self.outputNode)
            self.outputNode = None
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
        if self.state == self.FAILED:
            logging.error("CycleINR failed: %s", self.errorMessage)
        if self.onFinished is not None:
            self.onFinished(self)

    def warnings(self) -> list[str]:
        """What the core warned about (data or a factor the model was not trained for; an adaptation that was
        not kept), read from its report, so the panel shows it with the result and not only in the log."""
        report = self.report or {}
        found = [str(text) for text in report.get("warnings") or []]
        kept = str((report.get("adaptation") or {}).get("kept", "adapted"))
        if kept != "adapted":
            found.append(f"adaptation: used the {kept} weights")
        return found

    def snli(self, which: str) -> float | None:
        """SNLI of the 'input' or 'output' from the report, if available."""
        return snliFromReport(self.report, which)
