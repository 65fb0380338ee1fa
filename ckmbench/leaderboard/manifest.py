"""The incremental build's manifest: a hash of each table's inputs, so unchanged tables are skipped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .table import Board

MANIFEST = ".manifest.json"


def _code_fingerprint() -> str:
    """What the rendering depends on besides the records: this package's own modules. Not the
    plotting library's version, so a fresh environment with the same outputs leaves the
    committed manifest (and ``git status``) unchanged."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _board_inputs_hash(board: "Board", store_dir: Path, reported_name: str, code: str) -> str:
    """Hash of everything one table is made from: its records (all of them, failures too), its
    reported numbers, its example files and the rendering code."""
    h = hashlib.sha256(code.encode())
    h.update(reported_name.encode())
    records = [r for row in board.rows for r in row.records] + list(board.failures)
    h.update(json.dumps(records, sort_keys=True, default=str).encode())
    h.update(json.dumps(board.mixed_hashes).encode())
    if board.protocol_rows:
        h.update(json.dumps([[d, t, p, row.records] for d, t, p, row in board.protocol_rows],
                            sort_keys=True, default=str).encode())
    if board.reported is not None:
        h.update(board.reported.to_csv(index=False).encode())
    for r in records:
        for key in ("examples", "per_map"):  # the files a table's figures and intervals are made from
            if r.get(key):
                path = store_dir / r[key]
                h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    return h.hexdigest()


def _read_manifest(out_dir: Path) -> dict:
    try:
        data = json.loads((out_dir / MANIFEST).read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
