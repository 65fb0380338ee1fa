"""Observation operators: the pure, seeded degradations behind the built-in tasks (docs/tasks.md).

Each function takes numpy arrays (and a ``numpy.random.Generator`` where it draws) and
returns new arrays; nothing here knows about samples or tasks, so the same operators serve
the tasks, the tests and any baseline that needs to know where a measurement sits.
"""

from __future__ import annotations

import numpy as np

# The noise level of CKMDiff's noisy tasks: 30 gray levels of 255.
NOISE_STD = 30.0 / 255.0
LR_MODES = ("subsample", "avg")


def lr_offset(factor: int, mode: str = "subsample") -> float:
    """Position (in high-res pixels) of the first low-res sample along an axis.

    ``subsample`` keeps pixels 0, f, 2f, ...; ``avg`` averages f x f blocks, whose centres
    sit at (f - 1)/2, (f - 1)/2 + f, ...
    """
    return 0.0 if mode == "subsample" else (factor - 1) / 2.0


def lr_positions(n_lr: int, factor: int, mode: str = "subsample") -> np.ndarray:
    """High-res coordinates (float64) of ``n_lr`` low-res samples along one axis."""
    return lr_offset(factor, mode) + factor * np.arange(n_lr, dtype=np.float64)


def lowres(u: np.ndarray, factor: int, mode: str = "subsample") -> np.ndarray:
    """Low-res measurements of ``u``: ``u[::f, ::f]`` or the mean of each f x f block.

    Both give ceil(H/f) x ceil(W/f) values; a partial block at the right/bottom edge is the
    mean of the pixels it has.
    """
    u = np.asarray(u, np.float32)
    if mode == "subsample":
        return np.ascontiguousarray(u[::factor, ::factor])
    if mode != "avg":
        raise ValueError(f"lr mode {mode!r} is not one of {LR_MODES}")
    h, w = u.shape
    hl, wl = -(-h // factor), -(-w // factor)
    padded = np.zeros((hl * factor, wl * factor), np.float64)
    counts = np.zeros_like(padded)
    padded[:h, :w] = u
    counts[:h, :w] = 1.0
    sums = padded.reshape(hl, factor, wl, factor).sum(axis=(1, 3))
    n = counts.reshape(hl, factor, wl, factor).sum(axis=(1, 3))
    return (sums / n).astype(np.float32)


def add_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``x + N(0, std^2)`` per pixel, not clipped (float32)."""
    x = np.asarray(x, np.float32)
    if std <= 0:
        return x.copy()
    return (x + rng.normal(0.0, std, size=x.shape)).astype(np.float32)


def envcf(u: np.ndarray, buildings: np.ndarray, tx_map: np.ndarray) -> np.ndarray:
    """EnvCDiff's environment-fused map as ``max(u, buildings, tx one-hot)``: its eq. 5,
    F = G + E, clipped to the image range [0, 1] (equal for binary E and u in [0, 1]; unclipped,
    eq. 5 reaches ≈ 2 at the Tx pixel). docs/tasks.md argues the choice."""
    return np.maximum(np.maximum(np.asarray(u, np.float32), buildings.astype(np.float32)),
                      tx_map.astype(np.float32))


def hole_side(shape: tuple[int, int], fraction: float = 0.25) -> int:
    """Side of the inpainting square: ``fraction`` of the shorter map side, at least 1 pixel."""
    return max(1, int(round(fraction * min(shape))))


def square_hole(shape: tuple[int, int], side: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool, True inside a ``side`` x ``side`` square placed uniformly fully inside the map."""
    h, w = shape
    side = int(min(side, h, w))
    r0 = int(rng.integers(0, h - side + 1))
    c0 = int(rng.integers(0, w - side + 1))
    hole = np.zeros(shape, bool)
    hole[r0:r0 + side, c0:c0 + side] = True
    return hole


def sparse_mask(outdoor: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool with ``max(1, round(fraction * #outdoor))`` outdoor pixels chosen uniformly.

    A map without any outdoor pixel draws from all pixels, so an observation always exists.
    """
    candidates = np.flatnonzero(outdoor.ravel())
    if candidates.size == 0:
        candidates = np.arange(outdoor.size)
    count = min(candidates.size, max(1, int(round(fraction * candidates.size))))
    chosen = rng.choice(candidates, size=count, replace=False)
    mask = np.zeros(outdoor.size, bool)
    mask[chosen] = True
    return mask.reshape(outdoor.shape)
