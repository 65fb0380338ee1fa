"""The bar chart of a table: one panel per main metric, one bar per row (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np

from .formatting import BASE_METRICS, format_sig, metric_header
from .reported import REPORTED_LOWER_BETTER, _reported_columns, _reported_header
from .table import Board

# In the bar chart mse / mse_gain are left out when their square roots are there too.
REDUNDANT_WITH = {"mse": "rmse", "mse_gain": "rmse_gain_db", "mse_255": "rmse"}
DPI = 100


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _rc():
    import matplotlib
    return matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 9,
                                  "figure.dpi": DPI, "savefig.dpi": DPI, "path.simplify": True})


def _main_metrics(names: list[str]) -> list[str]:
    """Metrics for the bar chart: no @variants, no cost, no mse beside rmse."""
    base = [m for m in names if m in BASE_METRICS or m in REPORTED_LOWER_BETTER]
    return [m for m in base if REDUNDANT_WITH.get(m) not in base]


def _bar_chart(title: str, labels: list[str], panels: list[tuple[str, list[float | str | None]]]) -> bytes:
    """One horizontal bar panel per metric, one bar per row label ("n/a": unavailable, None: absent)."""
    from matplotlib.ticker import MaxNLocator
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = 0.9 + nrows * (0.6 + 0.28 * len(labels))
    wrapped = ["\n".join(textwrap.wrap(label, 34)) for label in labels]
    with _rc():
        fig = Figure(figsize=(3.6 * ncols + 1.6, height))
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        colors = [f"C{i % 10}" for i in range(len(labels))]
        for ax, (header, values) in zip(axes.flat, panels):
            ys = np.arange(len(labels))
            numeric = [isinstance(v, (int, float)) for v in values]
            ax.barh(ys, [v if ok else 0.0 for v, ok in zip(values, numeric)], color=colors, height=0.7)
            for y, v, ok in zip(ys, values, numeric):
                if v is not None:
                    ax.text(v if ok else 0, y, " " + (format_sig(v, 3) if ok else str(v)),
                            va="center", ha="left", fontsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks(ys, wrapped)
            ax.invert_yaxis()
            ax.set_title(header)
            ax.margins(x=0.25)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(title)
        fig.tight_layout()
        return _png(fig)


def _metrics_figure(board: Board) -> bytes | None:
    if board.rows:
        present = [m for m in board.metric_columns if any(r.metrics.get(m) is not None for r in board.rows)]
        chosen = _main_metrics(present) or present
        if not chosen:
            return None
        panels = [(metric_header(m), [r.metrics[m] if r.metrics.get(m) is not None else
                                      ("n/a" if m in r.metrics else None) for r in board.rows]) for m in chosen]
        return _bar_chart(f"{board.task} on {board.dataset} (reproduced)", [r.full_label for r in board.rows], panels)
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
        return _bar_chart(f"{board.task} on {board.dataset} (reported in the papers)", labels, panels)
    return None
