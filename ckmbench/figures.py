"""Figures a person looks at: dataset samples and example predictions (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .results import atomic_write_bytes  # noqa: E402

PNG_META = {"Software": None}


def save_figure(fig, out: Path, dpi: int = 110) -> Path:
    """Save atomically with no timestamp metadata (byte-stable output)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=PNG_META, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


def draw_gain(ax, gain_db, buildings, tx, gain_range, title: str = "") -> None:
    """Path gain in dB with buildings in grey and the Tx as a red star."""
    shown = np.ma.masked_where(buildings, gain_db)
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("0.35")
    im = ax.imshow(shown, cmap=cmap, vmin=gain_range[0], vmax=gain_range[1], interpolation="nearest")
    if tx is not None:
        ax.plot([tx[1]], [tx[0]], marker="*", color="red", markersize=9, markeredgecolor="white")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def sample_figure(samples, out: Path, columns: int = 4) -> Path:
    """A grid of samples: gain map (dB), buildings grey, Tx marked, cars outlined."""
    n = len(samples)
    rows = max(1, int(np.ceil(n / columns)))
    cols = min(columns, n)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    im = None
    for ax in axes.ravel():
        ax.axis("off")
    for ax, s in zip(axes.ravel(), samples):
        ax.axis("on")
        im = draw_gain(ax, s.gain_db, s.buildings, s.tx, s.gain_range, f"scene {s.scene}, Tx {s.tx_index}")
        if s.cars.any():
            ax.contour(s.cars, levels=[0.5], colors="orange", linewidths=0.6)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="path gain [dB]")
        s = samples[0]
        fig.suptitle(f"{s.dataset}: {s.shape[0]}x{s.shape[1]} at {s.pixel_m:g} m/px "
                     "(buildings grey, Tx red star, cars orange)", fontsize=9)
    return save_figure(fig, out)


def example_grid(out: Path, npz_path: Path, title: str) -> Path:
    """Rows: examples; columns: truth, observation (if any), prediction, |error|."""
    with np.load(npz_path, allow_pickle=False) as z:
        truth, pred = z["truth"] / 255.0, z["prediction"] / 255.0
        obs = z["observation"] / 255.0 if "observation" in z else None
        keys = z["keys"]
    cols = [("truth", truth)] + ([("observation", obs)] if obs is not None else []) + [
        ("prediction", pred), ("|error|", np.abs(truth - pred))]
    fig, axes = plt.subplots(len(truth), len(cols), figsize=(2.2 * len(cols), 2.2 * len(truth)), squeeze=False)
    for r in range(len(truth)):
        for c, (name, arr) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(arr[r], cmap="magma" if name == "|error|" else "viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(str(keys[r]), fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)
