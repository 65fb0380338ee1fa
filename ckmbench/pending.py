"""Per-run record files and ``ckmbench results collect`` (docs/scale.md).

Jobs on many nodes never append to the store: each writes its record as one file in the
store's pending folder (``<store>.pending/<record_id>.json``, through a temporary name and a
rename, so a file there is always whole), beside an ``.npz`` payload for a shard. Nothing
there needs a lock, which shared filesystems do not honour reliably.

``collect`` then merges them on one machine: plain records are appended, the shards of a run
are merged into one record once all n are done (``ckmbench.shards``), a failed shard is
stored as the failure it is. Exactly once, also after a crash: the store is written first
(one atomic rename, under the store's local lock), then the files are removed, and a record
whose id the store already holds is skipped -- a merged record's id is derived from its
shards' ids, so collecting again finds it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CkmError
from .results import (RECORD_KEYS, _lock, atomic_write_bytes, atomic_write_text, finite_record, read_records,
                      record_line, store_path)

log = logging.getLogger("ckmbench.collect")


def pending_dir(store=None) -> Path:
    """Where the per-run record files of a store wait: ``<store>.pending/``."""
    path = store_path(store)
    return path.with_name(path.name + ".pending")


def write_pending(record: dict, store=None, payload: bytes | None = None) -> Path:
    """The record as a file of its own (payload first: the ``.json`` is what makes it count)."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"result record lacks keys {missing}")
    folder = pending_dir(store)
    if payload is not None:
        atomic_write_bytes(folder / f"{record['record_id']}.npz", payload)
    target = folder / f"{record['record_id']}.json"
    atomic_write_text(target, json.dumps(finite_record(record), sort_keys=True, default=str))
    return target


def finished_record(config_hash: str, store=None, shard: tuple[int, int] | None = None) -> str | None:
    """The id of a ``done`` record of this configuration in the store, or waiting in its pending
    folder (for a shard: one of the same shard), else None: what ``run --resume`` skips."""
    for rec in read_records(store_path(store)):
        if rec.get("config_hash") == config_hash and rec.get("status") == "done":
            return rec.get("record_id")
    folder = pending_dir(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            rec = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue  # `results collect` reports it
        if not isinstance(rec, dict) or rec.get("config_hash") != config_hash or rec.get("status") != "done":
            continue
        got = rec.get("shard")
        same = got is None if shard is None else bool(got) and (got.get("index"), got.get("count")) == tuple(shard)
        if same:
            return rec.get("record_id")
    return None


@dataclass
class CollectReport:
    appended: list[dict] = field(default_factory=list)
    skipped: int = 0  # already in the store (an earlier, interrupted collect)
    waiting: list[str] = field(default_factory=list)  # incomplete shard groups, one line each

    def summary(self, store: Path) -> str:
        merged = sum(1 for r in self.appended if r.get("shard"))
        lines = [f"{len(self.appended)} record(s) added to {store} ({merged} merged from shards)"
                 + (f"; {self.skipped} already there" if self.skipped else "")]
        lines += [f"waiting: {w}" for w in self.waiting]
        return "\n".join(lines)


def _read_pending(path: Path) -> dict:
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CkmError(f"pending record {path} is unreadable ({exc}): remove it (its run folder keeps record.json)") from None
    if not isinstance(record, dict) or "record_id" not in record:
        raise CkmError(f"pending record {path} is not a ckmbench record: remove it")
    return record


def _shard_groups(records: list[tuple[Path, dict]], registry, known: set) -> tuple[list, list, list[str]]:
    """(records to store, files consumed, waiting lines) of the shard records."""
    from .shards import merge_shards, merged_record_id

    groups: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path, rec in records:
        groups[rec["shard"]["group"]].append((path, rec))
    out, consumed, waiting = [], [], []
    for group, items in sorted(groups.items()):
        count = int(items[0][1]["shard"]["count"])
        newest: dict[int, tuple[Path, dict]] = {}
        for path, rec in sorted(items, key=lambda pr: (pr[1]["date"], pr[1]["record_id"])):
            if rec["status"] == "done":
                newest[int(rec["shard"]["index"])] = (path, rec)
            else:  # a failure is stored as one, so the leaderboard shows it until a merge replaces it
                out.append(rec)
                consumed.append(path)
        if len(newest) < count:
            first = items[0][1]
            have = ", ".join(str(i) for i in sorted(newest)) or "none"
            waiting.append(f"{first['method']} on {first['task']} ({first['dataset']}, seed {first['seed']}): "
                           f"shards done {have} of {count}")
            continue
        chosen = [newest[i] for i in range(count)]
        if merged_record_id([r for _, r in chosen]) not in known:
            payloads = [p.with_suffix(".npz").read_bytes() for p, _ in chosen]
            out.append(merge_shards([r for _, r in chosen], payloads, registry=registry))
        consumed += [p for p, _ in items if p not in consumed]
    return out, consumed, waiting


def collect(store=None, registry=None) -> CollectReport:
    """Merge the store's pending record files into it, exactly once (see the module docstring)."""
    target = store_path(store)
    folder = pending_dir(store)
    report = CollectReport()
    if not folder.is_dir():
        return report
    with _lock(target):
        known = {r.get("record_id") for r in read_records(target)}
        entries = [(p, _read_pending(p)) for p in sorted(folder.glob("*.json"))]
        plain = [(p, r) for p, r in entries if not r.get("shard")]
        sharded = [(p, r) for p, r in entries if r.get("shard")]
        merged, consumed, report.waiting = _shard_groups(sharded, registry, known)
        new = [r for _, r in plain] + merged
        consumed = [p for p, _ in plain] + consumed
        fresh = []
        for rec in new:
            if rec["record_id"] in known:
                report.skipped += 1
            else:
                known.add(rec["record_id"])
                fresh.append(rec)
        if fresh:
            old = target.read_bytes() if target.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write_bytes(target, old + b"".join(record_line(r).encode("utf-8") for r in fresh))
        for path in consumed:  # only once the store holds them
            path.unlink(missing_ok=True)
            path.with_suffix(".npz").unlink(missing_ok=True)
    report.appended = fresh
    for stray in folder.glob(".*.tmp"):  # temporary files of writers that died mid-write
        if stray.stat().st_mtime < time.time() - 3600:
            stray.unlink(missing_ok=True)
    return report
