"""The fit cache: a trained model is stored once and reused by every run that needs it.

A fit is keyed by (method, method version, train task, train dataset hash, profile, the
hyper-parameters that change training, seed). ``zeroshot-sr2/8/16`` train on ``sr4`` and
so reuse the ``sr4`` fit; a transfer run reuses the fit on its train dataset; scoring again
(e.g. with another sampler) reuses the first. The folder of a fit also keeps the trainer's
resumable state, so a killed or time-budgeted fit goes on where it stopped.

Layout: ``$CKMBENCH_FITS`` (default: the user cache folder ``ckmbench/fits``) /
``<method>-<key>/`` with ``fit.pt`` (the method's state_dict, weights only), ``fit.json``
(what was trained, how far, and ``fit_sha256``: the sha256 of ``fit.pt``) and the trainer's
``<model>/train_state.pt``. A fit file whose bytes no longer match ``fit_sha256`` is refused
before it is loaded (never scored); a cached fit from before checksums counts as unfinished
and is trained again (resumed) once. A plugin's shipped fits carry the field too:
:func:`stamp_fit` writes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .digest import file_sha256
from .errors import CkmError
from .results import atomic_write_text

FIT_FILE = "fit.pt"
META_FILE = "fit.json"


def fits_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("CKMBENCH_FITS") or Path(user_cache_dir("ckmbench")) / "fits")


def fit_key(method: str, method_version: str, train_task: str, train_dataset_hash: str, profile: str,
            hparams: dict, seed: int) -> str:
    """sha256 over everything that changes a fit (callers drop predict-only hyper-parameters)."""
    text = json.dumps({"method": method, "version": method_version, "train_task": train_task,
                       "train_dataset_hash": train_dataset_hash, "profile": profile, "hparams": hparams,
                       "seed": int(seed)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Prediction-only settings every method accepts (--set): never part of a fit's key.
# sample_amp=bf16 predicts (samples) a fp32 fit under bf16 autocast.
GENERIC_PREDICT_HPARAMS = ("sample_amp",)


def fit_hparams(method, hparams: dict) -> dict:
    """The hyper-parameters that change training: all but the method's ``predict_hparams``
    (and the generic prediction-only ones).

    Keys named in the method's ``weight_files`` ({hparam: environment variable or None}) name a
    local weights file (ImageNet VGG19, Swin...): the key holds the file's content digest, not its
    path, so moving the file reuses the fit and another file (or one given only through the
    environment variable) never does."""
    skip = set(getattr(method, "predict_hparams", ())) | set(GENERIC_PREDICT_HPARAMS)
    out = {k: v for k, v in sorted(hparams.items()) if k not in skip}
    for key, env_var in (getattr(method, "weight_files", None) or {}).items():
        given = hparams.get(key) or (os.environ.get(env_var) if env_var else None)
        if given:
            out[key] = {"sha256": file_digest(Path(given).expanduser(), what=key)}
    return out


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def file_digest(path: Path, what: str = "file") -> str:
    """sha256 of a weights file (memoised per path, size and modification time)."""
    try:
        st = path.stat()
    except OSError:
        raise CkmError(f"{what}: {path} is not a readable file: give the path of the local weights file") from None
    if not path.is_file():
        raise CkmError(f"{what}: {path} is not a file: give the path of the local weights file")
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def stamp_fit(folder) -> str:
    """Write the sha256 of ``folder/fit.pt`` into ``folder/fit.json`` as ``fit_sha256`` (for a
    plugin's shipped fits, after training them); returns the digest."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        digest = file_sha256(folder / FIT_FILE)
    except (OSError, ValueError) as exc:
        raise CkmError(f"cannot stamp the fit in {folder} ({exc}): it needs a fit.pt and a readable fit.json") from None
    atomic_write_text(meta_path, json.dumps({**meta, "fit_sha256": digest}, indent=1, sort_keys=True, default=str))
    return digest


@dataclass
class FitEntry:
    """One fit's folder in the cache (or, ``shipped``, in a plugin's read-only ``fits_dir``)."""

    key: str
    dir: Path
    shipped: bool = False

    @classmethod
    def for_run(cls, method_name: str, key: str, root: Path | None = None) -> "FitEntry":
        """The fit's folder in the user's cache, or under ``root``: a plugin's shipped fits."""
        return cls(key, (root or fits_root()) / f"{method_name}-{key}", shipped=root is not None)

    @property
    def meta_path(self) -> Path:
        return self.dir / META_FILE

    def meta(self) -> dict | None:
        if not self.meta_path.exists():
            return None
        try:
            return json.loads(self.meta_path.read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def complete(self) -> bool:
        """A finished fit (not one stopped by a time budget) whose weights are on disk; a cached
        fit must also carry its checksum (one from before checksums is trained again, once)."""
        meta = self.meta()
        return bool(meta and meta.get("complete") and (self.dir / FIT_FILE).exists()
                    and (self.shipped or meta.get("fit_sha256")))

    def verify(self) -> None:
        """Refuse a fit file whose bytes are not those ``fit.json`` names (a flipped byte, a
        truncated copy): one line with the fix, before anything is loaded or scored."""
        path = self.dir / FIT_FILE
        want = (self.meta() or {}).get("fit_sha256")
        if want and path.is_file() and file_sha256(path) == want:
            return
        why = "" if want else " (its fit.json has no fit_sha256)"
        if self.shipped:
            raise CkmError(f"shipped fit damaged: {path}{why}; reinstall ckmbench")
        raise CkmError(f"fit file damaged: {path}{why}; run with --refit (or delete {self.dir})")

    def load(self, map_location="cpu") -> dict:
        from .checkpoints import load_checkpoint_file

        self.verify()
        return load_checkpoint_file(self.dir / FIT_FILE, map_location=map_location)

    def save(self, state: dict, meta: dict) -> None:
        """Weights first, then the metadata (with their sha256) that declares them usable (both atomic)."""
        import io

        import torch

        from .results import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / FIT_FILE, data)
        meta = {**meta, "fit_sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1, sort_keys=True, default=str))

    def clear(self) -> None:
        """Forget this fit (``--refit`` of a finished one, ``--restart``): weights and resumable state."""
        if self.dir.exists():
            shutil.rmtree(self.dir)


def describe(entry: FitEntry, source: str, meta: dict | None) -> dict:
    """The ``fit`` field of a record: which fit was used and how it came about (``source`` is
    "trained", "cache" or "shipped"; the rest is what the method reported, e.g. steps_done,
    budget_reached, and LiCGDM's params_before/params_after)."""
    out = {k: v for k, v in (meta or {}).items()
           if k not in ("hparams", "method", "method_version", "seed", "profile", "fit_sha256")}
    out.update(key=entry.key, source=source, dir=str(entry.dir))
    return out


def drop_train_state(fit_dir: Path) -> int:
    """Delete the trainer's resumable state files under a finished fit's folder; bytes freed."""
    from .training import STATE_FILE

    freed = 0
    for path in Path(fit_dir).rglob(STATE_FILE):
        try:
            size = path.stat().st_size
            path.unlink()
            freed += size
        except OSError:
            continue
    return freed
