"""Per-map metric files beside the store: what the leaderboard's scene-level bootstrap needs.

A run writes ``per_map/<record_id>.npz`` (``scene`` plus one float32 array per metric) when it
is stored. Records made before those files existed can get one from their run folder's
``per_sample.csv`` (``ckmbench results permap RUN_DIR...``): the same values, one row per map,
named ``<scene>/<tx>``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .errors import CkmError
from .results import atomic_write_bytes, update_records

PER_MAP_DIR = "per_map"


def write_per_map(store_file: Path, record_id: str, scenes, per_sample: dict, notes: dict) -> str | None:
    """Each map's metric values and its scene as ``per_map/<record_id>.npz`` beside the store;
    returns the path relative to the store's folder (None when no metric is per map). A metric
    scored a paper's way (``<name>_convention`` in the notes) is left out: its per-map values are
    not the ones its summary averages."""
    scenes = np.asarray(list(scenes)).astype(str)
    skip = {key[: -len("_convention")] for key in notes if key.endswith("_convention")}
    arrays = {name: np.asarray(values, dtype=np.float32) for name, values in per_sample.items()
              if np.ndim(values) == 1 and len(values) == len(scenes) and name.split("@")[0] not in skip}
    if not arrays:
        return None
    rel = Path(PER_MAP_DIR) / f"{record_id}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, scene=scenes, **arrays)
    atomic_write_bytes(store_file.parent / rel, buf.getvalue())
    return rel.as_posix()


def per_sample_from_run(run_dir: Path) -> tuple[str, list[str], dict, dict]:
    """(record id, scenes, per-map metrics, metric notes) of a run folder's record.json and
    per_sample.csv."""
    import pandas as pd

    record_file, table_file = run_dir / "record.json", run_dir / "per_sample.csv"
    for needed in (record_file, table_file):
        if not needed.is_file():
            raise CkmError(f"run folder {run_dir} has no {needed.name}: pass the folder of a finished run")
    try:
        record = json.loads(record_file.read_text("utf-8"))
        table = pd.read_csv(table_file)
    except (OSError, ValueError) as exc:
        raise CkmError(f"run folder {run_dir}: cannot read its record or per-map table ({exc})") from None
    if "sample" not in table.columns or "record_id" not in record:
        raise CkmError(f"run folder {run_dir}: per_sample.csv needs a 'sample' column and record.json a "
                       "record_id: pass the folder of a finished run")
    scenes = [str(name).split("/", 1)[0] for name in table["sample"]]
    metrics = {col: table[col].to_numpy(dtype=np.float64) for col in table.columns if col != "sample"}
    return record["record_id"], scenes, metrics, record.get("metric_notes") or {}


def backfill(store_file: Path, run_dirs: list[Path]) -> list[str]:
    """Write the per-map file of each run folder's record and name it in the store; returns the
    record ids done. A run folder whose record is not in the store is an error (nothing written)."""
    found = {}
    for run_dir in run_dirs:
        record_id, scenes, metrics, notes = per_sample_from_run(Path(run_dir))
        found[record_id] = (scenes, metrics, notes)
    from .results import read_records

    known = {r["record_id"] for r in read_records(store_file, missing_ok=False)}
    missing = sorted(set(found) - known)
    if missing:
        raise CkmError(f"record {missing[0]} of the run folders is not in {store_file}: pass --store the store "
                       "those runs were stored in (merged into)")
    paths = {rid: write_per_map(store_file, rid, *found[rid]) for rid in found}
    update_records(store_file, {rid: {"per_map": rel} for rid, rel in paths.items() if rel})
    return sorted(rid for rid, rel in paths.items() if rel)
