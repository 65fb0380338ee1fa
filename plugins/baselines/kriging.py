"""Ordinary kriging with a PyKrige-fitted variogram and vectorized local neighbourhoods.

PyKrige fits the variogram (spherical, exponential, ...) on a subsample of the
measurements, so the O(n^2) experimental variogram stays small. The prediction then solves
one small ordinary-kriging system per query pixel over its ``k`` nearest measurements,
batched and shared between pixels with the same neighbourhood geometry (``local.py``):
PyKrige's own moving-window backends solve point by point, too slow for every pixel of
hundreds of maps.

The nugget is treated as measurement noise (PyKrige's ``exact_values=False``): the data
covariance carries it on the diagonal, the query covariance does not, so noisy
measurements are smoothed; with no nugget the predictor interpolates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from pykrige.ok import OrdinaryKriging

from .local import global_predict, local_predict

MODELS = ("spherical", "exponential", "gaussian")


@dataclass(frozen=True)
class Variogram:
    """A bounded variogram ``gamma(d) = psill * shape(d / range) + nugget`` (d > 0)."""

    model: str
    psill: float
    range: float
    nugget: float
    function: Callable

    def signal_covariance(self, d: np.ndarray) -> np.ndarray:
        """Covariance of the noise-free field: ``psill`` at 0, falling to 0 past the range."""
        gamma = self.function([self.psill, self.range, self.nugget], d)
        return np.where(d > 0, self.psill + self.nugget - gamma, self.psill)


def fit_variogram(points, values, model: str = "exponential", max_points: int = 256, nlags: int = 12,
                  rng: np.random.Generator | None = None, min_nugget: float = 0.0) -> Variogram | None:
    """PyKrige's least-squares variogram fit on at most ``max_points`` measurements.

    Returns None when the data carry no variance (constant field) or are too few to fit.
    ``min_nugget`` raises the nugget to a known noise variance.
    """
    values = np.asarray(values, np.float64)
    if len(values) < 4 or np.ptp(values) < 1e-9:
        return None
    if len(values) > max_points:
        rng = rng or np.random.default_rng(0)
        idx = rng.choice(len(values), size=max_points, replace=False)
        points, values = points[idx], values[idx]
    try:
        ok = OrdinaryKriging(points[:, 1], points[:, 0], values, variogram_model=model,
                             nlags=max(2, min(nlags, len(values) // 2)))
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
        return None
    psill, rng_, nugget = (float(v) for v in ok.variogram_model_parameters)
    if not (np.isfinite(psill) and np.isfinite(rng_) and psill > 0 and rng_ > 0):
        return None
    return Variogram(model, psill, rng_, max(float(nugget), float(min_nugget), 0.0), ok.variogram_function)


def krige(points, values, queries, variogram: Variogram, k: int = 16, global_max: int = 64) -> np.ndarray:
    """Ordinary kriging at every query from its ``k`` nearest measurements.

    Up to ``global_max`` measurements one system over all of them is solved instead.
    """
    diag = variogram.nugget + 1e-10 * (variogram.psill + variogram.nugget)
    if len(points) <= max(global_max, 1):
        return global_predict(points, values, queries, variogram.signal_covariance, 0, diag)
    return local_predict(points, values, queries, k, variogram.signal_covariance, 0, diag)
