"""Which fits exist: those shipped with plugins (their ``fits_dir``) and those in the fit cache.

``ckmbench fits`` prints them so a user knows, before a run, whether it will score a stored
fit in minutes or train one first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .fitcache import FIT_FILE, FitEntry, fits_root


@dataclass
class StoredFit:
    """One fit folder and what its ``fit.json`` says."""

    entry: FitEntry
    source: str  # "shipped" or "cache"
    meta: dict
    current_version: str | None = None  # the registered method's version now (None: not registered)

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or self.entry.dir.name.rsplit("-", 1)[0])

    @property
    def complete(self) -> bool:
        return self.entry.complete()

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entry.dir.rglob("*") if p.is_file())

    def steps(self) -> str:
        done, planned = self.meta.get("steps_done"), self.meta.get("steps_planned")
        if done is None:
            return "?"
        return f"{int(done):,}/{int(planned):,}" if planned is not None else f"{int(done):,}"

    def version(self) -> str:
        """The code version the fit was made with; "(now X)" when the method has changed since
        (its fit key changed too: runs of today's code do not use this fit)."""
        made = str(self.meta.get("method_version", "?"))
        return made if self.current_version in (None, made) else f"{made} (now {self.current_version})"

    def row(self) -> list:
        m = self.meta
        train_s = m.get("train_s")
        return [self.method, m.get("train_task", "?"), m.get("train_dataset", "?"), m.get("profile", "?"),
                m.get("seed", "?"), self.steps(), human_duration(train_s) if train_s is not None else "?",
                human_size(self.size_bytes), "yes" if self.complete else "no", self.version(), self.source,
                str(self.entry.dir)]


HEADERS = ["method", "task", "dataset", "profile", "seed", "steps", "train time", "size", "complete", "version",
           "source", "path"]


def fit_folders(root: Path, source: str) -> list[StoredFit]:
    """The fit folders under ``root`` (``<method>-<key>/`` holding ``fit.json``), sorted by name."""
    from .training import STATE_FILE  # training imports this module's neighbours: not at import time

    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = FitEntry(folder.name.rsplit("-", 1)[-1], folder)
        meta = entry.meta()
        if meta is None:
            states = sorted(folder.glob(f"*/{STATE_FILE}"))
            if not states and not (folder / FIT_FILE).exists():
                continue  # not a fit folder
            # a fit stopped before it was stored (killed): its trainer state resumes it
            steps = [s for s in map(saved_step, states) if s is not None]
            meta = {"steps_done": max(steps)} if steps else {}
        out.append(StoredFit(entry, source, meta))
    return out


def saved_step(path: Path) -> int | None:
    """The step a trainer state was saved at (memory-mapped: the weights are not read)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # any unreadable state is just "?" in a listing
        return None


def shipped_dirs(registry) -> list[Path]:
    """Every distinct ``fits_dir`` the registered methods name."""
    dirs = {Path(spec.fits_dir).resolve() for spec in registry.items["methods"].values()
            if getattr(spec, "fits_dir", None)}
    return sorted(dirs)


def all_fits(registry, cache_root: Path | None = None) -> list[StoredFit]:
    """Shipped fits first, then the cached ones."""
    fits = [f for d in shipped_dirs(registry) for f in fit_folders(d, "shipped")]
    fits += fit_folders(cache_root or fits_root(), "cache")
    for fit in fits:
        if fit.method in registry.items["methods"]:
            fit.current_version = registry.method_version(fit.method)[1]
    return fits


def fits_table(fits: list[StoredFit]) -> str:
    from tabulate import tabulate

    return tabulate([f.row() for f in fits], headers=HEADERS, tablefmt="simple")


def find_fit(fits: list[StoredFit], name: str) -> list[StoredFit]:
    """Fits matching ``name``: a folder path, a folder name (or its key), or a method name."""
    path = Path(name).expanduser()
    if path.is_dir():
        same = [f for f in fits if f.entry.dir.resolve() == path.resolve()]
        entry = FitEntry(path.name.rsplit("-", 1)[-1], path)
        return same or [StoredFit(entry, "folder", entry.meta() or {})]
    return [f for f in fits if name in (f.entry.dir.name, f.entry.key, f.method)]


def human_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
