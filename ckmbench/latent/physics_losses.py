"""The physics losses of the physics-inspired LDM (Zhu et al., S3 eqs. 20-24) on decoded maps.

Why here: they act on maps u in [0, 1] (B, 1, H, W) and know nothing of the method, so any
latent method (or a third-party plugin) can add them to its objective. Each loss is 0 for
identical maps and differentiable in ``pred``; the target side gets no gradient. They run in
float32 with autocast off (:func:`ckmbench.precision.fp32_loss`): thresholds and small
differences of maps do not survive bf16. As S3 states them:

* edge loss (eqs. 20-22): the Laplacian of each map (eq. 20), the soft edge map
  S(x) = sigmoid(alpha (|lap x| / max |lap x| - tau)) with the maximum over the map, the hard
  edge map H(x) = 1[S(x) > 0.5] (eq. 21), used forward, while the gradient flows through S
  (straight-through: H + S - sg(S)), and the squared norm ||H(pred) - H(target)||^2 (eq. 22);
* regional loss (eq. 23): the squared difference of the RegionUNet's softmax probabilities of
  the prediction and of the target (the caller runs the frozen RegionUNet);
* Laplacian-pyramid loss (eq. 24): sum over levels j of 2^(-2j) ||L^j(pred) - L^j(target)||^2.

What S3 does not state, and our choice (docs/methods/physdiff.md says why): the 5-point
stencil with replicate padding; alpha = 50 and tau = 0.05 (neither value is given in S3 nor in
reference/methods.md); each squared norm divided by its number of elements (a mean, as the
diffusion loss ||z0 - z0_hat||^2 is taken), so the loss weights do not depend on the map size;
the pyramid's 5x5 binomial kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckmbench.precision import fp32_loss

__all__ = ["laplacian", "soft_edge_map", "edge_map", "edge_loss", "region_loss", "laplacian_pyramid",
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


def soft_edge_map(u: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """S3 eq. 21's soft edge map sigmoid(alpha (|lap u| / max |lap u| - tau)), the maximum per map
    (a flat map, whose Laplacian is 0 everywhere, reads sigmoid(-alpha tau))."""
    a = laplacian(u).abs()
    peak = a.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.sigmoid(alpha * (a / peak - tau))


def edge_map(u: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """S3 eq. 21's hard edge map 1[S(u) > 0.5] forward; backward the gradient of the soft map S
    (straight-through: H + S - sg(S), whose value is exactly H)."""
    soft = soft_edge_map(u, alpha, tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


@fp32_loss
def edge_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """||H(pred) - H(target)||^2 over the number of pixels (S3 eq. 22)."""
    with torch.no_grad():
        truth = edge_map(target, alpha, tau)
    return (edge_map(pred, alpha, tau) - truth).pow(2).mean()


@fp32_loss
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


@fp32_loss
def pyramid_loss(pred: torch.Tensor, target: torch.Tensor, levels: int) -> torch.Tensor:
    """sum_j 2^(-2j) ||L^j(pred) - L^j(target)||^2, each norm over the level's number of elements (S3 eq. 24)."""
    n = pyramid_levels(min(pred.shape[-2:]), levels)
    with torch.no_grad():
        truth = laplacian_pyramid(target, n)
    return sum(4.0 ** -j * (a - b).pow(2).mean() for j, (a, b) in enumerate(zip(laplacian_pyramid(pred, n), truth)))
