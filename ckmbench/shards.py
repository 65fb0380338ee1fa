"""Sharded evaluation (docs/scale.md): ``--shard i/n`` scores the test scenes i, i+n, ...; the
shards' per-sample values and FID features are merged into one record by
``ckmbench results collect``, with the numbers an unsharded run gives.

A shard's record carries ``shard = {index, count, group, n_total}`` (``group``: the run's
config hash and n, the same for every shard of one run) and waits in the store's pending
folder beside an ``.npz`` payload: the positions of its samples in the whole test split,
its per-sample metric values and, when the task is scored with FID, the Inception features
of its predictions and real maps. The merge puts the values back in test order and runs the
same summary code as :func:`ckmbench.metrics.evaluate.evaluate`; FID is computed once, on
the merged features.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch

from .errors import CkmError


def shard_positions(scenes, index: int, count: int) -> np.ndarray:
    """Places (in the test split) of the samples of the scenes index, index+count, ... in order
    of first appearance: shards split by scene, as the data generation does."""
    scenes = np.asarray(scenes).astype(str)
    order = list(dict.fromkeys(scenes.tolist()))
    if count > len(order):
        raise CkmError(f"--shard {index}/{count}: the test split has only {len(order)} scene(s): use at most "
                       f"{len(order)} shards")
    mine = set(order[index::count])
    return np.flatnonzero(np.isin(scenes, list(mine)))


def shard_field(shard: tuple[int, int], config_hash: str, n_total: int) -> dict:
    i, n = shard
    return {"index": int(i), "count": int(n), "group": f"{config_hash}/{int(n)}", "n_total": int(n_total)}


def shard_payload(result, positions: np.ndarray, pred: torch.Tensor, target: torch.Tensor, fid: bool,
                  task=None, regions=None) -> bytes:
    """The ``.npz`` a shard leaves for the merge: positions, per-sample values (a paper
    protocol's own metric values too), FID features."""
    from .metrics import fid as fid_module
    from .tasks.protocols import convention_values

    arrays = {"positions": np.asarray(positions, np.int64)}
    for key, values in result.per_sample.items():
        arrays[f"metric/{key}"] = np.asarray(values, np.float64)
    conventions = convention_values(task, pred, target, regions) if task is not None else {}
    for key, (values, _) in conventions.items():
        arrays[f"convention/{key}"] = values
    info = {"suffixes": list(result.suffixes), "failed": sorted(result.failed), "notes": result.notes, "fid": fid,
            "conventions": {k: note for k, (_, note) in conventions.items()}}
    if fid:
        feats = fid_module.shard_features(pred, target)
        if "unavailable" in feats:
            info["fid_unavailable"] = feats["unavailable"]
        else:
            arrays["fid/real"] = feats["real"].numpy()
            arrays["fid/fake"] = feats["fake"].numpy()
            info["fid_notes"] = feats["notes"]
    arrays["info"] = np.frombuffer(json.dumps(info, sort_keys=True, default=str).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load_payload(data: bytes) -> tuple[dict, dict]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays.pop("info").tobytes().decode())


def _in_order(loaded: list, key: str, n_total: int) -> np.ndarray:
    """The shards' values of ``key`` at their places in the whole test split (NaN where absent)."""
    full = np.full(n_total, np.nan)
    for arrays, _ in loaded:
        if key in arrays:
            full[arrays["positions"]] = arrays[key]
    return full


def merged_record_id(records: list[dict]) -> str:
    """The same id for the same shards: collecting twice never stores the merge twice."""
    return hashlib.sha256("|".join(sorted(r["record_id"] for r in records)).encode()).hexdigest()[:32]


def merge_shards(records: list[dict], payloads: list[bytes], registry=None) -> dict:
    """One record from the done records of shards 0..n-1 of a run and their payloads."""
    from .metrics.evaluate import summarize
    from .metrics.fid import fid_of_features
    from .runner import _clean
    from .tasks.protocols import use_conventions

    order = sorted(range(len(records)), key=lambda k: records[k]["shard"]["index"])
    records = [records[k] for k in order]
    loaded = [_load_payload(payloads[k]) for k in order]
    n_total = int(records[0]["shard"]["n_total"])
    positions = np.concatenate([a["positions"] for a, _ in loaded])
    if sorted(positions.tolist()) != list(range(n_total)):
        raise CkmError(f"shards of run {records[0]['shard']['group']} do not cover its {n_total} test maps once: "
                       "re-run the shards with the same --max-test and data")
    keys = sorted({k for a, _ in loaded for k in a if k.startswith("metric/")})
    per_sample = {key[len("metric/"):]: _in_order(loaded, key, n_total) for key in keys}
    infos = [info for _, info in loaded]
    failed = set().union(*(set(i["failed"]) for i in infos))
    notes: dict = {}
    for info in infos:
        for k, v in info["notes"].items():
            if not k.endswith("_skipped"):  # recounted over the whole set below
                notes.setdefault(k, v)
    summary = summarize(per_sample, infos[0]["suffixes"], registry=registry, failed=failed, notes=notes)
    use_conventions(summary, notes, {name: (_in_order(loaded, f"convention/{name}", n_total), note)
                                     for name, note in infos[0].get("conventions", {}).items()})
    if infos[0]["fid"]:
        missing = [i.get("fid_unavailable") for i in infos if i.get("fid_unavailable")]
        if missing:
            summary["fid"], notes["fid"] = None, f"unavailable: {missing[0]}"
        else:
            place = np.argsort(positions, kind="stable")
            real = torch.from_numpy(np.concatenate([a["fid/real"] for a, _ in loaded])[place])
            fake = torch.from_numpy(np.concatenate([a["fid/fake"] for a, _ in loaded])[place])
            out = fid_of_features(real, fake, infos[0].get("fid_notes", {}))
            summary["fid"] = None if out["value"] is None or not np.isfinite(out["value"]) else float(out["value"])
            notes.update(out["notes"])
    first = records[0]
    counts = [int(r["n_test"]) for r in records]
    costs = [r.get("cost") or {} for r in records]
    infer = [c.get("infer_s_per_map") for c in costs]
    peaks = [c.get("peak_mem_mb") for c in costs if c.get("peak_mem_mb") is not None]
    merged = dict(first)
    merged.update(
        record_id=merged_record_id(records), n_test=n_total, metrics=_clean(summary), metric_notes=_clean(notes),
        date=max(r["date"] for r in records),
        shard={"count": len(records), "group": first["shard"]["group"], "records": [r["record_id"] for r in records]},
        cost=_clean({**costs[0],
                     "infer_s_per_map": (sum(v * c for v, c in zip(infer, counts)) / n_total
                                         if all(v is not None for v in infer) else None),
                     "peak_mem_mb": max(peaks) if peaks else None}),
        git_dirty=any(bool(r.get("git_dirty")) for r in records) if any(r.get("git_dirty") is not None
                                                                           for r in records) else None,
    )
    return merged
