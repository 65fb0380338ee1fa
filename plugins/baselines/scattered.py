"""Scattered-data estimators: values at query positions from values at measured positions.

All take ``points`` (n, 2), ``values`` (n,), ``queries`` (m, 2) in pixel coordinates and
return (m,) float64. Degenerate inputs (too few or collinear points for a triangulation or
a thin-plate spline) fall back to nearest neighbour rather than failing a whole run.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CloughTocher2DInterpolator, LinearNDInterpolator, RBFInterpolator
from scipy.spatial import QhullError, cKDTree

from .local import local_predict, thin_plate


def nearest(points, values, queries) -> np.ndarray:
    """Value of the closest measurement."""
    _, idx = cKDTree(points).query(queries, k=1)
    return np.asarray(values, np.float64)[idx]


def _triangulated(cls, points, values, queries) -> np.ndarray:
    """Piecewise interpolation over the Delaunay triangulation, nearest outside the hull."""
    if len(points) < 3:
        return nearest(points, values, queries)
    try:
        out = cls(points, values, fill_value=np.nan)(queries)
    except QhullError:  # all points on a line
        return nearest(points, values, queries)
    outside = ~np.isfinite(out)
    if outside.any():
        out[outside] = nearest(points, values, queries[outside])
    return out


def linear(points, values, queries) -> np.ndarray:
    """Barycentric (piecewise linear) interpolation on the Delaunay triangulation."""
    return _triangulated(LinearNDInterpolator, points, values, queries)


def cubic(points, values, queries) -> np.ndarray:
    """Clough-Tocher piecewise cubic, C1 interpolation on the Delaunay triangulation."""
    return _triangulated(CloughTocher2DInterpolator, points, values, queries)


def knn_mean(points, values, queries, k: int) -> np.ndarray:
    """Mean of the ``k`` closest measurements."""
    k = min(int(k), len(points))
    _, idx = cKDTree(points).query(queries, k=k)
    idx = idx.reshape(len(queries), k)
    return np.asarray(values, np.float64)[idx].mean(axis=1)


def idw(points, values, queries, k: int, power: float = 2.0, smoothing: float = 0.0) -> np.ndarray:
    """Inverse distance weighting over the ``k`` closest measurements.

    Weights ``1 / (d^2 + s^2)^(power/2)``: with ``s = 0`` it reproduces every measurement
    exactly; ``s > 0`` (about the sampling step) turns it into a smoother for noisy data.
    """
    k = min(int(k), len(points))
    dist, idx = cKDTree(points).query(queries, k=k)
    dist, idx = dist.reshape(len(queries), k), idx.reshape(len(queries), k)
    d2 = dist ** 2 + smoothing ** 2
    w = np.maximum(d2, 1e-18) ** (-power / 2.0)
    if smoothing == 0.0:  # a query on a measurement takes its value
        hit = dist[:, 0] == 0.0
        w[hit] = 0.0
        w[hit, 0] = 1.0
    return (w * np.asarray(values, np.float64)[idx]).sum(axis=1) / w.sum(axis=1)


def rbf(points, values, queries, spacing: float = 1.0, neighbors: int = 24, global_max: int = 512,
        smoothing: float = 0.0) -> np.ndarray:
    """Thin-plate-spline RBF interpolation on coordinates in sampling steps.

    Up to ``global_max`` measurements, scipy's ``RBFInterpolator`` solves one global system;
    beyond, each query uses its ``neighbors`` closest measurements, exactly as
    ``RBFInterpolator(neighbors=...)`` defines it, computed by the batched solver of
    ``local.py`` (scipy's loop over neighbourhoods is too slow for every pixel of a dense map).
    ``smoothing`` is added to the kernel diagonal (scipy's meaning).
    """
    if len(points) < 3:
        return nearest(points, values, queries)
    scale = 1.0 / max(float(spacing), 1e-9)
    try:
        if len(points) <= global_max:
            interp = RBFInterpolator(points * scale, values, smoothing=smoothing, kernel="thin_plate_spline")
            return interp(queries * scale)
        return local_predict(points * scale, values, queries * scale, neighbors, thin_plate, 1, smoothing)
    except (ValueError, np.linalg.LinAlgError):  # collinear points: the linear drift is singular
        return nearest(points, values, queries)
