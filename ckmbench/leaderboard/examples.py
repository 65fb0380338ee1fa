"""Example grids: truth, observation and each row's prediction for a few test maps."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import CkmError
from .charts import _png, _rc
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
    return out


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not found:
        return None
    counts: dict[str, int] = defaultdict(int)
    for _, ex in found:
        for key in ex:
            counts[key] += 1
    keys = sorted(counts, key=lambda k: (-counts[k], k))[:EXAMPLE_ROWS]
    has_obs = any("observation" in ex[k] for _, ex in found for k in keys if k in ex)
    titles = ["truth"] + (["observation"] if has_obs else []) + [row.full_label for row, _ in found]
    size = 1.7
    with _rc():
        fig = Figure(figsize=(size * len(titles) + 0.6, size * len(keys) + 0.7))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(keys), len(titles), squeeze=False)
        for i, key in enumerate(keys):
            first = next(ex[key] for _, ex in found if key in ex)
            obs = next((ex[key]["observation"] for _, ex in found if key in ex and "observation" in ex[key]), None)
            images = [first["truth"]] + ([obs] if has_obs else []) + \
                     [ex[key]["prediction"] if key in ex else None for _, ex in found]
            for j, image in enumerate(images):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if image is not None:
                    ax.imshow(np.asarray(image), cmap="viridis", vmin=0, vmax=255, interpolation="nearest")
                if i == 0:
                    ax.set_title("\n".join(textwrap.wrap(titles[j], 20)), fontsize=7)
                if j == 0:
                    ax.set_ylabel("\n".join(textwrap.wrap(key, 20)), fontsize=7)
        fig.suptitle(f"{board.task} on {board.dataset}: example maps")
        fig.tight_layout()
        return _png(fig)
