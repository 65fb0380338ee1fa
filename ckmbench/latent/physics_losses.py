"""The physics losses of the physics-inspired LDM (Zhu et al., S3 eqs. 20-24) on decoded maps.

Why here: they act on maps u in [0, 1] (B, 1, H, W) and know nothing of the method, so any
latent method (or a third-party plugin) can add them to its objective. Every loss is a mean
over pixels (and the batch), is 0 for identical maps and is differentiable in ``pred``; the
target side gets no gradient. The formula details S3 leaves open are the implementer's
choices written in docs/methods/physdiff.md:

* edge loss (eqs. 20-22): the 5-point Laplacian of each map (replicate padding), its magnitude
  binarised at ``threshold`` with a straight-through estimator (forward: the 0/1 edge map;
  backward: the gradient of the magnitude, as if the step were the identity), then the mean
  absolute difference of the two edge maps;
* regional loss (eq. 23): the mean squared difference of the RegionUNet's softmax
  probabilities of the prediction and of the target (the caller runs the frozen RegionUNet);
* Laplacian-pyramid loss (eq. 24): Bojanowski et al.'s Lap1, sum over levels j of
  2^(-2j) x mean |L^j(pred) - L^j(target)|, with a 5x5 binomial Gaussian pyramid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["laplacian", "binarise_st", "edge_map", "edge_loss", "region_loss", "laplacian_pyramid",
           "pyramid_loss", "pyramid_levels"]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 2-D filtering with replicate padding (same size out)."""
    k = kernel.to(device=x.device, dtype=x.dtype)
    p = k.shape[-1] // 2
    c = x.shape[1]
    return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), k.expand(c, 1, *k.shape), groups=c)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The discrete Laplacian (5-point stencil) of each channel (S3 eq. 20)."""
    return _filter(x, _LAPLACIAN)


def binarise_st(a: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where ``a > threshold``, else 0; the backward pass treats the step as the identity
    (straight-through, S3 eq. 21), so the loss can move ``a`` across the threshold."""
    hard = (a > threshold).to(a.dtype)
    return a + (hard - a).detach()


def edge_map(u: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary edges of a map: |Laplacian| above ``threshold`` (straight-through)."""
    return binarise_st(laplacian(u).abs(), threshold)


def edge_loss(pred: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean |E(pred) - E(target)| of the binary edge maps (S3 eq. 22)."""
    with torch.no_grad():
        truth = edge_map(target, threshold)
    return (edge_map(pred, threshold) - truth).abs().mean()


def region_loss(pred_probs: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of sum_k (P_k(pred) - P_k(target))^2 of region probabilities (B, K, H, W) (S3 eq. 23)."""
    return (pred_probs - target_probs.detach()).pow(2).sum(1).mean()


def pyramid_levels(size: int, levels: int) -> int:
    """At most ``levels``, and no level smaller than 4 pixels across."""
    n = 1
    while n < levels and size // 2 ** n >= 4:
        n += 1
    return n


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[L^0, ..., L^(levels-1)]: band-pass levels G^j - up(G^(j+1)), the last one the coarsest G."""
    k2 = _BINOMIAL[:, None] * _BINOMIAL[None, :]
    out, g = [], x
    for _ in range(levels - 1):
        down = _filter(g, k2)[..., ::2, ::2]
        up = F.interpolate(down, size=g.shape[-2:], mode="bilinear", align_corners=False)
        out.append(g - up)
        g = down
    out.append(g)
    return out


def pyramid_loss(pred: torch.Tensor, target: torch.Tensor, levels: int) -> torch.Tensor:
    """Lap1: sum_j 2^(-2j) mean |L^j(pred) - L^j(target)| (S3 eq. 24)."""
    n = pyramid_levels(min(pred.shape[-2:]), levels)
    with torch.no_grad():
        truth = laplacian_pyramid(target, n)
    return sum(4.0 ** -j * (a - b).abs().mean() for j, (a, b) in enumerate(zip(laplacian_pyramid(pred, n), truth)))
