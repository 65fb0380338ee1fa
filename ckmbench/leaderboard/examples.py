"""Example grids: truth, observation and each row's prediction for a few test maps, in dB.

Each example is two panel rows: the maps (truth, the observation drawn on the truth's grid, each
row's prediction) on the example's gain scale, then each prediction's absolute error on a scale
of its own; every panel row has its colour bar. Drawn as one mosaic (``mosaic.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import CkmError
from .mosaic import Panel, PanelRow, compose, png_bytes
from .table import Board, Row

EXAMPLE_ROWS = 4


def _load_examples(path: Path, record: dict) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CkmError(f"result record {record['record_id']}: examples file {path} is unreadable ({exc}): re-run it or remove the record") from None
    missing = [k for k in ("keys", "truth", "prediction") if k not in arrays]
    shapes_ok = arrays.get("truth", np.empty(0)).ndim == 3 and arrays.get("prediction", np.empty(0)).ndim == 3
    if missing or not shapes_ok:
        raise CkmError(f"result record {record['record_id']}: examples file {path} needs keys, truth (K,H,W) and "
                       f"prediction (K,H,W) arrays: re-run it or remove the record")
    keys = [str(k) for k in arrays["keys"].tolist()]
    out = {}
    for i, key in enumerate(keys):
        out[key] = {"truth": arrays["truth"][i], "prediction": arrays["prediction"][i]}
        if "observation" in arrays and i < len(arrays["observation"]):
            out[key]["observation"] = arrays["observation"][i]
        if "gain_range" in arrays and i < len(arrays["gain_range"]):
            out[key]["gain_range"] = tuple(float(v) for v in arrays["gain_range"][i])
        elif _gain_width(record):
            out[key]["gain_width"] = _gain_width(record)
    return out


def _gain_width(record: dict) -> float | None:
    """g_max - g_min in dB from the record's own metrics (mse_gain = mse * width^2): exact for a
    dataset of one gain range, the RMS width otherwise; for example files without ``gain_range``."""
    metrics = record.get("metrics") or {}
    mse, mse_gain = metrics.get("mse"), metrics.get("mse_gain")
    if isinstance(mse, (int, float)) and isinstance(mse_gain, (int, float)) and mse > 0 and mse_gain >= 0:
        return math.sqrt(mse_gain / mse)
    return None


def observation_on_grid(observation: np.ndarray, shape: tuple[int, int], offset: float = 0.0) -> np.ndarray:
    """The observation on the target's pixel grid, the way the identity method upsamples it: a
    low-res sample (i, j) sits at pixel (offset + f*i, offset + f*j) (tasks/operators.py: offset
    0 for ``subsample``, (f - 1)/2 for ``avg``) and each pixel shows its nearest sample. Drawing
    the small array stretched over the panel (imshow) put a subsampled grid f/2 px off."""
    observation = np.asarray(observation)
    if observation.shape == tuple(shape):
        return observation
    index = [np.clip(np.floor((np.arange(n) - offset) * m / n + 0.5), 0, m - 1).astype(int)
             for n, m in zip(shape, observation.shape)]
    return observation[index[0][:, None], index[1][None, :]]


def lowres_offset(observation: np.ndarray, truth: np.ndarray) -> float:
    """Where the first low-res sample sits, read from the data (example files do not say how
    the task made its low-res grid): 0 when the samples match the target's pixels (0, f, 2f, ...)
    better than its f x f block means, else (f - 1)/2, the blocks' centre."""
    (h, w), (H, W) = observation.shape, truth.shape
    if (h, w) == (H, W) or H % h or W % w or H // h != W // w:
        return 0.0
    f = H // h
    obs, full = observation.astype(np.float64), truth.astype(np.float64)
    picked = np.abs(obs - full[::f, ::f]).mean()
    blocks = np.abs(obs - full.reshape(h, f, w, f).mean(axis=(1, 3))).mean()
    return 0.0 if picked <= blocks else (f - 1) / 2


def _row_examples(board: Board, store_dir: Path) -> tuple[list[tuple[Row, dict]], list[str]]:
    """Per row, the examples of its lowest-seed record that has them; plus missing-file notes."""
    found, missing = [], []
    for row in board.rows:
        for record in row.records:
            if not record.get("examples"):
                continue
            path = store_dir / record["examples"]
            if not path.is_file():
                missing.append(f"- examples file missing for {row.full_label}: {record['examples']}")
                continue
            found.append((row, _load_examples(path, record)))
            break
    return found, missing


def _examples_figure(board: Board, found: list[tuple[Row, dict]]) -> bytes | None:
    if not found:
        return None
    counts: dict[str, int] = defaultdict(int)
    for _, ex in found:
        for key in ex:
            counts[key] += 1
    keys = sorted(counts, key=lambda k: (-counts[k], k))[:EXAMPLE_ROWS]
    has_obs = any("observation" in ex[k] for _, ex in found for k in keys if k in ex)
    columns = ["truth"] + (["observation"] if has_obs else []) + [row.full_label for row, _ in found]
    rows: list[PanelRow] = []
    for key in keys:
        rows += _example_rows(key, [ex.get(key) for _, ex in found], has_obs)
    index, _ = compose(f"{board.task} on {board.dataset}: example maps (each prediction's |error| below it)",
                     columns, rows)
    return png_bytes(index)


def _example_rows(key: str, per_row: list[dict | None], has_obs: bool) -> list[PanelRow]:
    """The maps of one example on its gain scale, then each prediction's |error| on its own."""
    first = next(ex for ex in per_row if ex is not None)
    truth = first["truth"].astype(np.float64) / 255.0
    gain_range = first.get("gain_range")
    width = (gain_range[1] - gain_range[0]) if gain_range else first.get("gain_width")
    to_gain = (lambda u: gain_range[0] + u * width) if gain_range else (lambda u: u)
    lo, hi = (gain_range if gain_range else (0.0, 1.0))
    unit = "dB" if gain_range else "gain, 0–1"
    maps = [Panel(to_gain(truth), "viridis", lo, hi)]
    if has_obs:
        obs = next((ex["observation"] for ex in per_row if ex is not None and "observation" in ex), None)
        if obs is not None:
            obs = observation_on_grid(obs, truth.shape, lowres_offset(obs, first["truth"])).astype(np.float64) / 255.0
        maps.append(None if obs is None else Panel(to_gain(obs), "viridis", lo, hi))
    errors: list[np.ndarray | None] = []
    for ex in per_row:
        pred = None if ex is None else ex["prediction"].astype(np.float64) / 255.0
        maps.append(None if pred is None else Panel(to_gain(pred), "viridis", lo, hi))
        errors.append(None if pred is None else np.abs(pred - truth) * (width or 1.0))
    shown = [e for e in errors if e is not None]
    top = max(float(np.percentile(e, 99)) for e in shown) if shown else 0.0
    top = top if top > 0 else 1.0
    lead = len(maps) - len(errors)
    error_unit = "|error| dB" if width else "|error|, 0–1"
    return [
        PanelRow(key, maps, ("viridis", lo, hi, unit)),
        PanelRow(f"{key}: |error|", [None] * lead + [None if e is None else Panel(e, "magma", 0.0, top) for e in errors],
                 ("magma", 0.0, top, error_unit)),
    ]
