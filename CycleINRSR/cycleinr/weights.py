"""Weights on disk: a ``.safetensors`` file of tensors plus a ``.json`` beside it with the configuration.

Nothing here unpickles: safetensors holds raw tensors and JSON holds everything else, so a weights file
from an untrusted source can at worst hold wrong numbers, never run code. Both files are written to a
temporary name and renamed, so an interrupted save never leaves a half-written file at the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .volume_io import default_file_mode

# torch is imported where tensors are handled, so that the Slicer panel can ask model_dirs() and
# model_for_device() without loading torch into Slicer.
if TYPE_CHECKING:
    import torch

    from .model import CycleINR

FORMAT = "cycleinr-weights/1"
BUNDLED = {"default": "cycleinr_paper", "paper": "cycleinr_paper", "fast": "cycleinr_fast"}


class WeightsError(ValueError):
    """Weights that cannot be used: missing, unreadable, or not matching their configuration."""


def model_dirs() -> list[Path]:
    """Folders searched for the bundled models, in order: $CYCLEINR_MODELS when set (an explicit choice
    wins), the package's own ``models/`` (a wheel ships them there), then Resources/Models of the Slicer
    install (beside the package's parent folder) or of the source tree (one level above it)."""
    here = Path(__file__).resolve().parent
    dirs = [here / "models", here.parent / "Resources" / "Models", here.parent.parent / "Resources" / "Models"]
    env = os.environ.get("CYCLEINR_MODELS")
    return [Path(env), *dirs] if env else dirs


def models_dir() -> Path:
    """The first folder of ``model_dirs()`` that exists (where a bundled model is looked up first)."""
    dirs = model_dirs()
    if os.environ.get("CYCLEINR_MODELS"):
        return dirs[0]
    return next((d for d in dirs if d.is_dir()), dirs[-1])


# The bundled model that ``--model auto`` uses on each kind of device. 'fast' on both for now: on the held-out
# head slab the paper-size model (after its bf16 fine-tuning, stage 5) is better at x2 and x3 (+2.6 / +2.9
# against +1.9 / +2.3 dB over linear) and level at x5 (+1.33 against +1.41; model card), and 'fast' takes
# about a minute per CT on a CPU instead of ten. The paper-size model becomes the CUDA choice once its speed
# on a GPU is measured (issue 10's target: a CT in about a second) or GPU training (issue 12) puts it ahead
# at every scale.
AUTO_MODEL = {"cuda": "fast", "cpu": "fast"}


def model_for_device(device: str | torch.device) -> str:
    """The bundled model to use when the user did not choose (``AUTO_MODEL``)."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]      # torch.device or 'cuda:1'/'cpu'
    return AUTO_MODEL.get(kind, "fast")


def json_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``path`` (.safetensors) and its .json atomically; the JSON is written last, so a file pair
    whose JSON exists is complete."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: weights files end in .safetensors")
    if not path.parent.is_dir():
        raise WeightsError(f"{path}: folder {path.parent} does not exist")
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp))
    _atomic(json_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if not json_path(path).is_file():
        raise WeightsError(f"{path}: its configuration {json_path(path).name} is missing beside it")
    try:
        meta = json.loads(json_path(path).read_text())
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise WeightsError(f"{path}: cannot read weights ({exc})") from None
    return tensors, meta


def save_model(path, model: CycleINR, **info) -> Path:
    """Save a model's weights with its configuration and free-form info (training data, scales, ...)."""
    meta = {"format": FORMAT, "config": model.config.to_dict(), **info}
    return save_tensors(path, model.state_dict(), meta)


def resolve(spec: str | os.PathLike) -> Path:
    """'default', 'paper', 'fast' (bundled: the first of ``model_dirs()`` that holds it) or a path to a
    .safetensors file. 'auto' is resolved by the caller with ``model_for_device``."""
    name = BUNDLED.get(str(spec))
    if name is not None:
        dirs = model_dirs()
        if os.environ.get("CYCLEINR_MODELS"):
            dirs = dirs[:1]                 # an explicit folder is not silently bypassed
        for folder in dirs:
            path = folder / f"{name}.safetensors"
            if path.is_file():
                return path
        raise WeightsError(f"bundled model '{spec}' ({name}.safetensors) not found in "
                           f"{', '.join(str(d) for d in dirs)}; set CYCLEINR_MODELS to the folder holding "
                           "cycleinr_*.safetensors or give a weights file path")
    if str(spec) == "auto":
        raise WeightsError("model 'auto' must be resolved for a device first (weights.model_for_device)")
    return Path(spec)


def load_model(spec: str | os.PathLike = "default", device: str | torch.device = "cpu") -> CycleINR:
    """Build the network from the JSON configuration and load its tensors (strictly: every key must match).
    ``spec`` 'auto' picks the bundled model for ``device`` (``model_for_device``)."""
    if str(spec) == "auto":
        spec = model_for_device(device)
    path = resolve(spec)
    tensors, meta = load_tensors(path)
    from .config import ModelConfig
    from .model import CycleINR

    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise WeightsError(f"{path}: not a CycleINR weights file (format {found!r}, or no configuration)")
    try:
        model = CycleINR(ModelConfig.from_dict(meta["config"]))
    except (TypeError, ValueError, RuntimeError) as exc:     # a hand-edited or damaged JSON
        if str(exc).startswith("unknown model settings"):     # written by a newer cycleinr
            raise WeightsError(f"{path}: {exc}") from None
        raise WeightsError(f"{path}: its JSON configuration is not usable ({exc}); use the JSON written "
                           "with these weights") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: tensors do not match the configuration ({str(exc).splitlines()[0]})") from None
    model.meta = meta
    model.source = str(path)
    return model.to(device).eval()
