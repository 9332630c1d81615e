"""Run ``python -m cycleinr upsample ...`` in a background process and follow it.

No Qt and no MRML here, so everything (command building, progress/error parsing and the process runner
itself) is tested with pytest against the real command line. In Slicer the widget calls
``UpsampleProcess.poll()`` from a ``qt.QTimer``: output is read by a daemon thread into a queue and
parsed on the caller's (GUI) thread, so callbacks may touch Qt and MRML safely. This mirrors Slicer's
own non-blocking ``slicer.util.launchConsoleProcess`` (background reader thread + QTimer polling).
Every output line goes to the ``CycleINR`` logger (Slicer's log); cancel kills the whole process tree.
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

PROGRESS_PATTERN = re.compile(r"progress (\d+(?:\.\d+)?)%")
ERROR_PREFIX = "cycleinr: error:"
DEVICES = ("auto", "cpu", "cuda")
ENSEMBLE_SIZES = (1, 2, 4, 8)  # self-ensemble passes the core accepts (cycleinr.inference.ENSEMBLE_SIZES)
BUNDLED_MODELS = {"default": "cycleinr_paper", "fast": "cycleinr_fast"}
AUTO_MODEL = "auto"  # the core picks by device (weights.model_for_device; 'fast' on both today)
MODEL_PATTERN = re.compile(r"cycleinr: model (.+) on (\S+)\s*$")  # the CLI's stderr line (not under --quiet)
EXIT_BAD_INPUT = 2

logger = logging.getLogger("CycleINR")


# ------------------------------------------------------------------------------------------ locations

def corePackageParent() -> str:
    """Folder that holds the ``cycleinr`` package: the module folder (CycleINRSR/ in the source tree,
    qt-scripted-modules/ once installed), i.e. the parent of this CycleINRSRLib package."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _coreWeights():
    """The core's ``cycleinr.weights`` (it imports numpy and SimpleITK, never torch), or None if the core
    cannot be imported here; the panel then says the weights were not found instead of failing."""
    try:
        from cycleinr import weights
    except ImportError as exc:
        logger.warning("CycleINR: cannot import the core package to locate models (%s)", exc)
        return None
    return weights


def findModelsDir() -> str | None:
    """The folder the core looks in first for bundled models (``cycleinr.weights.models_dir``, the same
    code the background process runs): $CYCLEINR_MODELS when set (then the only folder searched), else
    the first that exists of the package's own ``models/`` (a wheel's package data), the installed
    extension's Resources/Models and the source tree's Resources/Models; None if none exists."""
    weights = _coreWeights()
    if weights is None:
        return None
    folder = weights.models_dir()
    return str(folder) if os.environ.get("CYCLEINR_MODELS") or folder.is_dir() else None


def bundledModelFile(choice: str, modelsDir: str | None = None) -> str | None:
    """Path of a bundled model's .safetensors ('default' or 'fast') if present, else None. Without
    ``modelsDir``, found exactly as the background process will find it (``cycleinr.weights.resolve``)."""
    if choice not in BUNDLED_MODELS:
        return None
    if modelsDir is not None:
        path = os.path.join(modelsDir, BUNDLED_MODELS[choice] + ".safetensors")
        return path if os.path.isfile(path) else None
    weights = _coreWeights()
    if weights is None:
        return None
    try:
        path = weights.resolve(choice)
    except weights.WeightsError:
        return None
    return str(path) if path.is_file() else None


def autoModel(device: str, deviceInfo: dict | None = None) -> str | None:
    """The bundled model that ``--model auto`` will use (the core's ``model_for_device``; 'fast' on CUDA
    and CPU today) for the panel's device choice; for device 'auto' it needs the device probe's
    result (``parseDeviceProbe``), else None (not known yet)."""
    device = str(device).lower()
    if device == "auto":
        if not deviceInfo or not deviceInfo.get("torch"):
            return None
        device = "cuda" if deviceInfo.get("cuda") else "cpu"
    weights = _coreWeights()
    return weights.model_for_device(device) if weights is not None else None


def findResourceFile(subfolder: str, name: str, moduleDir: str | None = None) -> str | None:
    """A file installed under the module's Resources/<subfolder> (extension build) or the repository's
    Resources/<subfolder> (source tree), else None."""
    moduleDir = moduleDir or corePackageParent()
    for base in (moduleDir, os.path.dirname(moduleDir)):
        path = os.path.join(base, "Resources", subfolder, name)
        if os.path.isfile(path):
            return path
    return None


def pythonExecutable(inSlicer: bool | None = None) -> str:
    """Python that runs the background process: Slicer's ``PythonSlicer`` launcher inside Slicer (it sets
    up Slicer's Python environment; Slicer adds it to PATH), else the current interpreter."""
    if inSlicer is None:
        # slicer.app exists only in the Slicer application, not with PyPI's slicer-core.
        inSlicer = hasattr(sys.modules.get("slicer"), "app")
    if inSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = os.path.join(os.path.dirname(sys.executable),
                                 "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
        if os.path.isfile(candidate):
            return candidate
    return sys.executable


# -------------------------------------------------------------------------------------- command line

def _positive(name: str, value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value:g}")
    return value


def buildUpsampleCommand(python: str, inputPath: str, outputPath: str, *, thickness: float | None = None,
                         factor: float | None = None, model: str = AUTO_MODEL, device: str = "auto",
                         window: int | None = None, overlap: int | None = None, tile: int | None = None,
                         reportPath: str | None = None, adaptSeconds: float | None = None,
                         matchNoise: bool = True, ensemble: int = 1) -> list[str]:
    """Argument list of ``python -m cycleinr upsample``. Exactly one of ``thickness`` (target slice
    spacing, mm) or ``factor``. ``window``/``overlap``/``tile`` of None or 0 mean the core's default
    (the flag is left out: the panel's 0 is "automatic", so an overlap of 0 is not asked for). ``model`` is 'auto'
    (chosen by device), 'default', 'fast' or a weights file. ``ensemble``: self-ensemble passes (1 = off).
    Never ``--quiet``: the panel follows the progress lines and the ``cycleinr: model ... on ...`` line."""
    if (thickness is None) == (factor is None):
        raise ValueError("give exactly one of thickness (mm) or factor")
    device = str(device).lower()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not model:
        raise ValueError("no model given: choose 'auto', 'default', 'fast' or a weights file")
    command = [python, "-m", "cycleinr", "upsample", str(inputPath), str(outputPath)]
    if thickness is not None:
        command += ["--thickness", repr(_positive("target thickness", thickness))]
    else:
        command += ["--factor", repr(_positive("factor", factor))]
    command += ["--model", str(model), "--device", device]
    for flag, value in (("--window", window), ("--overlap", overlap), ("--tile", tile)):
        if value:
            if int(value) < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")
            command += [flag, str(int(value))]
    if reportPath:
        command += ["--report", str(reportPath)]
    if adaptSeconds:                        # "Adapt to this scan": fine-tune a copy first (None or 0: off)
        command += ["--adapt", repr(_positive("adaptation time", adaptSeconds))]
    command += ["--noise", "match" if matchNoise else "none"]   # stated, whatever the core's default
    if int(ensemble) != 1:
        if int(ensemble) not in ENSEMBLE_SIZES:
            raise ValueError(f"self-ensemble must be one of {ENSEMBLE_SIZES} passes, got {ensemble}")
        command += ["--ensemble", str(int(ensemble))]
    return command


def buildEnvironment(baseEnvironment: dict | None = None, corePath: str | None = None,
                     modelsDir: str | None = None) -> dict:
    """Environment of the background process: the caller's, with the folder holding ``cycleinr`` first
    on PYTHONPATH, unbuffered output (progress arrives as it happens) and CYCLEINR_MODELS if known."""
    env = dict(os.environ if baseEnvironment is None else baseEnvironment)
    corePath = corePath or corePackageParent()
    paths = [corePath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != corePath]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if modelsDir:
        env["CYCLEINR_MODELS"] = str(modelsDir)
    return env


# -------------------------------------------------------------------------------------- device probe

_PROBE_TAG = "CYCLEINR_DEVICES"
_PROBE_CODE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except Exception as exc:\n"
    f"    print('{_PROBE_TAG} ' + json.dumps({{'torch': None, 'error': str(exc)}}))\n"
    "else:\n"
    "    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]"
    " if torch.cuda.is_available() else []\n"
    f"    print('{_PROBE_TAG} ' + json.dumps({{'torch': torch.__version__, 'cuda': cuda}}))\n"
)


def deviceProbeCommand(python: str) -> list[str]:
    """Command that reports, in the background process's environment, the torch version and CUDA GPUs
    (so the panel can say what 'auto' will use without importing torch into Slicer itself)."""
    return [python, "-c", _PROBE_CODE]


def parseDeviceProbe(lines) -> dict | None:
    """{'torch': version or None, 'cuda': [GPU names], 'error': ...} from the probe's output."""
    import json

    for line in reversed([str(x) for x in lines]):
        if line.startswith(_PROBE_TAG + " "):
            try:
                return json.loads(line[len(_PROBE_TAG) + 1:])
            except ValueError:
                return None
    return None


def describeDevices(info: dict | None) -> str:
    """One line for the panel from ``parseDeviceProbe``'s result."""
    if not info:
        return "Could not detect devices."
    if not info.get("torch"):
        return "PyTorch is not installed yet; it will be offered when you click Apply."
    if info.get("cuda"):
        return f"CUDA: {', '.join(info['cuda'])} (PyTorch {info['torch']}); auto uses the GPU."
    return f"No CUDA GPU found (PyTorch {info['torch']}); auto uses the CPU."


# --------------------------------------------------------------------------------------------- parsing

def parseProgress(line: str) -> float | None:
    """Percentage (0-100) from a line holding ``progress NN.N%`` (the last one if several), else None."""
    matches = PROGRESS_PATTERN.findall(line or "")
    if not matches:
        return None
    return min(max(float(matches[-1]), 0.0), 100.0)


def parseErrorLine(line: str) -> str | None:
    """Reason from a ``cycleinr: error: <reason>`` line, else None."""
    index = (line or "").find(ERROR_PREFIX)
    if index < 0:
        return None
    return line[index + len(ERROR_PREFIX):].strip() or "unknown error"


def parseModelLine(line: str) -> tuple[str, str] | None:
    """(model, device) from the CLI's ``cycleinr: model <model> on <device>`` line, e.g.
    ('fast (auto: small model)', 'cpu'), else None."""
    match = MODEL_PATTERN.search(line or "")
    return (match.group(1).strip(), match.group(2)) if match else None


def errorMessage(lines, returnCode: int | None) -> str:
    """What to show the user when the process failed: the last ``cycleinr: error:`` reason if any, else
    the last meaningful output lines (e.g. a traceback's last line), else the exit status."""
    lines = [str(line).rstrip() for line in lines]
    for line in reversed(lines):
        reason = parseErrorLine(line)
        if reason:
            return reason
    meaningful = [line for line in lines if line.strip() and parseProgress(line) is None]
    if meaningful:
        return "\n".join(meaningful[-3:])
    if returnCode is not None and returnCode < 0:
        try:
            name = signal.Signals(-returnCode).name
        except ValueError:
            name = str(-returnCode)
        return f"the process was killed by signal {name} (out of memory?)"
    return f"the process failed with exit code {returnCode}"


class OutputParser:
    """Incremental parser of the process's output: decodes UTF-8 incrementally (a character split between
    two reads stays whole), splits on newlines and carriage returns (tqdm-style updates), logs every line
    to ``logger`` (so a failure's whole traceback is in Slicer's log), keeps the last ``maxLines`` lines,
    the latest progress, the latest error reason and the model and device the CLI chose."""

    def __init__(self, onProgress: Callable[[float], None] | None = None,
                 onLine: Callable[[str], None] | None = None, maxLines: int = 500, logPrefix: str = "CycleINR: "):
        self.onProgress = onProgress
        self.onLine = onLine
        self.logPrefix = logPrefix
        self.lines = collections.deque(maxlen=maxLines)
        self.progress: float | None = None
        self.error: str | None = None
        self.model: str | None = None     # from 'cycleinr: model <model> on <device>'
        self.device: str | None = None
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feedBytes(self, data: bytes) -> None:
        self.feed(self._decoder.decode(data))

    def feed(self, text: str) -> None:
        text = self._partial + text.replace("\r\n", "\n").replace("\r", "\n")
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._line(line)

    def close(self) -> None:
        self.feed(self._decoder.decode(b"", final=True))
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        logger.info("%s%s", self.logPrefix, line)
        self.lines.append(line)
        if self.onLine is not None:
            self.onLine(line)
        progress = parseProgress(line)
        if progress is not None:
            self.progress = progress
            if self.onProgress is not None:
                self.onProgress(progress)
        reason = parseErrorLine(line)
        if reason is not None:
            self.error = reason
        chosen = parseModelLine(line)
        if chosen is not None:
            self.model, self.device = chosen


# ------------------------------------------------------------------------------------------------ runner

def killProcessTree(process: subprocess.Popen) -> None:
    """Kill a process started by ``UpsampleProcess.start`` and every process it started.

    POSIX: the process leads its own process group (``start_new_session``), so one ``killpg`` reaches its
    children and grandchildren, even after the leader itself has ended. Windows: Slicer's ``PythonSlicer``
    is a launcher that runs ``python-real`` as a child; ``process.kill()`` would stop only the launcher,
    so ``taskkill /T /F`` kills the tree."""
    if os.name == "nt":
        try:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                           creationflags=subprocess.CREATE_NO_WINDOW, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("CycleINR: taskkill failed (%s); killing the process only", exc)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass


def processEvents() -> None:
    """Let Slicer's GUI handle pending events (repaints, clicks) during a synchronous wait; nothing outside
    the Slicer application (slicer.app exists only there)."""
    app = getattr(sys.modules.get("slicer"), "app", None)
    if app is not None:
        app.processEvents()


class UpsampleProcess:
    """One background process. ``start()``, then ``poll()`` regularly (from a QTimer in Slicer) until it
    returns the exit code, or ``wait()``; ``cancel()`` kills it (and any children)."""

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None,
                 onProgress: Callable[[float], None] | None = None,
                 onLine: Callable[[str], None] | None = None, logPrefix: str = "CycleINR: "):
        self.command = list(command)
        self.env = env
        self.cwd = cwd
        self.parser = OutputParser(onProgress=onProgress, onLine=onLine, logPrefix=logPrefix)
        self.returnCode: int | None = None
        self.cancelled = False
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("process already started")
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills workers too
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, **kwargs)
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        try:
            while True:
                chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
                if not chunk:
                    break
                self._queue.put(chunk)
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    @property
    def running(self) -> bool:
        return self._process is not None and self.returnCode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _drain(self) -> bool:
        """Parse queued output; True once the reader reached end of output."""
        ended = False
        while True:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                return ended
            if chunk is None:
                ended = True
                continue
            self.parser.feedBytes(chunk)

    def poll(self) -> int | None:
        """Parse new output; the exit code once the process has ended and all output is parsed."""
        if self._process is None:
            raise RuntimeError("process not started")
        if self.returnCode is not None:
            return self.returnCode
        ended = self._drain()
        code = self._process.poll()
        if code is None:
            return None
        if not ended:
            # Output may still be in flight: wait briefly for the reader to reach end of file.
            self._endOutput(readerTimeout=5.0)
        else:
            self._endOutput(readerTimeout=0)
        self.returnCode = code
        return code

    def _endOutput(self, readerTimeout: float) -> None:
        if readerTimeout and self._reader is not None:
            self._reader.join(timeout=readerTimeout)
        self._drain()
        self.parser.close()
        if self._process.stdout is not None and not (self._reader is not None and self._reader.is_alive()):
            self._process.stdout.close()  # (a reader still blocked on it is a daemon thread: left alone)

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             pumpEvents: Callable[[], None] | None = processEvents) -> int:
        """Block until the process ends (calling ``poll``); TimeoutError after ``timeout`` seconds.
        ``pumpEvents`` runs between polls (default: Slicer's event loop, so the GUI stays alive)."""
        start = time.monotonic()
        while True:
            code = self.poll()
            if code is not None:
                return code
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"process did not finish within {timeout} s")
            if pumpEvents is not None:
                pumpEvents()
            time.sleep(interval)

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the process tree and stop following it, within about ``timeout`` seconds: afterwards
        ``running`` is False and ``poll()`` returns the exit code (-1 if the process did not confirm its
        end in time, which is logged)."""
        if self._process is None or self.returnCode is not None:
            return
        self.cancelled = True
        killProcessTree(self._process)
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("CycleINR: process %d did not end within %g s of being killed", self.pid, timeout)
            code = -1
        self._endOutput(readerTimeout=1.0)
        self.returnCode = code

    # -- results
    @property
    def progress(self) -> float | None:
        return self.parser.progress

    @property
    def succeeded(self) -> bool:
        return self.returnCode == 0 and not self.cancelled

    def errorMessage(self) -> str:
        if self.cancelled:
            return "cancelled"
        return errorMessage(list(self.parser.lines), self.returnCode)
