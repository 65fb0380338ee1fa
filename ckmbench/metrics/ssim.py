"""SSIM (Wang et al. 2004) as the protocol defines it (DESIGN §5).

``ssim_reference`` is the definition: scikit-image's ``structural_similarity`` with a
Gaussian window (sigma 1.5, truncated at 3.5 sigma -> 11 taps), K1 = 0.01, K2 = 0.03,
population covariance, data_range 1, computed in float64. ``ssim`` is the batched torch
version used for scoring; it matches the reference to ~1e-12.

Why the torch version needs no padding: scikit-image filters with ``mode='reflect'`` and
then crops ``(win_size - 1) // 2`` pixels from every side before averaging. With an
11-tap window that crop is exactly the window radius, so every kept pixel only sees real
image pixels; a "valid" filter (no padding) produces exactly the cropped map.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..errors import CkmError

SIGMA = 1.5
TRUNCATE = 3.5
K1 = 0.01
K2 = 0.03
DATA_RANGE = 1.0
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # 5, as scipy.ndimage computes it
WIN_SIZE = 2 * RADIUS + 1  # 11


def gaussian_taps(dtype=torch.float64, device=None) -> torch.Tensor:
    """The 1-D window scipy.ndimage.gaussian_filter uses for sigma 1.5, truncate 3.5."""
    x = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / SIGMA) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _check_pair(pred, target, mask, who: str) -> None:
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
        raise CkmError(
            f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N,1,H,W): "
            "pass single-channel map batches of one size"
        )
    if mask is not None and tuple(mask.shape) != tuple(pred.shape):
        raise CkmError(f"{who}: mask {tuple(mask.shape)} must have the maps' shape {tuple(pred.shape)}: pass a (N,1,H,W) bool mask")
    h, w = pred.shape[-2:]
    if h < WIN_SIZE or w < WIN_SIZE:
        raise CkmError(f"{who}: maps of {h}x{w} are smaller than the {WIN_SIZE}x{WIN_SIZE} SSIM window: score maps of at least {WIN_SIZE}x{WIN_SIZE}")


def _band(n: int, taps: torch.Tensor) -> torch.Tensor:
    """(n, n - 2 RADIUS) matrix whose product with a row applies the window ("valid" part)."""
    k = torch.zeros(n, n - 2 * RADIUS, dtype=taps.dtype, device=taps.device)
    cols = torch.arange(n - 2 * RADIUS, device=taps.device)
    for i in range(WIN_SIZE):
        k[cols + i, cols] = taps[i]
    return k


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cropped SSIM map (N,1,H-10,W-10) in float64 (the part scikit-image averages).

    The separable Gaussian filter is two banded matrix products: several times faster
    than float64 ``conv2d`` on CPU, and the same sums.
    """
    x = pred.to(torch.float64)
    y = target.to(torch.float64, copy=False).to(x.device)
    taps = gaussian_taps(device=x.device)
    h, w = x.shape[-2:]
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N,5,H,W)
    filtered = _band(h, taps).T @ (stack @ _band(w, taps))  # (N,5,H-10,W-10)
    ux, uy, uxx, uyy, uxy = filtered.unbind(1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return (num / den).unsqueeze(1)


class _LastMap:
    """The SSIM map of the last (pred, target) pair: the evaluator scores the same chunk for
    the whole map and each region in a row, so the map is computed once, not per region."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        key = (pred, target, pred._version, target._version)
        if self.key is None or not (self.key[0] is pred and self.key[1] is target and self.key[2:] == key[2:]):
            self.key, self.value = key, ssim_map(pred, target)
        return self.value


_last = _LastMap()


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample SSIM (N,) float64; with ``mask``, the mean over masked pixels of the cropped map.

    A sample whose mask has no pixel inside the cropped area gets NaN (skipped by the mean).
    """
    _check_pair(pred, target, mask, "ssim")
    s = _last.get(pred, target)
    if mask is None:
        return s.flatten(1).mean(dim=1)
    m = mask.to(device=s.device, dtype=torch.bool)[..., RADIUS:-RADIUS, RADIUS:-RADIUS]
    m = m.to(torch.float64)
    count = m.flatten(1).sum(dim=1)
    total = (s * m).flatten(1).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def ssim_reference(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM of one (H,W) pair by scikit-image in float64: the protocol's definition."""
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    kwargs = dict(gaussian_weights=True, sigma=SIGMA, use_sample_covariance=False, data_range=DATA_RANGE, K1=K1, K2=K2)
    if mask is None:
        return float(structural_similarity(y, x, **kwargs))
    _, full = structural_similarity(y, x, full=True, **kwargs)
    pad = (WIN_SIZE - 1) // 2
    inner = full[pad:-pad, pad:-pad]
    m = np.asarray(mask, dtype=bool)[pad:-pad, pad:-pad]
    return float(inner[m].mean()) if m.any() else float("nan")
