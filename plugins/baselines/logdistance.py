"""Log-distance path-gain models: ``g(d) = a - 10 n log10(d)`` with d in metres.

Used by two baselines: ``pathloss`` fits (a, n) to the measurements of each map, and
``distance`` uses the free-space intercept at the carrier frequency with a fixed exponent.
"""

from __future__ import annotations

import math

import numpy as np

C_LIGHT = 299_792_458.0


def free_space_intercept_db(frequency_hz: float) -> float:
    """Path gain at 1 m in free space, ``-20 log10(4 pi f / c)`` (-47.9 dB at 5.9 GHz)."""
    return -20.0 * math.log10(4.0 * math.pi * frequency_hz / C_LIGHT)


def distance_m(points: np.ndarray, tx: np.ndarray, pixel_m: float, tx_height_m: float | None = None,
               rx_height_m: float = 1.5, min_distance_m: float = 1.0) -> np.ndarray:
    """Tx-to-point distance in metres for (n, 2) pixel positions; 3-D when the Tx height is known."""
    horizontal = np.hypot(points[:, 0] - tx[0], points[:, 1] - tx[1]) * pixel_m
    if tx_height_m is not None:
        horizontal = np.hypot(horizontal, tx_height_m - rx_height_m)
    return np.maximum(horizontal, min_distance_m)


def log_distance_gain(d_m: np.ndarray, intercept_db: float, exponent: float) -> np.ndarray:
    return intercept_db - 10.0 * exponent * np.log10(d_m)


def fit_log_distance(d_m: np.ndarray, gain_db: np.ndarray) -> tuple[float, float]:
    """Least-squares (intercept dB, exponent n) of ``g = a - 10 n log10(d)``.

    With fewer than two distinct distances only the mean level is fitted (n = 0).
    """
    d_m, gain_db = np.asarray(d_m, np.float64), np.asarray(gain_db, np.float64)
    x = 10.0 * np.log10(d_m)
    if len(x) < 2 or np.ptp(x) < 1e-9:
        return float(gain_db.mean()) if len(gain_db) else 0.0, 0.0
    design = np.stack([np.ones_like(x), -x], axis=1)
    (a, n), *_ = np.linalg.lstsq(design, gain_db, rcond=None)
    return float(a), float(n)
