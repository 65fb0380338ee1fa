"""Local kernel interpolation (kriging, RBF) with all small systems solved at once.

Each query pixel is predicted from its ``k`` nearest measurements by solving

    [ K + diag   P ] [w]   [ kernel(d_q) ]
    [ P^T        0 ] [c] = [ p(q)        ]

and returning ``w . values``: ordinary kriging when ``kernel`` is a covariance and ``P``
the constant drift (degree 0); the thin-plate spline of scipy's
``RBFInterpolator(neighbors=k)`` when ``kernel`` is ``r^2 log r`` and ``P`` linear
(degree 1). The weights depend only on where the neighbours sit relative to the query,
which repeats over and over on regular grids (every pixel of the same phase in sr, every
interior pixel of a dense map), so systems are solved once per distinct neighbourhood
geometry. Polynomial terms use coordinates relative to the query, which keeps them well
conditioned.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.spatial import cKDTree


def thin_plate(r: np.ndarray) -> np.ndarray:
    """``r^2 log r`` with 0 at r = 0 (scipy's ``thin_plate_spline`` kernel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, r * r * np.log(np.where(r > 0, r, 1.0)), 0.0)


def _poly(rel: np.ndarray, degree: int) -> np.ndarray:
    """(..., k, 2) relative positions -> (..., k, terms) monomials of total degree <= ``degree``."""
    ones = np.ones(rel.shape[:-1] + (1,))
    return ones if degree == 0 else np.concatenate([ones, rel], axis=-1)


def _pairwise(rel: np.ndarray) -> np.ndarray:
    """(U, k, 2) -> (U, k, k) distances between the neighbours of each geometry."""
    dr = rel[:, :, None, 0] - rel[:, None, :, 0]
    dc = rel[:, :, None, 1] - rel[:, None, :, 1]
    return np.hypot(dr, dc)


def _solve(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:  # a degenerate (e.g. collinear) neighbourhood somewhere in the batch
        return np.linalg.pinv(lhs) @ rhs


def cardinal_weights(rel: np.ndarray, kernel: Callable, degree: int, diag: float) -> np.ndarray:
    """(U, k, 2) neighbour offsets from the query -> (U, k) weights of the neighbour values."""
    u, k, _ = rel.shape
    poly = _poly(rel, degree)
    t = poly.shape[-1]
    lhs = np.zeros((u, k + t, k + t))
    lhs[:, :k, :k] = kernel(_pairwise(rel))
    lhs[:, np.arange(k), np.arange(k)] += diag
    lhs[:, :k, k:] = poly
    lhs[:, k:, :k] = np.swapaxes(poly, 1, 2)
    rhs = np.zeros((u, k + t, 1))
    rhs[:, :k, 0] = kernel(np.hypot(rel[..., 0], rel[..., 1]))
    rhs[:, k, 0] = 1.0  # the query's own monomials: 1, and 0 for the relative coordinates
    return _solve(lhs, rhs)[:, :k, 0]


def global_predict(points, values, queries, kernel: Callable, degree: int, diag: float) -> np.ndarray:
    """The same predictor with every measurement in one system (for few measurements)."""
    n = len(points)
    centre = points.mean(axis=0)
    p, q = points - centre, queries - centre
    poly_p, poly_q = _poly(p, degree), _poly(q, degree)
    t = poly_p.shape[-1]
    lhs = np.zeros((n + t, n + t))
    lhs[:n, :n] = kernel(np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1]))
    lhs[np.arange(n), np.arange(n)] += diag
    lhs[:n, n:], lhs[n:, :n] = poly_p, poly_p.T
    rhs = np.concatenate([kernel(np.hypot(p[:, None, 0] - q[None, :, 0], p[:, None, 1] - q[None, :, 1])),
                          poly_q.T], axis=0)
    data = np.concatenate([np.asarray(values, np.float64), np.zeros(t)])
    try:
        coef = np.linalg.solve(lhs, data)
    except np.linalg.LinAlgError:  # e.g. collinear measurements under a linear drift
        coef = np.linalg.lstsq(lhs, data, rcond=None)[0]
    return coef @ rhs


def _neighbours(tree: cKDTree, points: np.ndarray, q: np.ndarray, k: int, spare: int = 12):
    """(indices, offsets, rounded offsets) of the k nearest measurements of each query.

    They come in a canonical order, by distance and then by offset: ties (frequent on grids)
    are broken by the offset from the query rather than by storage order, so translated
    copies of a neighbourhood get identical offsets and share one system.
    """
    kk = min(k + spare, len(points))
    dist, idx = tree.query(q, k=kk)
    dist, idx = dist.reshape(len(q), kk), idx.reshape(len(q), kk)
    rel = points[idx] - q[:, None, :]
    key = np.round(rel, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    # tiny offset-dependent tie-breakers, far below the distance gaps of any pixel lattice
    order = np.argsort(np.round(dist, 6) + 1e-8 * key[..., 0] + 1e-11 * key[..., 1], axis=1)[:, :k]
    take = lambda a: np.take_along_axis(a, order[..., None], axis=1)  # noqa: E731
    return np.take_along_axis(idx, order, axis=1), take(rel), take(key)


def _unique_rows(a: np.ndarray):
    """(first index, inverse) of the distinct rows of a 2-D float array, compared bytewise."""
    a = np.ascontiguousarray(a)
    rows = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def local_predict(points, values, queries, k: int, kernel: Callable, degree: int, diag: float,
                  chunk: int = 16384) -> np.ndarray:
    """Predict every query from its ``k`` nearest measurements (see the module docstring)."""
    values = np.asarray(values, np.float64)
    k = min(int(k), len(points))
    tree = cKDTree(points)
    out = np.empty(len(queries))
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        idx, rel, key = _neighbours(tree, points, q, k)
        first, inverse = _unique_rows(key.reshape(len(q), -1))
        weights = cardinal_weights(rel[first], kernel, degree, diag)
        out[s:s + chunk] = (weights[inverse] * values[idx]).sum(axis=1)
    return out
