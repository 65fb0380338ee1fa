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
1-D "valid" passes of 6 products each, four maps at a time in reused per-thread buffers so
that they stay in cache; each block's SSIM map is reduced over every region in one matrix
product (``pixel.region_sums``). ``ssim_map`` called on its own runs its groups on a pool of
worker threads; inside the evaluator, which already scores slices on worker threads, each
thread filters its own slice.
"""

from __future__ import annotations


import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..errors import CkmError
from .pixel import BLOCK, _check_masks, _check_pair, _divide, idle_cores, region_sums, scratch, serial_torch_ops, worker_pool

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
GROUP = BLOCK  # maps filtered together: their moments (4 x 4 x H x W float64) stay in cache


def _check_size(pred, who: str) -> None:
    h, w = pred.shape[-2:]
    if h < WIN_SIZE or w < WIN_SIZE:
        raise CkmError(f"{who}: maps of {h}x{w} are smaller than the {WIN_SIZE}x{WIN_SIZE} SSIM window: score maps of at least {WIN_SIZE}x{WIN_SIZE}")


def _valid_pass(a: torch.Tensor, dim: int, out: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """The 11-tap window along ``dim`` into ``out``, "valid" part only: 6 products, using
    its symmetry; ``pair`` is scratch of ``out``'s shape."""
    n = a.shape[dim] - 2 * RADIUS
    torch.mul(a.narrow(dim, RADIUS, n), _TAPS[RADIUS], out=out)
    for i in range(RADIUS):
        out.add_(torch.add(a.narrow(dim, i, n), a.narrow(dim, 2 * RADIUS - i, n), out=pair), alpha=_TAPS[i])
    return out


def _ssim_group(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(G,H,W) pairs -> the (G,H-10,W-10) float64 SSIM map, written into ``out``.

    Only four moments are filtered — x, y, x² + y², xy — because the SSIM formula needs the
    variances only through their sum: vx + vy = E[x² + y²] - (ux² + uy²).
    """
    g, h, w = x.shape
    hv, wv = h - 2 * RADIUS, w - 2 * RADIUS
    moments = scratch("ssim_moments", (GROUP, 4, h, w), device=x.device)[:g]  # x, y, x² + y², xy
    rows = scratch("ssim_rows", (GROUP, 4, hv, w), device=x.device)[:g]  # after the pass along H
    rows_pair = scratch("ssim_rows_pair", (GROUP, 4, hv, w), device=x.device)[:g]
    valid = scratch("ssim_valid", (GROUP, 4, hv, wv), device=x.device)[:g]  # after the pass along W
    spare = scratch("ssim_valid_pair", (GROUP, 4, hv, wv), device=x.device)[:g]
    moments[:, 0].copy_(x)
    moments[:, 1].copy_(y)
    xd, yd = moments[:, 0], moments[:, 1]
    torch.mul(xd, xd, out=moments[:, 2]).addcmul_(yd, yd)
    torch.mul(xd, yd, out=moments[:, 3])
    _valid_pass(_valid_pass(moments, 2, rows, rows_pair), 3, valid, spare)
    ux, uy, uxx_yy, uxy = valid.unbind(1)
    uxuy = torch.mul(ux, uy, out=spare[:, 0])
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    means2 = ux.square_().add_(uy.square_())  # ux² + uy²
    torch.mul(uxuy, 2, out=out).add_(c1).mul_(uxy.sub_(uxuy).mul_(2).add_(c2))  # (2 ux uy + c1)(2 vxy + c2)
    den = torch.add(means2, c1, out=spare[:, 1]).mul_(uxx_yy.sub_(means2).add_(c2))  # (ux² + uy² + c1)(vx + vy + c2)
    return out.div_(den)


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cropped SSIM map (N,1,H-10,W-10) in float64 (the part scikit-image averages)."""
    x = pred.detach()[:, 0]
    y = target.detach()[:, 0].to(x.device)
    n, h, w = x.shape
    out = torch.empty(n, h - 2 * RADIUS, w - 2 * RADIUS, dtype=torch.float64, device=x.device)

    def group(start: int) -> None:
        sl = slice(start, start + GROUP)
        _ssim_group(x[sl], y[sl], out[sl])

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
                list(worker_pool(threads).map(group, starts))
    return out.unsqueeze(1)


def ssim_all_regions(pred, target, gain_range=None, masks=(None,)) -> list[torch.Tensor]:
    """Per-sample SSIM (N,) float64 for each entry of ``masks`` (None = the whole map): the
    mean over the region's pixels of the cropped SSIM map, computed once for all regions.

    A sample whose mask has no pixel inside the cropped area gets NaN (skipped by the mean).
    """
    pred, target = _check_pair(pred, target, "ssim")
    masks = _check_masks(pred, masks, "ssim")
    _check_size(pred, "ssim")
    _, _, h, w = pred.shape

    def block_map(start: int, stop: int) -> torch.Tensor:  # GROUP = BLOCK: one group per block
        out = scratch("ssim_block", (GROUP, h - 2 * RADIUS, w - 2 * RADIUS), device=pred.device)[:stop - start]
        return _ssim_group(pred[start:stop, 0], target[start:stop, 0], out).unsqueeze(1)

    sums, counts = region_sums(masks, int(pred.shape[0]), 1, RADIUS, block_map)
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
