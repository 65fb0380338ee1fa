"""The results store: one JSON record per run, appended atomically (DESIGN §7).

The store is a JSON-lines file. Appends take a file lock, write the whole new file to a
temporary name and rename it over the old one, so two runs at once never lose or corrupt
a record and a crash mid-write leaves the previous file intact.

Record schema (all keys always present; values may be null):

    record_id            str   uuid4 hex
    status               str   "done" | "error" | "timeout"
    message              str   error/timeout message ("" when done)
    method               str   plugin name, e.g. "bilinear"
    method_distribution  str   distribution that registered it, e.g. "ckmbench"
    method_version       str
    task                 str   e.g. "sr4"
    dataset              str   scored dataset
    dataset_hash         str   MapDataset.content_hash of the scored dataset
    train_dataset        str   dataset the method was fitted on (== dataset unless transfer)
    train_dataset_hash   str
    profile              str   tiny | small | paper
    seed                 int
    n_test               int   number of scored maps
    map_size             [int, int]
    metrics              {name: float|null}   e.g. mse, rmse, nmse, mse_gain, rmse_gain_db,
                                              psnr, ssim, "mse@outdoor", "ssim@hole", fid
    metric_notes         {name: str|int}      e.g. fid_n, fid_weights, fid_weights_sha256,
                                              "fid": "unavailable: <reason>"
    cost                 {params, train_s, infer_s_per_map, sampling_steps, peak_mem_mb}
    hparams              {...}  the profile's hyper-parameters actually used
    config_hash          str   sha256 of the run config (method, task, datasets+hashes,
                               profile, hparams, seed, protocol_version)
    ckmbench_version     str
    protocol_version     str
    git_commit           str|null
    git_dirty            bool|null
    torch_version        str
    device               str   e.g. "cpu (x86_64, 2 cores)" or the CUDA device name
    date                 str   ISO-8601 UTC
    run_dir              str|null   run folder (not committed)
    examples             str|null   path, relative to the store's folder, of an .npz with
                                    uint8 example maps: keys, truth (K,H,W), prediction
                                    (K,H,W), observation (K,h,w) or absent
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from filelock import FileLock

from .errors import CkmError

DEFAULT_STORE = Path("results") / "records.jsonl"
_UMASK = os.umask(0)
os.umask(_UMASK)
RECORD_KEYS = (
    "record_id", "status", "message", "method", "method_distribution", "method_version", "task",
    "dataset", "dataset_hash", "train_dataset", "train_dataset_hash", "profile", "seed", "n_test",
    "map_size", "metrics", "metric_notes", "cost", "hparams", "config_hash", "ckmbench_version",
    "protocol_version", "git_commit", "git_dirty", "torch_version", "device", "date", "run_dir",
    "examples",
)


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The store file: the argument, else $CKMBENCH_STORE, else ./results/records.jsonl."""
    return Path(path or os.environ.get("CKMBENCH_STORE") or DEFAULT_STORE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=120)


def append_record(record: dict, path: str | os.PathLike | None = None) -> Path:
    """Append one record under a lock (read, add, write temp, rename)."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"result record lacks keys {missing}")
    target = store_path(path)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    with _lock(target):
        old = target.read_bytes() if target.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(target, old + line.encode("utf-8"))
    return target


def read_records(path: str | os.PathLike | None = None) -> list[dict]:
    """All records of the store, in order; a corrupt line is a one-line error naming it."""
    target = store_path(path)
    if not target.exists():
        return []
    records = []
    for lineno, line in enumerate(target.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CkmError(f"results store {target} line {lineno} is not valid JSON ({exc.msg}): fix or remove that line") from None
    return records
