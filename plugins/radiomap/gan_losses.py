"""The loss terms of RME-GAN (Zhang et al.): TV, gradient cosine, MS-SSIM-L1, power, SLIC.

All act on maps (B, 1, H, W) on the training scale and are differentiable in the prediction.
Where the official code's version of a term cannot train anything (its power loss compares
indices computed from detached numpy arrays) or needs the sparse samples that S3/S4's
setting does not give (its cosine and SLIC terms read them), the term is built against the
target map instead; docs/methods/radiomap-baselines.md says which and why.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ckmbench.precision import fp32_loss

# The code's four directional gradient kernels (Sobel x, y and the two diagonals).
GRADIENT_KERNELS = torch.tensor([
    [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    [[-2, -1, 0], [-1, 0, 1], [0, 1, 2]],
    [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
], dtype=torch.float32)[:, None]


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, the mean absolute difference of neighbours in each direction."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


@fp32_loss  # in float32: gradients are differences of neighbours (ckmbench/precision.py)
def gradient_cosine_loss(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """1 − mean over pixels of the cosine between the 4-direction gradient vectors of pred and ref."""
    k = GRADIENT_KERNELS.to(pred.device, pred.dtype)
    gp, gr = F.conv2d(pred, k, padding=1), F.conv2d(ref, k, padding=1)
    return 1.0 - F.cosine_similarity(gp, gr, dim=1, eps=1e-8).mean()


def _gauss_1d(sigma: float, size: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of the 1-D filter ``g`` with zero padding: row i holds g centred on i."""
    p = (g.numel() - 1) // 2
    offset = torch.arange(n, device=g.device)[None, :] - torch.arange(n, device=g.device)[:, None] + p
    inside = (offset >= 0) & (offset < g.numel())
    return torch.where(inside, g[offset.clamp(0, g.numel() - 1)], torch.zeros((), device=g.device, dtype=g.dtype))


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gaussian filter with zero padding ('same' size), as the code's 2-D conv, computed as
    two matrix products (a 33-tap conv is slow on CPUs; the products are exact and fast)."""
    return _band(x.shape[-2], g) @ x @ _band(x.shape[-1], g).T


@fp32_loss  # in float32: E[x^2] - mu^2 cancels in bf16, the SSIM denominator went < 0
def ms_ssim_l1_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.84,
                    sigmas=(0.5, 1.0, 2.0, 4.0, 8.0), data_range: float = 1.0) -> torch.Tensor:
    """Zhao et al.'s mix α·(1 − MS-SSIM) + (1 − α)·(Gaussian-weighted L1), the code's
    ``MS_SSIM_L1_LOSS``: the scales are Gaussian windows of growing σ at full resolution
    (so any map size works), luminance from the widest, contrast-structure from every one."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    size = int(4 * sigmas[-1] + 1)
    cs_prod, lum, g = 1.0, None, None
    moments = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)  # (B, 5, H, W)
    for s in sigmas:
        g = _gauss_1d(s, size, pred.device, pred.dtype)
        mx, my, exx, eyy, exy = _blur(moments, g).unbind(1)
        sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
        cs_prod = cs_prod * (2 * sxy + c2) / (sxx + syy + c2)
        lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    ms_ssim = (lum * cs_prod).mean()
    gaussian_l1 = _blur((pred - target).abs(), g).mean() / data_range
    return alpha * (1.0 - ms_ssim) + (1.0 - alpha) * gaussian_l1


def radial_power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(B, K) mean |FFT|² over rings of integer radius 1 … K (K = min(H, W) // 2)."""
    H, W = x.shape[-2:]
    power = torch.fft.rfft2(x.float(), norm="ortho").abs().pow(2).flatten(1)  # (B, H*(W//2+1))
    fy = torch.fft.fftfreq(H, device=x.device)[:, None] * H
    fx = torch.fft.rfftfreq(W, device=x.device)[None, :] * W
    radius = torch.sqrt(fy ** 2 + fx ** 2).round().long().flatten()
    K = min(H, W) // 2
    keep = (radius >= 1) & (radius <= K)
    idx = (radius[keep] - 1).expand(power.shape[0], -1)
    sums = torch.zeros(power.shape[0], K, device=x.device).scatter_add_(1, idx, power[:, keep])
    counts = torch.zeros(K, device=x.device).scatter_add_(0, radius[keep] - 1, torch.ones_like(power[0, keep]))
    return sums / counts.clamp(min=1)


@fp32_loss  # in float32: an FFT and the log of small powers
def power_loss(pred: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean squared difference of the log radial power spectra of pred and ref."""
    return (torch.log(radial_power_spectrum(pred) + eps) - torch.log(radial_power_spectrum(ref) + eps)).pow(2).mean()


def slic_peaks(maps: np.ndarray, n_segments: int = 100, sigma: float = 5.0) -> list[np.ndarray]:
    """Per map (H, W), the flat index of the strongest pixel of each SLIC superpixel."""
    from skimage.segmentation import slic

    out = []
    for m in maps:
        labels = slic(m.astype(np.float64), n_segments=n_segments, sigma=sigma, channel_axis=None, start_label=0)
        flat, lab = m.ravel(), labels.ravel()
        order = np.lexsort((-flat, lab))  # by label, strongest first
        first = np.r_[True, lab[order][1:] != lab[order][:-1]]
        out.append(order[first])
    return out


def slic_loss(pred: torch.Tensor, target: torch.Tensor, n_segments: int = 100, sigma: float = 5.0) -> torch.Tensor:
    """The code's SLIC term: L1 between pred and target at the strongest pixel of each SLIC
    superpixel of the target, over a table of ``n_segments`` entries per map (the code's
    ``torch.zeros(batch, 100)``; entries without a superpixel count as 0 in the mean)."""
    peaks = slic_peaks(target[:, 0].detach().cpu().numpy(), n_segments, sigma)
    flat_p, flat_t = pred.flatten(1), target.flatten(1)
    errs = [(flat_p[i, idx] - flat_t[i, idx]).abs().sum()
            for i, idx in enumerate(torch.as_tensor(p, device=pred.device) for p in peaks)]
    return torch.stack(errs).sum() / (len(peaks) * max(n_segments, max(len(p) for p in peaks)))


def bce_logits(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
