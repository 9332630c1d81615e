"""``cycleinr export``: the weights of a training checkpoint, as a weights file that upsample loads.

A run that is killed (a GPU machine handed back, a closed laptop) or cancelled before it writes its output
leaves only ``<output stem>.ckpt.safetensors``, written every ``checkpoint_every`` epochs. ``train --resume``
continues it; this command makes usable weights of it as it is. Nothing is unpickled: the checkpoint is
safetensors plus JSON, like the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import ModelConfig
from .model import CycleINR
from .outputs import check_output
from .train import checkpoint_model_state, read_checkpoint
from .weights import save_model


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> dict:
    """Write the model of ``checkpoint`` to ``output`` (.safetensors + .json, complete files only) with
    the training settings and epoch it records; return ``{"epoch", "output"}``."""
    checkpoint, output = Path(checkpoint), check_output(output, (".safetensors",), "output")
    if output.resolve() == checkpoint.resolve():
        raise ValueError(f"{output}: the output would overwrite the checkpoint; choose another name")
    tensors, meta = read_checkpoint(checkpoint)
    model = CycleINR(ModelConfig.from_dict(meta["config"]))
    model.load_state_dict(checkpoint_model_state(tensors))
    training = {"settings": meta["settings"], "exported_from": checkpoint.name}
    save_model(output, model, training=training, epoch=meta["epoch"], best=meta.get("best"))
    return {"epoch": meta["epoch"], "output": str(output)}


def run(args) -> int:
    result = export_checkpoint(args.checkpoint, args.output)
    print(f"cycleinr: wrote {result['output']} (weights of epoch {result['epoch']})")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="weights file from a training checkpoint (e.g. of a killed run)",
                              description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("checkpoint", help="<output stem>.ckpt.safetensors written by cycleinr train (its .json beside it)")
    p.add_argument("output", help="weights file to write (.safetensors; its .json is written beside it)")
    p.set_defaults(func=run)
    return p
