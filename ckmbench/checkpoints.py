"""Reading torch files (checkpoints, weights) without ever running code from them.

``torch.load(..., weights_only=True)`` reads tensors and plain containers only; a pickle that
would build any other object is refused. Every failure becomes one ``CkmError`` line that
names the file and the fix — never a hint to retry with ``weights_only=False``, which would
run whatever code the file carries.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from .errors import CkmError

CHECKPOINT_FIX = "pass a checkpoint.pt written by ckmbench run"


def load_checkpoint_file(path: str | os.PathLike, map_location="cpu", *, what: str = "checkpoint",
                         kind: str = "a ckmbench checkpoint", fix: str = CHECKPOINT_FIX):
    """The object saved in ``path`` (tensors, numbers, strings, lists, dicts), loaded safely.

    Raises ``CkmError("<what> <path> is not <kind> (<reason>): <fix>")`` when the file is
    missing, is not a torch file, or holds objects that only a full unpickler could build.
    """
    path = Path(path)
    if not path.is_file():
        reason = "it is a folder" if path.is_dir() else "no such file"
        raise CkmError(f"{what} {path} is not {kind} ({reason}): {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before failing anyway
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: never repeat that advice.
        reason = "it holds Python objects other than tensors, which could run code when loaded; refused"
    except Exception as exc:
        reason = f"not a torch file: {type(exc).__name__}"
    raise CkmError(f"{what} {path} is not {kind} ({reason}): {fix}")
