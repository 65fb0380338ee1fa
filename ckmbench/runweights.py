"""The weights of a run folder: the fit's file itself, not a second copy.

A paper-profile fit is up to ~1 GB; the run folder's ``checkpoint.pt`` is a hard link to the
fit's ``fit.pt`` (or to the ``--checkpoint`` it loaded) when both are on one filesystem, else a
small ``checkpoint.json`` naming that file. Only weights that exist nowhere else are written.
``--checkpoint`` accepts either file of a run folder.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from .fitcache import FIT_FILE
from .results import atomic_write_bytes, atomic_write_text

WEIGHTS_FILE = "checkpoint.pt"
POINTER_FILE = "checkpoint.json"


def write_run_weights(run_dir: Path, state: dict, fit: dict | None, checkpoint: str | None) -> Path:
    """Link (or point to) the file the weights came from; write ``state`` only when there is none."""
    source = Path(fit["dir"]) / FIT_FILE if fit and fit.get("dir") else Path(checkpoint) if checkpoint else None
    target = run_dir / WEIGHTS_FILE
    if source is not None and source.is_file():
        source = Path(run_weights_path(source)).resolve()
        try:
            os.link(source, target)
            return target
        except OSError:  # another filesystem, or links not allowed: a pointer of a few bytes
            pointer = run_dir / POINTER_FILE
            atomic_write_text(pointer, json.dumps({"weights": str(source)}, indent=1) + "\n")
            return pointer
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(target, buf.getvalue())
    return target


def run_weights_path(path: str | os.PathLike) -> Path:
    """The weights file behind ``path``: itself, or the file a run folder's checkpoint.json names."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        from .errors import CkmError

        try:
            return Path(json.loads(path.read_text("utf-8"))["weights"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CkmError(f"--checkpoint {path} is not a run folder's checkpoint.json (no 'weights' entry): "
                           f"pass the checkpoint.pt or checkpoint.json of a run folder") from None
    return path
