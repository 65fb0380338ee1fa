"""An observation batch seen as per-map scattered-data problems.

Every classical interpolator works the same way: known values at some (row, col)
positions, a noise level, and a set of pixels to fill. ``problems(obs)`` turns a batch of
any sr / inpaint / sparse / denoise observation into that form, using the task's own
operators to place low-res samples, so the alignment is defined in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckmbench.errors import CkmError
from ckmbench.tasks.operators import NOISE_STD, lr_positions

# Tasks whose observations are noisy when a batch carries no extras["noise_std"].
_NOISY_NAMES = ("inpaint", "denoise")


@dataclass
class Problem:
    """One map to reconstruct from scattered measurements.

    ``points`` are (row, col) in high-res pixels; ``known`` marks pixels whose own value was
    measured (exactly at the pixel), ``known_values`` holds those measurements. ``spacing``
    is the typical distance between measurements in pixels (the sr factor, 1 for dense
    observations). ``dense`` is True when every pixel is measured (denoising).
    """

    shape: tuple[int, int]
    points: np.ndarray
    values: np.ndarray
    noise_std: float
    spacing: float
    known: np.ndarray
    known_values: np.ndarray
    dense: bool
    gain_range: tuple[float, float]
    pixel_m: float
    tx: np.ndarray | None = None
    keep_observed: bool = False  # the task asks to return the measurements as measured (fill only)


def noise_std_of(obs) -> float:
    """The observation noise level: ``extras["noise_std"]`` or the built-in tasks' default."""
    if "noise_std" in obs.extras:
        return float(obs.extras["noise_std"])
    noisy = obs.task.endswith("-noisy") or obs.task in _NOISY_NAMES
    return NOISE_STD if noisy else 0.0


def lr_mode_of(obs) -> str:
    return str(obs.extras.get("lr_mode", "subsample"))


def _pixel_grid(shape) -> np.ndarray:
    rr, cc = np.indices(shape)
    return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.float64)


def problems(obs) -> list[Problem]:
    """One Problem per map of the batch; raises CkmError when the observation has no ``y``."""
    if obs.y is None:
        raise CkmError(f"task {obs.task}: the observation has no measurements y; pick a task with y (sr, inpaint, "
                       "sparse, denoise)")
    shape = tuple(int(s) for s in obs.out_shape)
    sigma = noise_std_of(obs)
    y = obs.y[:, 0].detach().cpu().numpy().astype(np.float64)
    masks = obs.mask[:, 0].detach().cpu().numpy() > 0.5 if obs.mask is not None else None
    out = []
    for i in range(len(y)):
        known = np.zeros(shape, bool)
        known_values = np.zeros(shape, np.float32)
        if obs.factor is not None and y[i].shape != shape:
            f, mode = int(obs.factor), lr_mode_of(obs)
            rows, cols = lr_positions(y.shape[1], f, mode), lr_positions(y.shape[2], f, mode)
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            points = np.stack([rr.ravel(), cc.ravel()], axis=1)
            values = y[i].ravel()
            if mode == "subsample":
                known[::f, ::f] = True
                known_values[::f, ::f] = y[i]
            spacing, dense = float(f), False
        elif masks is not None:
            m = masks[i]
            points = np.argwhere(m).astype(np.float64)
            values = y[i][m]
            known, known_values = m.copy(), np.where(m, y[i], 0.0).astype(np.float32)
            spacing, dense = float(np.sqrt(m.size / max(1, m.sum()))), bool(m.all())
        else:
            points, values = _pixel_grid(shape), y[i].ravel()
            known[:] = True
            known_values = y[i].astype(np.float32)
            spacing, dense = 1.0, True
        if len(values) == 0:
            raise CkmError(f"task {obs.task}: map {obs.keys[i]} has no observed pixel; "
                           "the task must observe at least one")
        tx = obs.tx[i].detach().cpu().numpy().astype(np.float64) if obs.tx is not None else None
        out.append(Problem(
            shape=shape, points=points, values=values, noise_std=sigma, spacing=spacing, known=known,
            known_values=known_values, dense=dense,
            gain_range=(float(obs.gain_range[i, 0]), float(obs.gain_range[i, 1])),
            pixel_m=float(obs.pixel_m[i]), tx=tx, keep_observed=bool(obs.extras.get("keep_observed", False)),
        ))
    return out


def kept_pixels(problem: Problem, smooths: bool) -> np.ndarray:
    """Pixels whose measurement is returned as the prediction.

    Exact measurements are always kept. Noisy ones are kept by exact interpolators (which
    have nothing better to offer there), except when every pixel is measured (denoising),
    where the method's own estimate is the whole answer. Smoothers re-estimate every pixel,
    unless the task asks for the measurements as measured (``extras["keep_observed"]``: a
    paper protocol whose interpolators only fill the unobserved pixels, e.g. CKMDiff's).
    """
    if problem.noise_std == 0.0 or (problem.keep_observed and not problem.dense):
        return problem.known
    if smooths or problem.dense:
        return np.zeros(problem.shape, bool)
    return problem.known


def local_support(points: np.ndarray, values: np.ndarray, queries: np.ndarray, spacing: float):
    """The measurements near the query pixels: their bounding box grown by half its size.

    Filling a small hole then costs a small problem instead of one over the whole map.
    """
    lo, hi = queries.min(axis=0), queries.max(axis=0)
    margin = max(3.0 * spacing, 0.5 * float((hi - lo).max()) + 2.0)
    inside = np.all((points >= lo - margin) & (points <= hi + margin), axis=1)
    if inside.sum() < min(len(points), 16):
        return points, values
    return points[inside], values[inside]
