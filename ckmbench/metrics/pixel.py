"""Per-sample pixel and gain metrics on normalized maps (DESIGN §5).

Every function takes batches ``pred``, ``target`` (N,1,H,W) of normalized maps u in [0, 1]
(the evaluator clips predictions first), an optional (N,1,H,W) bool ``mask`` restricting
the pixels scored (a region such as ``outdoor`` or ``hole``), and returns one float64 value
per sample (N,). A sample that cannot be scored (empty region, nmse with an all-zero
target) gets NaN; the evaluator skips NaNs and notes how many.
"""

from __future__ import annotations

import torch

from ..errors import CkmError

PSNR_CAP_DB = 100.0


def _prepare(pred, target, mask, who: str):
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
        raise CkmError(
            f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N,1,H,W): "
            "pass single-channel map batches of one size"
        )
    if mask is not None:
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(pred.shape):
            raise CkmError(f"{who}: mask {tuple(mask.shape)} must have the maps' shape {tuple(pred.shape)}: pass a (N,1,H,W) bool mask")
        mask = mask.to(device=pred.device, dtype=torch.bool)
    return pred.to(torch.float64), target.to(device=pred.device, dtype=torch.float64), mask


def _masked_sum(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        x = x * mask
    return x.flatten(1).sum(dim=1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (masked) pixels per sample; NaN where the mask is empty."""
    if mask is None:
        return x.flatten(1).mean(dim=1)
    count = mask.flatten(1).sum(dim=1).to(torch.float64)
    total = _masked_sum(x, mask)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def mse(pred, target, gain_range=None, mask=None) -> torch.Tensor:
    """mean(e^2) with e = u - û, per sample."""
    pred, target, mask = _prepare(pred, target, mask, "mse")
    return _masked_mean((target - pred) ** 2, mask)


def nmse(pred, target, gain_range=None, mask=None) -> torch.Tensor:
    """sum(e^2) / sum(u^2) per sample (CKMDiff eq. 25); NaN where sum(u^2) = 0 or the mask is empty."""
    pred, target, mask = _prepare(pred, target, mask, "nmse")
    num = _masked_sum((target - pred) ** 2, mask)
    den = _masked_sum(target ** 2, mask)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def psnr(pred, target, gain_range=None, mask=None, cap: float = PSNR_CAP_DB) -> torch.Tensor:
    """10 log10(1 / mse) per sample (peak 1 on normalized maps), capped at ``cap`` dB."""
    err = mse(pred, target, mask=mask)
    value = 10.0 * torch.log10(1.0 / err)  # mse 0 -> +inf -> capped
    return torch.where(torch.isnan(err), err, value.clamp(max=cap))


def _gain_range(gain_range, n: int, device) -> torch.Tensor:
    if gain_range is None:
        raise CkmError("mse_gain: no gain_range given: pass the (N,2) per-sample (g_min, g_max) in dB")
    gr = torch.as_tensor(gain_range, dtype=torch.float64, device=device)
    if gr.shape != (n, 2):
        raise CkmError(f"mse_gain: gain_range has shape {tuple(gr.shape)}, expected ({n}, 2): pass one (g_min, g_max) per map")
    return gr


def mse_gain(pred, target, gain_range=None, mask=None) -> torch.Tensor:
    """mean((g - ĝ)^2) in dB^2 with g = g_min + u (g_max - g_min) using each sample's range."""
    pred, target, mask = _prepare(pred, target, mask, "mse_gain")
    gr = _gain_range(gain_range, pred.shape[0], pred.device)
    g_min = gr[:, 0].view(-1, 1, 1, 1)
    span = (gr[:, 1] - gr[:, 0]).view(-1, 1, 1, 1)
    g = g_min + target * span
    g_hat = g_min + pred * span
    return _masked_mean((g - g_hat) ** 2, mask)
