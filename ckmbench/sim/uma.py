"""Channel-power maps without buildings: 3GPP TR 38.901 UMa (the CGDM paper's setting).

Each map: a base station (25 m) at a random position inside or near a 128 m x 128 m area,
UEs at 1.5 m, fc = 2.4 GHz. Per pixel:

* path loss: TR 38.901 Table 7.4.1-1 UMa, LoS or NLoS (``uma_path_loss_db``);
* LoS state, spatially consistent (section 7.6.3.3): a correlated Gaussian field
  (exponential ACF, correlation distance 50 m, Table 7.6.3.1-2) mapped to a uniform by
  its CDF and compared with the LoS probability of Table 7.4.2-1;
* log-normal shadowing, spatially correlated with an exponential ACF: sigma 4 dB /
  decorrelation 37 m in LoS, 6 dB / 50 m in NLoS (Table 7.5-6).

Gain = -(path loss + shadowing) dB. This module is the propagation model only; the
dataset built from it (each map min-max normalized on its own, CGDM eq. 53) is
``ckmbench.data.uma``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft, special

from ..errors import CkmError

SPEED_OF_LIGHT = 3.0e8  # m/s, the value TR 38.901 uses
H_E = 1.0  # effective environment height (m); UMa uses 1 m with probability 1 when h_UT < 13 m


def uma_breakpoint_m(h_bs: float, h_ut: float, fc_ghz: float) -> float:
    """d'_BP = 4 h'_BS h'_UT fc / c with effective heights h' = h - h_E (Table 7.4.1-1 note 1)."""
    return 4.0 * (h_bs - H_E) * (h_ut - H_E) * fc_ghz * 1e9 / SPEED_OF_LIGHT


def uma_path_loss_db(d2d, d3d, h_bs: float, h_ut: float, fc_ghz: float, los) -> np.ndarray:
    """TR 38.901 UMa path loss in dB (Table 7.4.1-1), elementwise.

    LoS: PL1 = 28 + 22 log10(d3D) + 20 log10(fc) up to the breakpoint d'_BP, beyond it
    PL2 = 28 + 40 log10(d3D) + 20 log10(fc) - 9 log10(d'_BP^2 + (h_BS - h_UT)^2).
    NLoS: max(PL_LoS, 13.54 + 39.08 log10(d3D) + 20 log10(fc) - 0.6 (h_UT - 1.5)).
    Distances in metres, fc in GHz; valid for 10 m <= d2D <= 5 km and 1.5 m <= h_UT < 13 m
    (where h_E = 1 m).
    """
    if not 1.5 <= h_ut < 13.0:
        raise CkmError(f"uma: h_ut {h_ut} m is outside 1.5..13 m, where TR 38.901 UMa fixes h_E = 1 m: choose h_ut in that range")
    d2d = np.asarray(d2d, np.float64)
    d3d = np.asarray(d3d, np.float64)
    d_bp = uma_breakpoint_m(h_bs, h_ut, fc_ghz)
    f_term = 20.0 * np.log10(fc_ghz)
    pl1 = 28.0 + 22.0 * np.log10(d3d) + f_term
    pl2 = 28.0 + 40.0 * np.log10(d3d) + f_term - 9.0 * np.log10(d_bp ** 2 + (h_bs - h_ut) ** 2)
    pl_los = np.where(d2d <= d_bp, pl1, pl2)
    pl_nlos = 13.54 + 39.08 * np.log10(d3d) + f_term - 0.6 * (h_ut - 1.5)
    return np.where(np.asarray(los, bool), pl_los, np.maximum(pl_los, pl_nlos))


def uma_los_probability(d2d, h_ut: float = 1.5) -> np.ndarray:
    """TR 38.901 Table 7.4.2-1 UMa LoS probability (outdoor UE), elementwise."""
    d = np.maximum(np.asarray(d2d, np.float64), 1e-9)
    c_prime = 0.0 if h_ut <= 13.0 else ((h_ut - 13.0) / 10.0) ** 1.5
    far = (18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d)) * (
        1.0 + c_prime * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0))
    return np.where(d <= 18.0, 1.0, far)


@lru_cache(maxsize=16)
def _embedding_amplitude(mh: int, mw: int, corr_px: float) -> np.ndarray:
    """sqrt of the spectrum of the exponential covariance on an (mh, mw) torus, scaled for fft2."""
    di = np.minimum(np.arange(mh), mh - np.arange(mh))[:, None]
    dj = np.minimum(np.arange(mw), mw - np.arange(mw))[None, :]
    eig = fft.fft2(np.exp(-np.hypot(di, dj) / corr_px)).real
    amp = np.sqrt(np.maximum(eig, 0.0) / (mh * mw))  # tiny negative eigenvalues from the wrap are dropped
    amp.setflags(write=False)
    return amp


def correlated_gaussian_fields(shape, pixel_m: float, corr_m: float, rng: np.random.Generator, count: int = 1) -> np.ndarray:
    """``count`` independent zero-mean, unit-variance Gaussian fields with ACF exp(-r / corr_m).

    Circulant embedding: the exponential covariance on a periodic grid of at least twice the
    map plus one correlation distance (wrap-around error < 1e-3), the square root of its
    spectrum (scipy.fft) times complex white noise; the real and imaginary parts of one
    transform are two independent fields. Returns (count, H, W) float64.
    """
    h, w = (int(v) for v in shape)
    corr_px = float(corr_m) / float(pixel_m)
    pad = int(np.ceil(corr_px))
    amp = _embedding_amplitude(fft.next_fast_len(2 * h + pad), fft.next_fast_len(2 * w + pad), corr_px)
    out = np.empty((count, h, w), np.float64)
    for k in range(0, count, 2):
        noise = rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)
        field = fft.fft2(amp * noise)
        out[k] = field.real[:h, :w]
        if k + 1 < count:
            out[k + 1] = field.imag[:h, :w]
    return out


def _fields_by_corr(shape, pixel_m: float, corrs: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """One independent unit field per entry of ``corrs``; equal distances share one transform."""
    out: list[np.ndarray | None] = [None] * len(corrs)
    for corr in dict.fromkeys(corrs):
        slots = [i for i, c in enumerate(corrs) if c == corr]
        for i, f in zip(slots, correlated_gaussian_fields(shape, pixel_m, corr, rng, count=len(slots))):
            out[i] = f
    return out


@dataclass(frozen=True)
class UmaParams:
    """The CGDM / TR 38.901 UMa setting; defaults are the paper's values."""

    h_bs: float = 25.0
    h_ut: float = 1.5
    fc_ghz: float = 2.4
    los_corr_m: float = 50.0  # LoS-state correlation distance, Table 7.6.3.1-2
    sf_sigma_los_db: float = 4.0  # Table 7.5-6
    sf_sigma_nlos_db: float = 6.0
    sf_corr_los_m: float = 37.0
    sf_corr_nlos_m: float = 50.0
    bs_margin: float = 0.25  # the BS lies within this fraction of the side outside the area
    min_d2d_m: float = 10.0  # TR 38.901 validity: closer pixels take the 10 m value


@dataclass
class UmaMap:
    """One simulated map and its parts (all (H, W) float32 except ``los`` bool)."""

    gain_db: np.ndarray
    path_loss_db: np.ndarray
    shadowing_db: np.ndarray
    los: np.ndarray
    los_probability: np.ndarray
    tx: tuple[float, float, float]  # (row, col, height m); may lie just outside the map


def simulate_uma_map(size: int, pixel_m: float, rng: np.random.Generator, params: UmaParams | None = None,
                     tx: tuple[float, float] | None = None) -> UmaMap:
    """One UMa channel-power map; the BS is drawn from ``rng`` unless ``tx`` (row, col) is given."""
    p = params or UmaParams()
    h = w = int(size)
    if tx is None:
        lo, hi = -p.bs_margin * (size - 1), (1.0 + p.bs_margin) * (size - 1)
        tx = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    rows, cols = np.mgrid[0:h, 0:w]
    d2d = np.maximum(np.hypot(rows - tx[0], cols - tx[1]) * pixel_m, p.min_d2d_m)
    d3d = np.sqrt(d2d ** 2 + (p.h_bs - p.h_ut) ** 2)
    p_los = uma_los_probability(d2d, p.h_ut)
    z_los, z_sf_los, z_sf_nlos = _fields_by_corr((h, w), pixel_m, [p.los_corr_m, p.sf_corr_los_m, p.sf_corr_nlos_m], rng)
    los = special.ndtr(z_los) < p_los  # spatially consistent LoS state (7.6.3.3)
    shadowing = np.where(los, z_sf_los * p.sf_sigma_los_db, z_sf_nlos * p.sf_sigma_nlos_db)
    pl = uma_path_loss_db(d2d, d3d, p.h_bs, p.h_ut, p.fc_ghz, los)
    return UmaMap(
        gain_db=(-(pl + shadowing)).astype(np.float32),
        path_loss_db=pl.astype(np.float32),
        shadowing_db=shadowing.astype(np.float32),
        los=los,
        los_probability=p_los.astype(np.float32),
        tx=(float(tx[0]), float(tx[1]), float(p.h_bs)),
    )
