"""The sha256 of a file's bytes, read in 1 MiB blocks: one helper for every integrity check
(dataset cache arrays, fit files, imported checkpoints)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's current bytes (no memo: callers check integrity with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
