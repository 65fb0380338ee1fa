"""The building blocks of RadioDiff's U-Net, as its public code has them (UNIC-Lab/RadioDiff,
``denoising_diffusion_pytorch/mask_cond_unet.py``, itself from lucidrains' denoising-diffusion-pytorch).

Why not the SR3 blocks of :mod:`ckmbench.diffusion.unet`: the code's blocks differ in every
part that sets the parameter count and the conditioning (docs/methods/radiodiff.md):

* :class:`WSConv2d`: weight-standardised 3x3 convolution (Qiao et al. 2019; the code's
  ``WeightStandardizedConv2d``), eps 1e-5 in fp32 and 1e-3 otherwise;
* :class:`ResnetBlock`: WS-conv -> GroupNorm(8) -> ``x (1 + scale) + shift`` from the time
  embedding -> SiLU, then WS-conv -> GroupNorm -> SiLU, plus a 1x1 skip (the code's
  ``ResnetBlock``/``Block``; no dropout);
* :class:`LinearAttention` (every level) and :class:`Attention` (the middle block), each
  behind a channel LayerNorm on a residual path (the code's ``Residual(PreNorm(...))``),
  4 heads of 32 channels;
* :class:`FourierTimeEmbedding`: fixed random Fourier features of ``log(t) / 4`` (the code's
  ``GaussianFourierProjection(dim // 2, scale=fourier_scale)`` on ``torch.log(time) / 4``),
  then Linear -> GELU -> Linear to 4 x the base width;
* :func:`downsample` (4x4 stride-2 conv) and :func:`upsample` (nearest x2 -> 3x3 conv);
* :func:`relation_layer`: the code's ``RelationNet`` (1x1 conv -> BatchNorm(momentum 0.03,
  eps 1e-3) on each input, then one ``BasicAttetnionLayer`` with MLP dropout 0.1), which is
  :class:`ckmbench.latent.attention.CrossAttention` with ``proj_norm="batch"``, initialised
  as the code's ``init_weights`` (Kaiming-normal convolutions, Xavier-normal linears).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention

__all__ = ["WSConv2d", "ResnetBlock", "ChannelLayerNorm", "PreNormResidual", "LinearAttention", "Attention",
           "FourierTimeEmbedding", "downsample", "upsample", "relation_layer"]


class WSConv2d(nn.Conv2d):
    """A convolution whose kernel is standardised per output channel (zero mean, unit variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return F.conv2d(x, (w - mean) * (var + eps).rsqrt(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class _Block(nn.Module):
    """WS-conv 3x3 -> GroupNorm -> (optional scale-shift) -> SiLU (the code's ``Block``)."""

    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WSConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift=None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two WS-conv blocks, the first modulated by the time embedding (scale and shift), + a skip."""

    def __init__(self, dim: int, dim_out: int, time_dim: int, groups: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * dim_out))
        self.block1 = _Block(dim, dim_out, groups)
        self.block2 = _Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.mlp(temb)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale_shift)) + self.res_conv(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel, a learned gain and no bias (the code's ``LayerNorm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class PreNormResidual(nn.Module):
    """``x + fn(ChannelLayerNorm(x))`` (the code's ``Residual(PreNorm(dim, fn))``)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


class LinearAttention(nn.Module):
    """Linear (efficient) attention over all pixels: softmax of q over channels, of k over
    pixels, k^T v first; output 1x1 conv -> channel LayerNorm (the code's ``LinearAttention``)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v / (h * w))
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax self-attention over the pixels, scale 1/sqrt(dim_head) (the code's ``Attention``)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # default scale: 1/sqrt(dim_head), as the code
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class FourierTimeEmbedding(nn.Module):
    """``t -> MLP([sin(2 pi W log(t)/4), cos(2 pi W log(t)/4)])``, W ~ N(0, scale^2) fixed
    (a buffer: the code keeps it as a parameter with ``requires_grad=False``; it is saved either way).

    ``dim``: features (``dim // 2`` frequencies); ``out_dim``: the embedding (the code: 4 x base)."""

    def __init__(self, dim: int, out_dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * float(scale))
        self.mlp = nn.Sequential(nn.Linear(2 * (dim // 2), out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        x = (torch.log(t.float()) / 4.0)[:, None] * self.freqs[None, :] * (2 * math.pi)
        return torch.cat([x.sin(), x.cos()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


def downsample(dim: int, dim_out: int) -> nn.Module:
    """4x4 stride-2 convolution (the code's ``Downsample``)."""
    return nn.Conv2d(dim, dim_out, 4, 2, 1)


def upsample(dim: int, dim_out: int) -> nn.Module:
    """Nearest x2, then a 3x3 convolution (the code's ``Upsample``)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


def relation_layer(dim: int, context_dim: int, heads: int, window: int, dropout: float = 0.1,
                   norm: str = "batch", scale: float | None = 1.0, groups: int = 8) -> CrossAttention:
    """The code's ``RelationNet`` with one ``BasicAttetnionLayer``: queries from the condition,
    keys and values from the U-Net map, ``window`` x ``window`` pooled tokens, unscaled logits,
    a 2x MLP with ``dropout``, input projections normalised by ``norm`` ("batch": the code's
    BatchNorm2d(momentum=0.03, eps=1e-3); "group": GroupNorm)."""
    layer = CrossAttention(dim, context_dim, heads, window, queries="context", ffn_mult=2, dropout=dropout,
                           norm_groups=groups, scale=scale, proj_norm=norm)
    for m in (layer.fuse, layer.mlp[0], layer.mlp[3], layer.out):  # the attention layer's own init_weights
        nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(m.bias)
    for m in (layer.q, layer.k, layer.v):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)
    return layer
