"""`ckmbench data simulate`: any user layout through the built-in simulator."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import CkmError
from .results import atomic_write_bytes, check_writable_dir

GAIN_RANGE = (-147.0, -47.0)
MIN_SIDE = 8  # pixels: below that there is no layout to simulate
MAX_SIDE = 1024  # pixels: the polar tables grow with the square of the diagonal (~0.4 GB at 1024x1024)


def check_layout_size(shape: tuple[int, ...], path) -> None:
    """Refuse, before any work, a layout the simulator cannot handle, saying what fits."""
    h, w = shape[:2]
    if min(h, w) < MIN_SIDE:
        raise CkmError(f"building mask {path} is {h}x{w}: the simulator needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if max(h, w) > MAX_SIDE:
        gb = 16 * 9 * (h * h + w * w) / 1e9
        raise CkmError(f"building mask {path} is {h}x{w}, about {gb:.0f} GB to simulate: at most {MAX_SIDE}x{MAX_SIDE} "
                       "pixels fit; crop it or downsample it (and raise --pixel-m to match)")


def parse_tx(text: str, shape: tuple[int, int], buildings: np.ndarray, height: float) -> tuple[float, float, float]:
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise CkmError(f"bad --tx '{text}': use ROW,COL in pixels, e.g. 40,17") from None
    if not (0 <= row < shape[0] and 0 <= col < shape[1]):
        raise CkmError(f"--tx {text} is outside the {shape[0]}x{shape[1]} map: use 0 <= ROW < {shape[0]}, 0 <= COL < {shape[1]}")
    if buildings[int(row), int(col)]:
        raise CkmError(f"--tx {text} is inside a building: put the transmitter on an outdoor pixel")
    return row, col, height


def simulate_layout_file(buildings_path: Path, tx: str, out: Path, pixel_m: float, tx_height: float,
                         cars_path: Path | None, frequency_ghz: float):
    """Simulate, write ``out`` (.npy, dB) and a PNG figure beside it; returns (npy, png, gain)."""
    from .data.masks import load_building_mask
    from .data.sample import Sample
    from .figures import sample_figure
    from .sim.dpm import simulate
    from .sim.scene import Scene

    if out.suffix.lower() != ".npy":
        raise CkmError(f"--out {out} must end in .npy (a PNG figure is written beside it)")
    if pixel_m <= 0:
        raise CkmError(f"--pixel-m {pixel_m} must be positive")
    if not (np.isfinite(pixel_m) and np.isfinite(tx_height) and np.isfinite(frequency_ghz)):
        raise CkmError("--pixel-m, --tx-height and --frequency-ghz must be finite numbers")
    check_writable_dir(out.parent, f"--out folder {out.parent}", "pass --out in a folder you can write")
    buildings = load_building_mask(buildings_path)
    check_layout_size(buildings.shape, buildings_path)
    cars = load_building_mask(cars_path, size=buildings.shape, what="car mask") if cars_path else None
    txt = parse_tx(tx, buildings.shape, buildings, tx_height)
    scene = Scene(buildings=buildings, tx=txt, pixel_m=pixel_m, cars=cars, frequency_hz=frequency_ghz * 1e9,
                  scene_id=buildings_path.stem)
    gain = simulate(scene).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, gain)
    atomic_write_bytes(out, buf.getvalue())
    png = out.with_suffix(".png")
    sample = Sample(gain_db=gain, buildings=buildings, cars=scene.cars, tx=txt, pixel_m=pixel_m,
                    gain_range=GAIN_RANGE, dataset="simulate", scene=buildings_path.stem, tx_index=0)
    sample_figure([sample], png, columns=1)
    return out, png, gain
