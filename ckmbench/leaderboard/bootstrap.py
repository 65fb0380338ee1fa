"""95 % confidence intervals of a table's metric by a paired, scene-level bootstrap.

Maps of one scene are not independent (the same buildings, several transmitters), so the
resampling unit is the test scene: each replicate draws scenes with replacement and averages
the per-map values of the maps of the drawn scenes. Every row of a table uses the same drawn
scenes (paired), so differences between rows are judged on the same resamples. Rows over
several seeds draw their seeds with replacement too (seed, then scene variation). Seeded: a
rebuild gives the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CkmError

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
MIN_SCENES = 5  # fewer test scenes give no interval worth printing (city-tiny has one)
# metric -> (its per-map source, aggregate): rmse-type metrics are the sqrt of a mean of squares.
SQRT_OF_MEAN = {"rmse": "mse", "rmse_gain_db": "mse_gain"}


@dataclass
class PerMap:
    """One record's per-map values: ``scene`` (N,) and metric -> (N,) float arrays."""

    scene: np.ndarray
    values: dict[str, np.ndarray]


def load_per_map(path: Path, record: dict) -> PerMap:
    """A record's ``per_map`` file (.npz: ``scene`` plus one float array per metric)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CkmError(f"result record {record['record_id']}: per-map file {path} is unreadable ({exc}): "
                       "re-run it or remove the record") from None
    if "scene" not in arrays or any(a.shape != arrays["scene"].shape for a in arrays.values()):
        raise CkmError(f"result record {record['record_id']}: per-map file {path} needs a scene array and metric "
                       "arrays of the same length: re-run it or remove the record")
    scene = arrays.pop("scene").astype(str)
    return PerMap(scene, {k: v.astype(np.float64) for k, v in arrays.items()})


def _source(metric: str) -> tuple[str, bool]:
    """(per-map array to average, whether the aggregate is its square root)."""
    base, _, region = metric.partition("@")
    if base in SQRT_OF_MEAN:
        return SQRT_OF_MEAN[base] + (f"@{region}" if region else ""), True
    return metric, False


def scene_bootstrap(rows: list[list[PerMap]], metric: str, resamples: int = RESAMPLES,
                    seed: int = SEED) -> list[tuple[float, float] | None]:
    """Per row (its seeds' per-map values), the ``LEVEL`` interval of ``metric``; None for a row
    without that metric, and for every row below MIN_SCENES test scenes. All rows share the
    scene draws; seeds are drawn per row."""
    name, sqrt = _source(metric)
    scenes = sorted({s for row in rows for pm in row for s in pm.scene.tolist()})
    if len(scenes) < MIN_SCENES:
        return [None] * len(rows)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(scenes), size=(resamples, len(scenes)))
    weight = np.stack([np.bincount(d, minlength=len(scenes)) for d in drawn]).astype(np.float64)  # (B, S)
    index = {s: i for i, s in enumerate(scenes)}
    out: list[tuple[float, float] | None] = []
    for row in rows:
        if not row or any(name not in pm.values for pm in row):
            out.append(None)
            continue
        sums, counts = [], []  # per seed: per-scene sum and count of the finite per-map values
        for pm in row:
            at = np.array([index[s] for s in pm.scene.tolist()], dtype=np.int64)
            ok = np.isfinite(pm.values[name])
            sums.append(np.bincount(at[ok], pm.values[name][ok], minlength=len(scenes)))
            counts.append(np.bincount(at[ok], minlength=len(scenes)).astype(np.float64))
        seeds = rng.integers(0, len(row), size=(resamples, len(row)))
        means = np.zeros(resamples)
        for k in range(len(row)):  # mean over the drawn seeds of each seed's scene-resampled mean
            chosen = seeds[:, k]
            total = np.einsum("bs,bs->b", weight, np.stack(sums)[chosen])
            n = np.einsum("bs,bs->b", weight, np.stack(counts)[chosen])
            means += np.divide(total, n, out=np.full(resamples, np.nan), where=n > 0)
        means /= len(row)
        if sqrt:
            means = np.sqrt(means)
        means = means[np.isfinite(means)]
        if not means.size:
            out.append(None)
            continue
        lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        out.append((float(lo), float(hi)))
    return out


def interval_metrics(primary: str | None) -> list[str]:
    """The metrics a table shows intervals for: the ranking metric, PSNR, SSIM and NMSE."""
    return list(dict.fromkeys(([primary] if primary else []) + ["psnr", "ssim", "nmse"]))


def attach_intervals(board, store_dir: Path) -> None:
    """Fill ``row.interval`` of a board's rows whose every record has a per-map file."""
    from .table import ranking_metric

    loaded = []
    for row in board.rows:
        paths = [store_dir / r["per_map"] for r in row.records if r.get("per_map")]
        complete = len(paths) == len(row.records) and all(p.is_file() for p in paths)
        loaded.append([load_per_map(p, r) for p, r in zip(paths, row.records)] if complete else [])
    if not any(loaded):
        return
    for metric in interval_metrics(ranking_metric(board.rows)):
        for row, ci in zip(board.rows, scene_bootstrap(loaded, metric)):
            if ci is not None and row.metrics.get(metric) is not None:
                row.interval[metric] = ci
