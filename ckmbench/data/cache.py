"""On-disk cache of generated datasets, keyed by their full config.

Layout: ``$CKMBENCH_DATA/<name>-<key12>/`` holding ``arrays.npz`` and ``meta.json``. The
folder is built under a temporary name and renamed into place, so a crash never leaves a
half-written entry under the final name; temporary folders left by a killed build (their
owner pid is dead) are swept on the next build. ``meta.json`` stores the sha256 of the npz file
and the dataset's content hash; both are checked on load, and an entry that fails either
check is reported and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock
from platformdirs import user_cache_dir

from .sample import MapDataset

log = logging.getLogger("ckmbench.data")
CACHE_FORMAT = 1
ARRAYS = ("gain_db", "buildings", "cars", "tx", "gain_range", "scene", "tx_index")


def data_root() -> Path:
    """$CKMBENCH_DATA, else the user's cache folder (e.g. ~/.cache/ckmbench/data)."""
    return Path(os.environ.get("CKMBENCH_DATA") or Path(user_cache_dir("ckmbench")) / "data")


def cache_key(name: str, config: dict) -> str:
    text = json.dumps({"name": name, "format": CACHE_FORMAT, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_dir(name: str, config: dict, suffix: str = "") -> Path:
    return data_root() / f"{name}-{cache_key(name, config)[:12]}{suffix}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_entry(folder: Path, ds: MapDataset, config: dict) -> None:
    """Write ``ds`` to ``folder`` atomically (temp folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-{os.getpid()}-"))
    try:
        arrays = {k: getattr(ds, k) for k in ARRAYS}
        arrays["scene"] = np.asarray(ds.scene).astype(str)
        with open(tmp / "arrays.npz", "wb") as fh:
            np.savez(fh, **arrays)
        meta = {
            "format": CACHE_FORMAT,
            "name": ds.name,
            "config": config,
            "pixel_m": ds.pixel_m,
            "splits": ds.splits,
            "meta": ds.meta,
            "content_hash": ds.content_hash,
            "arrays_sha256": _file_sha256(tmp / "arrays.npz"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_entry(folder: Path) -> MapDataset:
    """Load and verify a cache entry; raises ValueError when it is incomplete or corrupt."""
    meta_path, npz_path = folder / "meta.json", folder / "arrays.npz"
    if not meta_path.exists() or not npz_path.exists():
        raise ValueError(f"incomplete cache entry {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt meta.json in {folder}: {exc.msg}") from None
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache entry {folder} has format {meta.get('format')}, expected {CACHE_FORMAT}")
    if _file_sha256(npz_path) != meta.get("arrays_sha256"):
        raise ValueError(f"checksum mismatch in {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAYS}
    except Exception as exc:  # zip/npy errors of a damaged file
        raise ValueError(f"unreadable {npz_path}: {exc}") from None
    ds = MapDataset(name=meta["name"], pixel_m=float(meta["pixel_m"]), splits=meta["splits"],
                    meta=meta.get("meta", {}), content_hash=meta["content_hash"], **arrays)
    if ds.compute_hash() != meta["content_hash"]:
        raise ValueError(f"content hash mismatch in {folder}")
    return ds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp(folder: Path) -> list[Path]:
    """Remove the temporary build folders of ``folder`` whose owner process is dead (a killed
    build); called under the entry's lock, so no live build of this entry owns them."""
    removed = []
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid_text = tmp.name[len(f".{folder.name}.tmp-"):].split("-", 1)[0]
        owner = int(pid_text) if pid_text.isdigit() else None
        if owner is not None and owner != os.getpid() and _pid_alive(owner):
            continue
        if owner is None and time.time() - tmp.stat().st_mtime < 3600:
            continue  # an old-style name: only once it is clearly abandoned
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d stale temporary folder(s) of %s", len(removed), folder.name)
    return removed


def cached(name: str, config: dict, build: Callable[..., MapDataset], force: bool = False,
           resumable: bool = False) -> MapDataset:
    """The dataset for (name, config): from the cache when valid, else built and stored.

    A lock per entry makes concurrent runs build it once; an invalid entry is logged and
    rebuilt. ``resumable``: ``build(work_dir)`` gets a work folder that survives a killed
    build (``<entry>.work``) and is removed once the entry is saved.
    """
    folder = entry_dir(name, config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=3600):
        sweep_stale_temp(folder)
        if folder.exists() and not force:
            try:
                return load_entry(folder)
            except ValueError as exc:
                log.warning("dataset cache for '%s' is invalid (%s); rebuilding it", name, exc)
        work = folder.with_name(folder.name + ".work")
        if force and work.exists():
            shutil.rmtree(work, ignore_errors=True)
        ds = build(work) if resumable else build()
        save_entry(folder, ds, config)
        if resumable:
            shutil.rmtree(work, ignore_errors=True)
        return ds


def merge_datasets(name: str, parts: list[MapDataset]) -> MapDataset:
    """Concatenate shard datasets (disjoint scenes) into one, merging their splits."""
    if not parts:
        raise ValueError("no shards to merge")
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ARRAYS}
    order = np.lexsort((cat["tx_index"], cat["scene"]))
    splits: dict[str, list[str]] = {}
    for p in parts:
        for k, v in p.splits.items():
            splits.setdefault(k, []).extend(v)
    splits = {k: sorted(v) for k, v in splits.items()}
    return MapDataset(name=name, pixel_m=parts[0].pixel_m, splits=splits, meta=dict(parts[0].meta),
                      **{k: v[order] for k, v in cat.items()})
