"""The results store: one JSON record per run, appended atomically (docs/protocol.md §5).

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
    cost                 {params, train_s, infer_s_per_map, sampling_steps, peak_mem_mb, threads[, params_inference]}
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
                                    (K,H,W), observation (K,h,w) or absent, gain_range (K,2) dB

Optional keys: per_map (path, relative to the store's folder, of an .npz with each test map's
scene and per-map metric values, float32: the leaderboard's bootstrap intervals), method_kind ("baseline" | "learned" | "diffusion"; only learned methods are
"fitted on" a dataset), overrides (the run's ``--set`` hyper-parameters, {} for the profile as
it is; a run with overrides is its own leaderboard row, "method with key=value"), fit, shard (a sharded run: {index, count, group, n_total} on a shard's
record, {count, group, records} on the record merged from them; docs/scale.md), ... A non-finite number anywhere in a record (NaN metric or
hyper-parameter) is stored as null, and metric_notes["nonfinite"] names where it was.

Each line also carries ``_sum``: the first 12 hex digits of the sha256 of the line's record
without ``_sum``, as canonical JSON (keys sorted, no spaces). A line whose sum does not match
(a flipped digit in a metric) is refused as a corrupt line is; lines without ``_sum`` (stores
written before it existed) are read as they are, and ``ckmbench results stamp`` adds the sums.
``read_records`` returns records without ``_sum``.

Where the store is: ``--store``, else $CKMBENCH_STORE, else the user store
(``<user data dir>/ckmbench/results/records.jsonl``), never the project's committed
results/records.jsonl unless it is named explicitly. Run folders go beside the store
(``<store folder>/runs``) unless ``--runs-dir`` says otherwise.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from platformdirs import user_data_dir

from .errors import CkmError

PROJECT_STORE = Path("results") / "records.jsonl"  # the committed store: only when named explicitly
_UMASK = os.umask(0)
os.umask(_UMASK)
RECORD_KEYS = (
    "record_id", "status", "message", "method", "method_distribution", "method_version", "task",
    "dataset", "dataset_hash", "train_dataset", "train_dataset_hash", "profile", "seed", "n_test",
    "map_size", "metrics", "metric_notes", "cost", "hparams", "config_hash", "ckmbench_version",
    "protocol_version", "git_commit", "git_dirty", "torch_version", "device", "date", "run_dir",
    "examples",
)


def user_dir() -> Path:
    """The user's ckmbench folder (platformdirs user data dir), home of the default store."""
    return Path(user_data_dir("ckmbench", appauthor=False))


def default_store() -> Path:
    return user_dir() / "results" / "records.jsonl"


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The store file: the argument, else $CKMBENCH_STORE, else the user store (never the
    project's committed results/records.jsonl unless it is passed explicitly)."""
    return Path(path or os.environ.get("CKMBENCH_STORE") or default_store())


def default_runs_dir(store: str | os.PathLike | None = None) -> Path:
    """Run folders go beside the store: <store folder>/runs."""
    return store_path(store).parent / "runs"


def check_writable_dir(folder: str | os.PathLike, shown: str, fix: str) -> Path:
    """The folder, created if need be, or a one-line CkmError ("<shown> is not writable
    (<reason>): <fix>") when a file cannot be written into it: checked before work
    whose result would otherwise be lost (or end in a traceback) at the end."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CkmError(f"{shown} is not writable (it is a file, not a folder): {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        try:
            os.write(fd, b"x" * 4096)  # a full disk fails here, not only on create
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise CkmError(f"{shown} is not writable ({exc.strerror or exc}): {fix}") from None
    return folder


def check_store_writable(path: str | os.PathLike | None = None) -> Path:
    """Raise CkmError unless a record (and its examples) can be written to the store: checked
    before a run does any work, so its result is never lost at the end."""
    target = store_path(path)
    check_writable_dir(target.parent, f"the folder of results store {target}",
                       "free space or fix the folder's permissions, or pass --store PATH")
    if target.exists() and not os.access(target, os.W_OK):
        raise CkmError(f"results store {target} is read-only: make it writable or pass --store PATH")
    if target.is_dir():
        raise CkmError(f"results store {target} is a folder: pass --store pointing at a .jsonl file")
    return target


def _finite(value, where: str, bad: list[str]):
    """``value`` with every non-finite float replaced by None (its path appended to ``bad``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    return value


def finite_record(record: dict) -> dict:
    """The record with NaN/inf stored as null and a note saying where (JSON has no NaN)."""
    bad: list[str] = []
    clean = _finite(dict(record), "", bad)
    if bad:
        notes = dict(clean.get("metric_notes") or {})
        notes["nonfinite"] = "not finite, stored as null: " + ", ".join(bad)
        clean["metric_notes"] = notes
    return clean


def _writer_tag() -> str:
    """``<host>-<pid>`` of this process, put in temporary file names so that a leftover of a
    killed writer can be told from a live writer's file (:func:`remove_stale_tmps`)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (also used by the data cache)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_tmps(path: Path) -> list[Path]:
    """Remove the temporary full copies of ``path`` left by writers killed mid-write: only
    files named by :func:`atomic_write_bytes` on this host whose writer pid is dead (a live
    writer's file, another host's, or an older unnamed one is kept). Returns those removed."""
    host = _writer_tag().rsplit("-", 1)[0]
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
    removed = []
    for stray in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = pattern.match(stray.name)
        if m and m["host"] == host and not _pid_alive(int(m["pid"])):
            stray.unlink(missing_ok=True)
            removed.append(stray)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).
    The temporary name holds the writer's host and pid (``.<name>.<host>-<pid>.<random>.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp")
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
    line = record_line(record)
    with _lock(target):
        remove_stale_tmps(target)
        old = target.read_bytes() if target.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(target, old + line.encode("utf-8"))
    return target


SUM_KEY = "_sum"


def line_sum(record: dict) -> str:
    """The store line checksum: 12 hex of sha256 over the record without ``_sum`` as canonical
    JSON. Catches an edited or flipped value that still parses (a changed metric digit)."""
    body = {k: v for k, v in record.items() if k != SUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def record_line(record: dict) -> str:
    """One record as its store line (non-finite numbers as null, keys sorted, ``_sum`` added)."""
    clean = json.loads(json.dumps(finite_record(record), allow_nan=False, default=_json_default))
    clean.pop(SUM_KEY, None)
    clean[SUM_KEY] = line_sum(clean)
    return json.dumps(clean, sort_keys=True, allow_nan=False) + "\n"


def _json_default(value):
    """numpy scalars and the like as plain JSON numbers; anything else as its string."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_records(path: str | os.PathLike | None = None, missing_ok: bool = True) -> list[dict]:
    """All records of the store, in order; a corrupt line is a one-line error naming it.

    A store that does not exist is an empty list, or an error when ``missing_ok`` is False
    (a typo in --store must not read as "no results").
    """
    target = store_path(path)
    if not target.exists():
        if missing_ok:
            return []
        raise CkmError(f"results store {target} does not exist: check the --store path "
                       f"(default: $CKMBENCH_STORE or {default_store()})")
    if target.is_dir():
        raise CkmError(f"results store {target} is a folder: pass --store pointing at the .jsonl file")
    records = []
    for lineno, raw in enumerate(target.read_bytes().splitlines(), 1):
        record = _parse_line(raw, f"results store {target} line {lineno}")
        if record is not None:
            record.pop(SUM_KEY, None)
            records.append(record)
    return records


def _parse_line(raw: bytes, where: str) -> dict | None:
    """One store line as a record (with its ``_sum``, checked when present), None when blank;
    a corrupt line is a one-line CkmError naming it."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CkmError(f"{where} is not UTF-8 (byte {exc.start + 1}): fix or remove that line") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CkmError(f"{where} is not valid JSON ({exc.msg}): fix or remove that line") from None
    if not isinstance(record, dict):
        raise CkmError(f"{where} is a JSON {type(record).__name__}, not a record object: fix or remove that line")
    if SUM_KEY in record and record[SUM_KEY] != line_sum(record):
        raise CkmError(f"{where} does not match its checksum ({SUM_KEY} {record[SUM_KEY]!r}, content "
                       f"{line_sum(record)}): the line was altered; fix or remove that line")
    for group in ("metrics", "cost"):
        values = record.get(group)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise CkmError(f"{where}: '{group}' is {values!r}, not an object: fix or remove that line")
        for name, value in values.items():
            if not _number_or_null(value):
                raise CkmError(f"{where}: {group} '{name}' is {value!r}, not a number or null: "
                               "fix or remove that line")
    return record


def stamp_store(path: str | os.PathLike | None = None) -> tuple[Path, int, int]:
    """Rewrite the store (atomically, under its lock) with a ``_sum`` on every line; every line
    is checked first, so a corrupt one stops it. Returns (store, lines stamped, lines already
    stamped)."""
    target = store_path(path)
    read_records(target, missing_ok=False)  # the usual errors for a missing store or a folder
    with _lock(target):
        remove_stale_tmps(target)
        lines, stamped, had = [], 0, 0
        for lineno, raw in enumerate(target.read_bytes().splitlines(), 1):
            record = _parse_line(raw, f"results store {target} line {lineno}")
            if record is None:
                continue
            had += SUM_KEY in record
            stamped += SUM_KEY not in record
            lines.append(record_line(record))
        if stamped:
            atomic_write_text(target, "".join(lines))
    return target, stamped, had


def update_records(path: str | os.PathLike | None, updates: dict[str, dict]) -> int:
    """Set fields of the records named by id (``{record_id: {field: value}}``), rewriting the
    store atomically under its lock with fresh line checksums; returns the lines changed."""
    target = store_path(path)
    read_records(target, missing_ok=False)  # the usual errors for a missing or corrupt store
    changed = 0
    with _lock(target):
        remove_stale_tmps(target)
        lines = []
        for lineno, raw in enumerate(target.read_bytes().splitlines(), 1):
            record = _parse_line(raw, f"results store {target} line {lineno}")
            if record is None:
                continue
            extra = updates.get(record.get("record_id"))
            if extra:
                record = {**{k: v for k, v in record.items() if k != SUM_KEY}, **extra}
                changed += 1
            lines.append(record_line(record))
        if changed:
            atomic_write_text(target, "".join(lines))
    return changed
