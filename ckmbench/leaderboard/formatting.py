"""Constants of the scored metrics and the text form of every number a table shows."""

from __future__ import annotations

import math
import re

import pandas as pd

BASE_METRICS = ("mse", "rmse", "nmse", "mse_gain", "rmse_gain_db", "psnr", "ssim", "fid", "diversity")
METRIC_SUFFIXES = ("outdoor", "hole")
# The built-in MetricSpecs' directions, kept here so rendering a store loads no metric code
# (tests/test_leaderboard.py checks the two agree).
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "diversity"})
# Region metrics shown in the main table too; the first present is the ranking metric: the
# error outside buildings is what a radio map is for (whole-map metrics count building pixels).
HEADLINE_METRICS = ("rmse_gain_db@outdoor",)
NOT_APPLICABLE = "—"  # a figure that does not apply or is not a finite number
COST_COLUMNS = ("params", "train_s", "infer_s_per_map", "sampling_steps", "peak_mem_mb")
SIG_DIGITS = 4


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_sig(value: float | None, digits: int = SIG_DIGITS) -> str:
    """A number with a fixed count of significant digits ("0.01180", "38.70", "1.200e-05")."""
    if value is None:
        return ""
    if not _finite(value):
        return NOT_APPLICABLE
    text = f"{float(value):#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def format_count(value: float | None) -> str:
    """A parameter count in k/M/G with 4 significant digits ("221.2M")."""
    if value is None:
        return ""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return format_sig(value / scale) + unit
    return str(int(round(value)))


def _format_cost(name: str, value: float | None) -> str:
    if value is None or not _finite(value):
        return NOT_APPLICABLE
    if name == "params":
        return format_count(value)
    if name == "sampling_steps" and float(value).is_integer():
        return str(int(value))
    return format_sig(value, 3 if name in ("train_s", "infer_s_per_map") else SIG_DIGITS)


def metric_header(name: str) -> str:
    """Column header with its direction: ↑ higher is better (psnr, ssim), ↓ otherwise."""
    base = name.split("@", 1)[0]
    return f"{name} {'↑' if base in HIGHER_IS_BETTER else '↓'}"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text or "").split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str | None, n: int) -> str:
    return (text or "?")[:n]


def _md_text(text: str) -> str:
    """A name or label as one line of markdown: line breaks become spaces, pipes are escaped
    (a method name or --set value with either would break a table row or a list item)."""
    return re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", str(text)).replace("|", "\\|")


def _markdown_table(frame: pd.DataFrame) -> str:
    """GitHub table of string cells, exactly as formatted (no number re-parsing, one line per
    cell, pipes escaped)."""
    frame = frame.map(_md_text)
    frame.columns = [_md_text(c) for c in frame.columns]
    return frame.to_markdown(index=False, tablefmt="github", disable_numparse=True)
