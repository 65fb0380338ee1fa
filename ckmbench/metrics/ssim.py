"""SSIM (Wang et al. 2004) as the protocol defines it (docs/metrics.md, "SSIM").

``ssim_reference`` is the definition: scikit-image's ``structural_similarity`` with a
Gaussian window (sigma 1.5, truncated at 3.5 sigma -> 11 taps), K1 = 0.01, K2 = 0.03,
population covariance, data_range 1, computed in float64. ``ssim`` is the batched version
used for scoring; it matches the reference to ~1e-15.

Why no padding is needed: scikit-image filters with ``mode='reflect'`` and then crops
``(win_size - 1) // 2`` pixels from every side before averaging. With an 11-tap window that
crop is exactly the window radius, so every kept pixel only sees real image pixels; a
"valid" filter (no padding) produces exactly the cropped map.

Speed: the window is separable and symmetric, so the local moments are filtered by two
1-D "valid" passes of 6 products each, a few maps at a time so that they stay in cache.
Groups run on a pool of worker threads (as many as torch's thread count, but no more than
the cores other processes leave free: on a busy machine the threads only fight over the
GIL). The SSIM map of a chunk is computed once and reduced over every region in one matrix
product.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..errors import CkmError
from .pixel import LastResult, _check_masks, _check_pair, _divide, idle_cores, region_means, serial_torch_ops

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


_TAPS = gaussian_taps().tolist()
GROUP = 4  # maps filtered together: their moments (4 x 4 x H x W float64) stay in cache


def _check_size(pred, who: str) -> None:
    h, w = pred.shape[-2:]
    if h < WIN_SIZE or w < WIN_SIZE:
        raise CkmError(f"{who}: maps of {h}x{w} are smaller than the {WIN_SIZE}x{WIN_SIZE} SSIM window: score maps of at least {WIN_SIZE}x{WIN_SIZE}")


def _valid_pass(a: torch.Tensor, dim: int) -> torch.Tensor:
    """The 11-tap window along ``dim``, "valid" part only: 6 products, using its symmetry."""
    n = a.shape[dim] - 2 * RADIUS
    out = a.narrow(dim, RADIUS, n) * _TAPS[RADIUS]
    for i in range(RADIUS):
        out.add_(a.narrow(dim, i, n) + a.narrow(dim, 2 * RADIUS - i, n), alpha=_TAPS[i])
    return out


def _ssim_group(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(G,H,W) float64 pairs -> (G,H-10,W-10) SSIM map.

    Only four moments are filtered — x, y, x² + y², xy — because the SSIM formula needs the
    variances only through their sum: vx + vy = E[x² + y²] - (ux² + uy²).
    """
    moments = torch.empty(x.shape[0], 4, *x.shape[1:], dtype=x.dtype, device=x.device)  # (G,4,H,W)
    moments[:, 0], moments[:, 1] = x, y
    torch.mul(x, x, out=moments[:, 2]).addcmul_(y, y)
    torch.mul(x, y, out=moments[:, 3])
    ux, uy, uxx_yy, uxy = _valid_pass(_valid_pass(moments, 2), 3).unbind(1)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    uxuy = ux * uy
    means2 = ux.square_().add_(uy.square_())  # ux² + uy²
    num = (2 * uxuy + c1).mul_(uxy.sub_(uxuy).mul_(2).add_(c2))  # (2 ux uy + c1)(2 vxy + c2)
    den = (means2 + c1).mul_(uxx_yy.sub_(means2).add_(c2))  # (ux² + uy² + c1)(vx + vy + c2)
    return num.div_(den)


_POOL: dict[int, ThreadPoolExecutor] = {}


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cropped SSIM map (N,1,H-10,W-10) in float64 (the part scikit-image averages)."""
    x = pred.detach()[:, 0]
    y = target.detach()[:, 0].to(x.device)
    n, h, w = x.shape
    out = torch.empty(n, h - 2 * RADIUS, w - 2 * RADIUS, dtype=torch.float64, device=x.device)

    def group(start: int) -> None:
        sl = slice(start, start + GROUP)
        out[sl] = _ssim_group(x[sl].to(torch.float64), y[sl].to(torch.float64))

    starts = range(0, n, GROUP)
    if x.device.type != "cpu" or len(starts) == 1:
        for start in starts:
            group(start)
    else:
        with serial_torch_ops() as threads:
            threads = min(threads, idle_cores())
            if threads == 1:
                for start in starts:
                    group(start)
            else:
                if threads not in _POOL:
                    _POOL[threads] = ThreadPoolExecutor(threads, "ckmbench-ssim")
                list(_POOL[threads].map(group, starts))
    return out.unsqueeze(1)


def _ssim_padded(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The SSIM map at full size (N,1,H,W), 0 on the cropped border."""
    s = ssim_map(pred, target)
    full = s.new_zeros(*pred.shape)
    full[..., RADIUS:-RADIUS, RADIUS:-RADIUS] = s
    return full


_ssim_padded_memo = LastResult(_ssim_padded)


def ssim_all_regions(pred, target, gain_range=None, masks=(None,)) -> list[torch.Tensor]:
    """Per-sample SSIM (N,) float64 for each entry of ``masks`` (None = the whole map): the
    mean over the region's pixels of the cropped SSIM map, computed once for all regions.

    A sample whose mask has no pixel inside the cropped area gets NaN (skipped by the mean).
    """
    pred, target = _check_pair(pred, target, "ssim")
    masks = _check_masks(pred, masks, "ssim")
    _check_size(pred, "ssim")
    s = _ssim_padded_memo(pred, target)
    sums, counts = region_means(s, masks, crop=RADIUS)  # the pixel metrics' mask weights, reused
    return list(_divide(sums[..., 0], counts).unbind(1))


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample SSIM (N,) float64; with ``mask``, the mean over masked pixels of the cropped map.

    A sample whose mask has no pixel inside the cropped area gets NaN (skipped by the mean).
    """
    return ssim_all_regions(pred, target, None, [mask])[0]


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
