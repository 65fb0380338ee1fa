"""The bar chart of a table: one panel per main metric, one bar per row (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np

from .formatting import BASE_METRICS, format_sig, metric_header
from .reported import REPORTED_LOWER_BETTER, _reported_columns, _reported_header
from .table import Board, ranking_metric

# In the bar chart mse / mse_gain are left out when their square roots are there too.
REDUNDANT_WITH = {"mse": "rmse", "mse_gain": "rmse_gain_db", "mse_255": "rmse"}
DPI = 100


def _png(fig) -> bytes:
    """The figure as a 64-colour palette PNG: a third of the RGBA size and faster to encode; bars
    are flat colours and text is black, so the palette loses nothing one can see."""
    from PIL import Image

    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    buf = io.BytesIO()
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _rc():
    import matplotlib
    return matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 9,
                                  "figure.dpi": DPI, "savefig.dpi": DPI, "path.simplify": True})


def _main_metrics(names: list[str]) -> list[str]:
    """Metrics for the bar chart: no @variants, no cost, no mse beside rmse."""
    base = [m for m in names if m in BASE_METRICS or m in REPORTED_LOWER_BETTER]
    return [m for m in base if REDUNDANT_WITH.get(m) not in base]


# Fixed layout in inches (no tight_layout: it measured every text of every panel, twice).
LABEL_IN, PANEL_IN, GAP_IN, RIGHT_IN = 2.5, 2.5, 0.45, 0.35
TITLE_IN, PANEL_HEAD_IN, PANEL_FOOT_IN, BAR_IN = 0.55, 0.3, 0.35, 0.26


def _bar_chart(title: str, labels: list[str], panels: list[tuple[str, list[float | str | None]]],
               missing: str = "", intervals: list[list[tuple[float, float] | None]] | None = None) -> bytes:
    """One horizontal bar panel per metric, one bar per row label ("n/a": unavailable, None:
    absent, written as ``missing``); row labels once per line of panels; SSIM axes end at 1;
    ``intervals`` (per panel, per row, or None) drawn as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    panel_h = BAR_IN * len(labels)
    width = LABEL_IN + ncols * PANEL_IN + (ncols - 1) * GAP_IN + RIGHT_IN
    height = TITLE_IN + nrows * (PANEL_HEAD_IN + panel_h + PANEL_FOOT_IN)
    wrapped = ["\n".join(textwrap.wrap(label, 34)[:2]) for label in labels]
    colors = [f"C{i % 10}" for i in range(len(labels))]
    ys = np.arange(len(labels))
    with _rc():
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        for k, (header, values) in enumerate(panels):
            row, col = divmod(k, ncols)
            left = LABEL_IN + col * (PANEL_IN + GAP_IN)
            top = TITLE_IN + row * (PANEL_HEAD_IN + panel_h + PANEL_FOOT_IN) + PANEL_HEAD_IN
            ax = fig.add_axes((left / width, 1 - (top + panel_h) / height, PANEL_IN / width, panel_h / height))
            numeric = [isinstance(v, (int, float)) for v in values]
            ax.barh(ys, [v if ok else 0.0 for v, ok in zip(values, numeric)], color=colors, height=0.7)
            bounds = (intervals or [None] * len(panels))[k] or [None] * len(labels)
            shown = [(y, v, ci) for y, v, ci, ok in zip(ys, values, bounds, numeric) if ok and ci]
            if shown:
                ax.errorbar([v for _, v, _ in shown], [y for y, _, _ in shown], fmt="none", ecolor="black",
                            elinewidth=0.8, capsize=2,
                            xerr=[[v - ci[0] for _, v, ci in shown], [ci[1] - v for _, v, ci in shown]])
            for y, v, ok, ci in zip(ys, values, numeric, bounds):
                text = format_sig(v, 3) if ok else (missing if v is None else str(v))
                if text:  # after the error bar's end when there is one
                    ax.text(max(v, ci[1]) if ok and ci else (v if ok else 0), y, " " + text, va="center", ha="left", fontsize=7,
                            color="black" if ok else "0.4")
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks([])  # row names as plain text, once per line of panels: Tick objects cost most
            ax.set_ylim(len(labels) - 0.5, -0.5)
            if col == 0:
                where = blended_transform_factory(ax.transAxes, ax.transData)
                for y, label in zip(ys, wrapped):
                    ax.text(-0.02, y, label, transform=where, ha="right", va="center", fontsize=8)
            ax.set_title(header)
            finite = [v for v, ok in zip(values, numeric) if ok]
            if header.split("@")[0].split(" ")[0] == "ssim":  # SSIM <= 1: an axis past 1 misleads
                ax.set_xlim(min([0.0] + finite), 1.0)
            else:
                ax.margins(x=0.25)
        fig.suptitle(title, y=1 - 0.2 / height, va="top")
        return _png(fig)


def _metrics_figure(board: Board) -> bytes | None:
    if board.rows:
        present = [m for m in board.metric_columns if any(r.metrics.get(m) is not None for r in board.rows)]
        chosen = _main_metrics(present) or present
        primary = ranking_metric(board.rows)  # the chart leads with the metric the table ranks on
        chosen = ([primary] if primary in present else []) + [m for m in chosen if m != primary]
        if not chosen:
            return None
        panels = [(metric_header(m) + (" (ranks the table)" if m == primary else ""),
                   [r.metrics[m] if r.metrics.get(m) is not None else ("n/a" if m in r.metrics else None)
                    for r in board.rows]) for m in chosen]
        intervals = [[r.interval.get(m) for r in board.rows] for m in chosen]
        kwargs = {"intervals": intervals} if any(ci for panel in intervals for ci in panel) else {}
        return _bar_chart(f"{board.task} on {board.dataset} (reproduced)", [r.full_label for r in board.rows], panels,
                          **kwargs)
    if board.reported is not None and len(board.reported):
        frame = board.reported
        names = _reported_columns(frame)
        chosen = _main_metrics(names)
        if not chosen:
            return None
        order = list(dict.fromkeys(zip(frame["paper"], frame["method"])))
        cells = {(p, m, k): float(v) for p, m, k, v in zip(frame["paper"], frame["method"], frame["metric"], frame["value"])}
        panels = [(_reported_header(k), [cells.get((p, m, k)) for p, m in order]) for k in chosen]
        labels = [f"{m} — {p}" for p, m in order]
        return _bar_chart(f"{board.task} on {board.dataset} (reported in the papers)", labels, panels,
                          missing="not reported")
    return None
