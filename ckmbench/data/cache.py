"""On-disk cache of datasets, keyed by their full config.

Layout: ``$CKMBENCH_DATA/<name>-<key12>/`` holding ``arrays.npz`` and ``meta.json``. The
folder is built under a temporary name and renamed into place, so a crash never leaves a
half-written entry under the final name; temporary folders left by a killed build (their
owner pid is dead) are swept on the next build. ``meta.json`` stores the sha256 of the npz file
and the dataset's content hash; both are checked on load, and an entry that fails either
check is reported and rebuilt, never used.

An **on-disk entry** (``storage: "ondisk"``, docs/scale.md) holds one ``.npy`` file per array
instead, read row by row (:mod:`ckmbench.data.ondisk`), so a dataset larger than RAM is
usable. It is written in its ``.work`` folder by an :class:`OnDiskWriter` (resumable: the
rows written are listed in ``progress.json`` after an fsync), then gets its ``meta.json``
(sha256 and size of every file, the content hash computed while writing) and is renamed
into place. A load checks every file's size and sha256 (once per process and file version;
``CKMBENCH_VERIFY=size`` checks sizes only) and does not re-hash the content: the files'
checksums pin it.
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

from ..digest import file_sha256
from ..results import _pid_alive, check_writable_dir
from .ondisk import DiskRows, RowFile, create_npy
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
            "arrays_sha256": file_sha256(tmp / "arrays.npz"),
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
    if not meta_path.exists():
        raise ValueError(f"incomplete cache entry {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt meta.json in {folder}: {exc.msg}") from None
    if meta.get("storage") == "ondisk":
        return _load_ondisk(folder, meta)
    if not npz_path.exists():
        raise ValueError(f"incomplete cache entry {folder}")
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache entry {folder} has format {meta.get('format')}, expected {CACHE_FORMAT}")
    if file_sha256(npz_path) != meta.get("arrays_sha256"):
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
           resumable: bool = False, ondisk: bool = False) -> MapDataset:
    """The dataset for (name, config): from the cache when valid, else built and stored.

    A lock per entry makes concurrent runs build it once; an invalid entry is logged and
    rebuilt. ``resumable``: ``build(work_dir)`` gets a work folder that survives a killed
    build (``<entry>.work``) and is removed once the entry is saved. ``ondisk``: ``build``
    writes an on-disk entry into the work folder (:class:`OnDiskWriter`), which becomes the
    entry.
    """
    folder = entry_dir(name, config)
    check_writable_dir(folder.parent, f"dataset cache folder {folder.parent} ($CKMBENCH_DATA)",
                       "point $CKMBENCH_DATA at a folder you can write, or unset it")
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
        ds = build(work) if resumable or ondisk else build()
        if ondisk:
            save_ondisk_entry(work, folder, ds, config)
            return load_entry(folder)
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


# ----------------------------------------------------------------------------- on-disk entries
ONDISK_LAYOUT = "layout.json"
PROGRESS = "progress.json"
_VERIFIED: set[tuple] = set()


def _atomic_json(path: Path, value) -> None:
    from ..results import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True, default=str))


class OnDiskWriter:
    """Fills the ``.npy`` files of an on-disk entry row by row in ``work``, resumably.

    ``files``: {name: (dtype, shape)}. Units of work (e.g. maps) are marked done with
    :meth:`mark_done`; every few seconds the files are fsynced and ``progress.json`` lists
    the done units, so a killed writer resumes (same ``plan_id``) without redoing them. A
    work folder of another plan is cleared.
    """

    def __init__(self, work: Path, plan_id: str, files: dict, every_s: float = 2.0):
        self.work = Path(work)
        self.plan_id = plan_id
        self.every_s = every_s
        self.work.mkdir(parents=True, exist_ok=True)
        shapes = {k: [str(np.dtype(d)), list(shp)] for k, (d, shp) in files.items()}
        progress = self._progress()
        if progress.get("plan_id") == plan_id and progress.get("files") == shapes and \
                all((self.work / f"{k}.npy").is_file() for k in files):
            self.done = set(int(k) for k in progress.get("done", []))
            if self.done:
                log.info("resuming the conversion in %s: %d unit(s) already written", self.work, len(self.done))
        else:
            for old in self.work.iterdir():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            for k, (dtype, shape) in files.items():
                create_npy(self.work / f"{k}.npy", dtype, shape)
            self.done = set()
        self.shapes = shapes
        self.files = {k: RowFile(self.work / f"{k}.npy", writable=True) for k in files}
        for f in self.files.values():
            f._handle()  # opened here, not concurrently from worker threads
        self._last = time.monotonic()
        if not progress or progress.get("plan_id") != plan_id:
            self.checkpoint()

    def _progress(self) -> dict:
        try:
            return json.loads((self.work / PROGRESS).read_text())
        except (OSError, ValueError):
            return {}

    def write(self, name: str, row: int, values) -> None:
        self.files[name].write(row, values)

    def mark_done(self, unit: int) -> None:
        self.done.add(int(unit))
        if time.monotonic() - self._last >= self.every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make the rows written durable, then record which units they are."""
        for f in self.files.values():
            f.sync()
        _atomic_json(self.work / PROGRESS, {"plan_id": self.plan_id, "files": self.shapes, "done": sorted(self.done)})
        self._last = time.monotonic()

    def dataset(self, name: str, decode: dict, rows: dict, small: dict, pixel_m: float, splits: dict,
                meta: dict) -> MapDataset:
        """The finished entry's dataset (content hash computed from the files).

        ``decode``: {file: (field, scale, offset)} -- the field is ``float32(stored) * scale +
        offset``; ``rows``: {field: row of each sample in its file}; ``small``: arrays kept in
        memory (saved as ``.npy`` too).
        """
        self.checkpoint()
        for f in self.files.values():
            f.close()
        fields = {}
        for k in self.files:
            target, *affine = decode.get(k, (k,))
            fields[target] = {"file": f"{k}.npy", "affine": [float(v) for v in affine] or None}
        for k, idx in rows.items():
            np.save(self.work / f"{k}_rows.npy", np.asarray(idx, np.int64))
            fields[k]["rows"] = f"{k}_rows.npy"
        for k, arr in small.items():
            np.save(self.work / f"{k}.npy", np.asarray(arr), allow_pickle=False)
            fields[k] = {"file": f"{k}.npy", "memory": True}
        _atomic_json(self.work / ONDISK_LAYOUT, {"name": name, "pixel_m": float(pixel_m), "splits": splits,
                                                 "meta": meta, "fields": fields})
        return open_ondisk(self.work)


_IN_MEMORY_FIELDS = ("tx", "gain_range", "scene", "tx_index")


def _affine(scale: float, offset: float):
    scale32, offset32 = np.float32(scale), np.float32(offset)

    def decode(stored: np.ndarray) -> np.ndarray:
        out = np.multiply(stored, scale32, dtype=np.float32)
        out += offset32
        return out

    return decode


def open_ondisk(folder: Path, content_hash: str = "") -> MapDataset:
    """The dataset of an on-disk entry's ``layout.json`` (images lazy, the rest in memory)."""
    layout = json.loads((folder / ONDISK_LAYOUT).read_text())
    arrays = {}
    for field, spec in layout["fields"].items():
        path = folder / spec["file"]
        if spec.get("memory") or field in _IN_MEMORY_FIELDS:
            arrays[field] = np.load(path, allow_pickle=False)
            continue
        rows = np.load(folder / spec["rows"]) if spec.get("rows") else None
        affine = spec.get("affine")
        arrays[field] = DiskRows(RowFile(path), rows, _affine(*affine) if affine else None,
                                 np.float32 if affine else None)
    return MapDataset(name=layout["name"], pixel_m=float(layout["pixel_m"]), splits=layout["splits"],
                      meta=layout.get("meta", {}), content_hash=content_hash, **arrays)


def _entry_files(folder: Path) -> list[str]:
    layout = json.loads((folder / ONDISK_LAYOUT).read_text())
    names = {ONDISK_LAYOUT}
    for spec in layout["fields"].values():
        names.add(spec["file"])
        if spec.get("rows"):
            names.add(spec["rows"])
    return sorted(names)


def save_ondisk_entry(work: Path, folder: Path, ds: MapDataset, config: dict) -> None:
    """Seal the on-disk entry written in ``work`` (checksums, meta.json) and rename it into place."""
    files = {name: {"sha256": file_sha256(work / name), "size": (work / name).stat().st_size}
             for name in _entry_files(work)}
    (work / PROGRESS).unlink(missing_ok=True)
    _atomic_json(work / "meta.json", {"format": CACHE_FORMAT, "storage": "ondisk", "name": ds.name,
                                      "config": config, "content_hash": ds.content_hash, "files": files})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)


def _load_ondisk(folder: Path, meta: dict) -> MapDataset:
    fix = "delete that folder (or run `ckmbench data convert --force`) and it is converted again"
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache entry {folder} has format {meta.get('format')}, expected {CACHE_FORMAT}: {fix}")
    full = os.environ.get("CKMBENCH_VERIFY", "full") != "size"
    for name, want in sorted(meta.get("files", {}).items()):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"missing file {path} in the on-disk cache: {fix}")
        st = path.stat()
        if st.st_size != want["size"]:
            raise ValueError(f"{path} has {st.st_size} bytes, expected {want['size']} (truncated or replaced): {fix}")
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, want["sha256"])
        if full and key not in _VERIFIED:
            if file_sha256(path) != want["sha256"]:
                raise ValueError(f"checksum mismatch in {path} (the file changed after conversion): {fix}")
            _VERIFIED.add(key)
    return open_ondisk(folder, content_hash=meta["content_hash"])
