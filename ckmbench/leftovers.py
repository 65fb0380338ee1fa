"""Leftovers of killed runs, removed at the next ``ckmbench run`` once provably stale.

A run killed before its record is stored leaves a run folder holding only ``config.json``;
one killed (or whose store write failed) after it wrote its examples ``.npz`` leaves that
file behind, referenced by no stored record. Each names its writer (host and pid): the run
folder in ``config.json``'s ``writer``, the examples file in a marker
``examples/.<record_id>.writing`` that lives until the record is stored. A leftover is
removed only when its writer ran on this host and is dead; anything else (another host of a
shared filesystem, a live or reused pid) is kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from .results import _pid_alive, atomic_write_text

log = logging.getLogger("ckmbench.leftovers")

MARK_SUFFIX = ".writing"


def writer() -> dict:
    """Who is writing: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def writer_dead(who) -> bool:
    """True only when ``who`` ran on this host and its process no longer exists."""
    if not isinstance(who, dict) or who.get("host") != socket.gethostname():
        return False
    pid = who.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return not _pid_alive(pid)


def _mark(store_file: Path, record_id: str) -> Path:
    return Path(store_file).parent / "examples" / f".{record_id}{MARK_SUFFIX}"


def mark_examples(store_file: Path, record_id: str) -> None:
    """Before a run writes its examples file: it is this process's until the record is stored."""
    atomic_write_text(_mark(store_file, record_id), json.dumps(writer()))


def unmark_examples(store_file: Path, record_id: str) -> None:
    """The record is stored: its examples file is referenced and no leftover."""
    _mark(store_file, record_id).unlink(missing_ok=True)


def _stored_ids(store_file: Path) -> set:
    from .pending import pending_dir
    from .results import read_records

    ids = {r.get("record_id") for r in read_records(store_file)}
    folder = pending_dir(store_file)
    return ids | ({p.stem for p in folder.glob("*.json")} if folder.is_dir() else set())


def clean_examples(store_file: Path) -> list[Path]:
    """Remove the examples files of dead writers that no stored or pending record references."""
    folder = Path(store_file).parent / "examples"
    removed, known = [], None
    for mark in sorted(folder.glob(f".*{MARK_SUFFIX}")) if folder.is_dir() else ():
        try:
            who = json.loads(mark.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not writer_dead(who):
            continue
        record_id = mark.name[1:-len(MARK_SUFFIX)]
        known = _stored_ids(store_file) if known is None else known
        npz = folder / f"{record_id}.npz"
        if record_id not in known and npz.exists():
            npz.unlink(missing_ok=True)
            removed.append(npz)
        mark.unlink(missing_ok=True)
    return removed


def clean_run_dirs(runs_dir: Path) -> list[Path]:
    """Remove the run folders that hold only ``config.json``, written by a dead process."""
    removed = []
    for folder in sorted(Path(runs_dir).iterdir()) if Path(runs_dir).is_dir() else ():
        try:
            if not folder.is_dir() or [p.name for p in folder.iterdir()] != ["config.json"]:
                continue
            who = json.loads((folder / "config.json").read_text("utf-8")).get("writer")
        except (OSError, ValueError, AttributeError):
            continue
        if writer_dead(who):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def clean_leftovers(store_file: Path, runs_dir: Path) -> list[Path]:
    """Both kinds, at the start of ``ckmbench run``; returns what was removed."""
    removed = clean_run_dirs(runs_dir) + clean_examples(store_file)
    for path in removed:
        log.debug("removed a leftover of a killed run: %s", path)
    return removed
