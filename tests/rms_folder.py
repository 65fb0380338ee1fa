"""A generated folder in RadioMapSeer's own layout (random maps), for the on-disk cache tests
and the memory benchmark: gain/DPM/{map}_{tx}.png, png/buildings_complete/{map}.png,
antenna/{map}.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_rms_folder(root: Path, maps=range(1, 5), n_tx: int = 3, size: int = 32, seed: int = 0,
                     cars: bool = False) -> Path:
    """Random building blocks, a transmitter outside them, a random 8-bit gain map per tx."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    folders = ["gain/DPM", "png/buildings_complete", "antenna"] + (["gain/carsDPM", "png/cars"] if cars else [])
    for sub in folders:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for m in maps:
        bld = np.zeros((size, size), np.uint8)
        for _ in range(4):
            r, c = rng.integers(0, size - size // 4, 2)
            bld[r:r + size // 6, c:c + size // 6] = 255
        Image.fromarray(bld).save(root / f"png/buildings_complete/{m}.png")
        if cars:
            car = (rng.random((size, size)) < 0.02).astype(np.uint8) * 255
            Image.fromarray(car).save(root / f"png/cars/{m}.png")
        free = np.argwhere(bld == 0)
        points = []
        for t in range(n_tx):
            r, c = free[rng.integers(len(free))]
            points.append([int(c), int(size - 1 - r)])
            gray = rng.integers(1, 256, (size, size)).astype(np.uint8)
            gray[bld > 0] = 0
            for sim in ("DPM",) + (("carsDPM",) if cars else ()):
                Image.fromarray(gray).save(root / f"gain/{sim}/{m}_{t}.png")
        (root / f"antenna/{m}.json").write_text(json.dumps(points))
    return root
