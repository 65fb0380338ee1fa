"""The numbers the papers report (reference/reported.csv): loading, checking, their table."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import CkmError
from .formatting import BASE_METRICS, METRIC_SUFFIXES, format_sig, metric_header
from .table import Row, _profile_rank

REPORTED_HEADING = "Reported in the papers (not reproduced here)"
PROTOCOL_HEADING = "Reported in the papers, and reproduced here under each paper's protocol"
REPRODUCED_MARK = "↳ reproduced"
REPORTED_COLUMNS = ("paper", "dataset_id", "task_id", "method", "metric", "value", "dataset", "task", "note")
# reported.csv metric name -> column position among ckmbench's names (mse_pixel *is* mse).
REPORTED_ALIASES = {"mse_pixel": "mse"}
REPORTED_ORDER = ("mse", "mse_255", "rmse", "nmse", "nmse_x1e5", "mse_gain", "rmse_gain_db", "psnr",
                  "ssim", "fid", "params_M", "gflops", "seconds_per_map", "memory_MB")
REPORTED_LOWER_BETTER = frozenset({"mse_255", "nmse_x1e5"})


def default_reported_csv() -> Path:
    """The reported numbers shipped in the package (ckmbench/reference/reported.csv)."""
    return Path(str(resources.files("ckmbench") / "reference" / "reported.csv"))


def load_reported(path: str | Path | None = None) -> pd.DataFrame:
    """The reported-numbers CSV as strings, checked: known columns, numeric values."""
    path = Path(path) if path is not None else default_reported_csv()
    if not path.is_file():
        raise CkmError(f"reported numbers: no file {path}: pass an existing reported.csv (see ckmbench/reference/README.md)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REPORTED_COLUMNS if c not in frame.columns]
    if missing:
        raise CkmError(f"reported numbers {path}: missing columns {missing}: use the columns of ckmbench/reference/README.md")
    for i, value in enumerate(frame["value"], start=2):
        try:
            float(value)
        except ValueError:
            raise CkmError(f"reported numbers {path} line {i}: value {value!r} is not a number: fix that line") from None
    frame = frame[list(REPORTED_COLUMNS)].copy()
    frame["metric"] = frame["metric"].map(lambda m: REPORTED_ALIASES.get(m, m))
    return frame


def _reported_columns(frame: pd.DataFrame) -> list[str]:
    names = set(frame["metric"])
    order = list(REPORTED_ORDER) + [f"{m}@{s}" for s in METRIC_SUFFIXES for m in BASE_METRICS]
    return [m for m in order if m in names] + sorted(names - set(order))


def _reported_header(name: str) -> str:
    base = name.split("@", 1)[0]
    if base in BASE_METRICS:
        return metric_header(name)
    return f"{name} ↓" if base in REPORTED_LOWER_BETTER else name


def _protocol_label(dataset: str, task: str, row: Row) -> str:
    return f"{REPRODUCED_MARK}: `{task}` on {dataset}, N={row.n_test or '?'} [{row.profile}]"


def _reported_table(frame: pd.DataFrame, protocol_rows: list | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Rows (paper, method) in the CSV's order, one column per metric; plus the settings lines.

    ``protocol_rows`` -- (dataset, task, paper, Row) reproduced under a paper's protocol --
    go right below that paper's row of the same method (rows of methods the paper does not
    report follow its last row), their cells in the same columns, so each gap reads in place.
    """
    columns = _reported_columns(frame)
    order = list(dict.fromkeys(zip(frame["paper"], frame["method"])))
    cells = {(p, m, metric): value for p, m, metric, value in
             zip(frame["paper"], frame["method"], frame["metric"], frame["value"])}
    body = []
    extra = list(protocol_rows or [])
    for i, (p, m) in enumerate(order):
        body.append([p, m] + [cells.get((p, m, c), "") for c in columns])
        mine = [x for x in extra if x[2] == p and x[3].method == m]
        last_of_paper = all(q != p for q, _ in order[i + 1:])
        if last_of_paper:
            mine += [x for x in extra if x[2] == p and x not in mine and (p, x[3].method) not in order]
        for x in sorted(mine, key=lambda x: (x[0], x[1], x[3].method, _profile_rank(x[3].profile))):
            dataset, task, _, row = x
            body.append([_protocol_label(dataset, task, row), row.label]
                        + [format_sig(row.metrics.get(c)) if row.metrics.get(c) is not None else "" for c in columns])
    table = pd.DataFrame(body, columns=["paper", "method"] + [_reported_header(c) for c in columns])
    settings = []
    for paper in dict.fromkeys(frame["paper"]):
        part = frame[frame["paper"] == paper]
        described = "; ".join(dict.fromkeys(f"{d}, {t}" for d, t in zip(part["dataset"], part["task"])))
        notes = "; ".join(dict.fromkeys(n for n in part["note"] if n))
        settings.append(f"- {paper}: {described}" + (f" (note: {notes})" if notes else ""))
    return table, settings
