"""One image from many map panels: colour-mapped numpy arrays pasted on a fixed grid, text by PIL.

A matplotlib Axes per panel (and ``tight_layout``) made the example grids the slowest part of a
leaderboard build; here a grid costs one array and one PNG encoding. Layout and fonts are fixed
(DejaVu Sans, shipped with matplotlib), so the same panels give the same bytes.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

PANEL_PX = 160  # panels are scaled by an integer factor to at most this size
GAP = 4
LABEL_W = 118  # left column: example names
BAR_W = 12  # colour bar strip
BAR_TEXT_W = 62  # its tick labels
TITLE_H = 26
TEXT_PX = 11
# One 256-colour palette for every grid (an 8-bit PNG, a third of the RGB size): four plain
# colours, then LEVELS steps of each colour map.
PLAIN = {"background": (255, 255, 255), "text": (0, 0, 0), "empty": (225, 225, 225), "unit": (60, 60, 60)}
CMAPS = ("viridis", "magma")
LEVELS = (256 - len(PLAIN)) // len(CMAPS)
BACKGROUND, TEXT, EMPTY, UNIT = range(len(PLAIN))


@dataclass
class Panel:
    """A 2-D array (NaN = no value) drawn with ``cmap`` over [vmin, vmax]."""

    image: np.ndarray
    cmap: str
    vmin: float
    vmax: float


@dataclass
class PanelRow:
    """One line of panels sharing one colour scale; ``None`` leaves a slot blank."""

    label: str
    panels: list[Panel | None]
    bar: tuple[str, float, float, str]  # cmap, vmin, vmax, unit
    ticks: list[str] = field(default_factory=list)  # tick texts, vmax first (default: formatted numbers)


@lru_cache(maxsize=None)
def palette() -> np.ndarray:
    """(256, 3) uint8: the plain colours, then LEVELS samples of each of CMAPS."""
    import matplotlib

    maps = [(matplotlib.colormaps[c](np.linspace(0.0, 1.0, LEVELS))[:, :3] * 255).round() for c in CMAPS]
    return np.concatenate([np.array(list(PLAIN.values()), float)] + maps).astype(np.uint8)


@lru_cache(maxsize=None)
def _font(size: int):
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def colourize(panel: Panel) -> np.ndarray:
    """(H, W) palette indices: ``panel.image`` through its colour map; NaN pixels "empty"."""
    data = np.asarray(panel.image, dtype=np.float32)
    span = panel.vmax - panel.vmin
    scaled = np.nan_to_num((data - panel.vmin) / (span if span > 0 else 1.0), nan=0.0)
    index = len(PLAIN) + CMAPS.index(panel.cmap) * LEVELS + np.clip(scaled * (LEVELS - 1), 0, LEVELS - 1).round()
    index = index.astype(np.uint8)
    index[np.isnan(data)] = EMPTY
    return index


def scale_factor(size: int, target: int = PANEL_PX) -> tuple[int, int]:
    """(up, down): repeat pixels ``up`` times, or average ``down`` x ``down`` blocks, to fit ``target``."""
    if size <= target:
        return max(1, target // size), 1
    return 1, -(-size // target)


def resize(index: np.ndarray, up: int, down: int) -> np.ndarray:
    """Integer nearest up-scaling, or keeping every ``down``-th pixel (palette indices cannot be
    averaged; maps larger than a panel are only the 256 px ones, shown at half size)."""
    if up > 1:
        index = np.repeat(np.repeat(index, up, axis=0), up, axis=1)
    return index[::down, ::down] if down > 1 else index


def _wrap(text: str, width: int, lines: int) -> list[str]:
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return wrapped


def _format_tick(value: float) -> str:
    return f"{value:.3g}"


@dataclass
class Layout:
    """Pixel boxes (top, left, height, width) of every panel, by (panel row, column)."""

    boxes: dict[tuple[int, int], tuple[int, int, int, int]]
    size: tuple[int, int]  # (height, width)


def compose(title: str, columns: list[str], rows: list[PanelRow]) -> tuple[np.ndarray, Layout]:
    """The mosaic as an (H, W) array of palette indices plus where each panel went (tests check pixels)."""
    from PIL import Image, ImageDraw

    shapes = [p.image.shape for r in rows for p in r.panels if p is not None]
    up, down = scale_factor(max(max(s) for s in shapes) if shapes else 1)
    cell_h = max((s[0] * up // down for s in shapes), default=PANEL_PX)
    cell_w = max((s[1] * up // down for s in shapes), default=PANEL_PX)
    col_chars = max(8, (cell_w - 4) // 7)
    headers = [_wrap(c, col_chars, 3) for c in columns]
    header_h = (TEXT_PX + 3) * max((len(h) for h in headers), default=1) + GAP
    top = TITLE_H + header_h
    width = LABEL_W + len(columns) * (cell_w + GAP) + BAR_W + BAR_TEXT_W + GAP
    height = top + len(rows) * (cell_h + GAP) + GAP
    canvas = np.full((height, width), BACKGROUND, np.uint8)
    boxes = {}
    bars = []
    for i, row in enumerate(rows):
        y = top + i * (cell_h + GAP)
        for j, panel in enumerate(row.panels):
            x = LABEL_W + j * (cell_w + GAP)
            if panel is None:
                continue
            index = resize(colourize(panel), up, down)
            canvas[y:y + index.shape[0], x:x + index.shape[1]] = index
            boxes[(i, j)] = (y, x, index.shape[0], index.shape[1])
        cmap, vmin, vmax, _unit = row.bar
        x = LABEL_W + len(columns) * (cell_w + GAP)
        ramp = np.linspace(vmax, vmin, cell_h)[:, None].repeat(BAR_W, axis=1)
        canvas[y:y + cell_h, x:x + BAR_W] = colourize(Panel(ramp, cmap, vmin, vmax))
        bars.append((y, x))
    image = Image.fromarray(canvas)  # mode "L": the indices, drawn on as gray levels
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: text stays in the palette's one text colour
    font, small = _font(TEXT_PX + 2), _font(TEXT_PX)
    draw.text((width // 2, 6), title, fill=TEXT, font=font, anchor="mt")
    for j, lines in enumerate(headers):
        x = LABEL_W + j * (cell_w + GAP) + cell_w // 2
        for k, line in enumerate(lines):
            draw.text((x, TITLE_H + k * (TEXT_PX + 3)), line, fill=TEXT, font=small, anchor="mt")
    for i, (row, (y, x)) in enumerate(zip(rows, bars)):
        for k, line in enumerate(_wrap(row.label, 17, 6)):
            draw.text((4, y + k * (TEXT_PX + 3)), line, fill=TEXT, font=small)
        cmap, vmin, vmax, unit = row.bar
        ticks = row.ticks or [_format_tick(vmax), _format_tick((vmin + vmax) / 2), _format_tick(vmin)]
        for k, text in enumerate(ticks):
            ty = y + round(k * (cell_h - 1) / max(1, len(ticks) - 1))
            draw.line([(x + BAR_W, ty), (x + BAR_W + 3, ty)], fill=TEXT)
            anchor = "lt" if k == 0 else ("lb" if k == len(ticks) - 1 else "lm")
            draw.text((x + BAR_W + 5, ty), text, fill=TEXT, font=small, anchor=anchor)
        draw.text((x + BAR_W + 5, y + cell_h // 2 + TEXT_PX + 2), unit, fill=UNIT, font=small, anchor="lm")
    return np.asarray(image), Layout(boxes, (height, width))


def to_rgb(index: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of a mosaic's palette indices."""
    return palette()[index]


def png_bytes(index: np.ndarray) -> bytes:
    """8-bit palette PNG of a mosaic, no metadata (byte-stable)."""
    from PIL import Image

    index = np.ascontiguousarray(index, dtype=np.uint8)
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    image.putpalette(palette().tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # 9: 1.5 % smaller, 7x the time
    return buf.getvalue()
