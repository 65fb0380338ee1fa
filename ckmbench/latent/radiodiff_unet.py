"""RadioDiff's denoising U-Net as its public code builds it (UNIC-Lab/RadioDiff,
``denoising_diffusion_pytorch/mask_cond_unet.py``, ``Unet`` with ``cond_net: swin``); the
blocks are in :mod:`ckmbench.latent.radiodiff_blocks`.

Structure (``dims = [base, base * m_0, ..., base * m_{L-1}]``; level ``l`` works at width
``dims[l]`` and resolution ``latent / 2^l``):

* input: the condition encoder's level-0 map concatenated to z_t -> 7x7 conv -> GroupNorm
  (the code's ``init_conv``); its output ``r`` is kept for the final blocks. Each level's
  condition map is then projected to ``dims[l]`` by a 1x1 conv (the code's ``projects``);
* time: :class:`FourierTimeEmbedding` of ``log(t) / 4`` (the code's ``time_mlp``);
* encoder level ``l``: ResnetBlock -> relation layer (cross-attention to the level's condition
  map) -> ResnetBlock -> linear attention, both block outputs kept as skips; then a 4x4
  stride-2 conv to ``dims[l + 1]`` (a 3x3 conv at the last level);
* middle: ResnetBlock -> full self-attention -> ResnetBlock;
* **two AFT branches** (S4 eqs. 22-23; the code's ``decouple1``/``decouple2``): each
  ``x + irfft2(W * rfft2(conv(GroupNorm(x))))`` with its own W
  (:class:`ckmbench.latent.attention.AdaptiveFourierFilter`), ``aft=False`` gives both
  decoders the middle output itself (S4 Table III's ablation);
* **two full decoders** (the code's ``ups``/``ups2``, one for F1 -> c, one for F2 -> eps),
  each level: concat skip -> ResnetBlock -> relation layer -> concat skip -> ResnetBlock ->
  linear attention -> upsample (nearest x2 + 3x3 conv; a 3x3 conv at the last level); then
  concat ``r`` -> ResnetBlock -> 1x1 conv to the latent channels.

``forward(z, t, context) -> (F1, F2)``: the raw outputs; RadioDiff's output preconditioning
(c_skip / c_out) is applied by the caller (``plugins/latent/radiodiff.py``, ``precondition``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CkmError
from .attention import AdaptiveFourierFilter
from .radiodiff_blocks import (Attention, FourierTimeEmbedding, LinearAttention, PreNormResidual, ResnetBlock,
                               downsample, relation_layer, upsample)

__all__ = ["RadioDiffUNet"]


class _EncoderLevel(nn.Module):
    def __init__(self, dim: int, dim_out: int, last: bool, time_dim: int, relation: nn.Module, groups: int,
                 attn_heads: int, attn_dim_head: int):
        super().__init__()
        self.block1 = ResnetBlock(dim, dim, time_dim, groups)
        self.relation = relation
        self.block2 = ResnetBlock(dim, dim, time_dim, groups)
        self.attn = PreNormResidual(dim, LinearAttention(dim, attn_heads, attn_dim_head))
        self.down = nn.Conv2d(dim, dim_out, 3, padding=1) if last else downsample(dim, dim_out)

    def forward(self, x, temb, cond, skips: list):
        x = self.block1(x, temb)
        skips.append(x)
        x = self.block2(self.relation(x, cond), temb)
        x = self.attn(x)
        skips.append(x)
        return self.down(x)


class _DecoderLevel(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, last: bool, time_dim: int, relation: nn.Module, groups: int,
                 attn_heads: int, attn_dim_head: int):
        super().__init__()
        self.block1 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, groups)
        self.relation = relation
        self.block2 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, groups)
        self.attn = PreNormResidual(dim_out, LinearAttention(dim_out, attn_heads, attn_dim_head))
        self.up = nn.Conv2d(dim_out, dim_in, 3, padding=1) if last else upsample(dim_out, dim_in)

    def forward(self, x, temb, cond, skips: list):
        x = self.block1(torch.cat([x, skips.pop()], dim=1), temb)
        x = self.relation(x, cond)
        x = self.block2(torch.cat([x, skips.pop()], dim=1), temb)
        return self.up(self.attn(x))


class _Decoder(nn.Module):
    """One of the code's two decoders: its levels (deepest first), then the final block and conv."""

    def __init__(self, levels: list[_DecoderLevel], base: int, out_channels: int, time_dim: int, groups: int):
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.final_block = ResnetBlock(2 * base, base, time_dim, groups)
        self.final_conv = nn.Conv2d(base, out_channels, 1)

    def forward(self, x, temb, conds: list, skips: list, r: torch.Tensor) -> torch.Tensor:
        skips, conds = list(skips), list(conds)
        for level in self.levels:
            x = level(x, temb, conds.pop(), skips)
        return self.final_conv(self.final_block(torch.cat([x, r], dim=1), temb))


class RadioDiffUNet(nn.Module):
    """The code's ``Unet`` (see the module doc); ``context_channels[l]``: the condition
    encoder's level-``l`` width (one per level, level 0 at the latent's resolution).

    ``windows[l]``: pooling window of the level's relation layer (code: 8, 4, 2, 1 at a 64^2
    latent); ``relation_heads`` 8; ``relation_scale`` the logit scale (code: 1, unscaled);
    ``relation_dropout`` 0.1 and ``relation_norm`` "batch" as the code; ``attn_heads`` x
    ``attn_dim_head`` the (linear) self-attention (code: 4 x 32); ``fourier_scale`` the time
    features' frequency scale (code: 16); ``aft`` the two filters; ``image_size`` the latent side.
    """

    def __init__(self, z_channels: int, context_channels, base: int = 128, mults=(1, 2, 4, 4), windows=None,
                 relation_heads: int = 8, relation_scale: float | None = 1.0, relation_dropout: float = 0.1,
                 relation_norm: str = "batch", attn_heads: int = 4, attn_dim_head: int = 32,
                 fourier_scale: float = 16.0, norm_groups: int = 8, aft: bool = True, image_size: int = 64):
        super().__init__()
        L = len(mults)
        context_channels = [int(c) for c in context_channels]
        windows = [1] * L if windows is None else [int(w) for w in windows]
        if len(context_channels) != L or len(windows) != L:
            raise CkmError(f"radiodiff U-Net: {L} levels need {L} condition widths and {L} windows; got "
                           f"{context_channels} and {windows}")
        if image_size % 2 ** (L - 1):
            raise CkmError(f"radiodiff U-Net: a {image_size}^2 latent does not halve {L - 1} times: use fewer "
                           f"levels (mults) or another map size")
        self.config = dict(z_channels=int(z_channels), context_channels=tuple(context_channels), base=int(base),
                           mults=tuple(int(m) for m in mults), windows=tuple(windows), aft=bool(aft),
                           image_size=int(image_size))
        self.z_channels = int(z_channels)
        dims = [base] + [base * int(m) for m in mults]
        time_dim, g = 4 * base, int(norm_groups)

        def relation(dim: int, ctx: int, lvl: int) -> nn.Module:
            return relation_layer(dim, ctx, relation_heads, windows[lvl], relation_dropout, relation_norm,
                                  relation_scale, g)

        self.init_conv = nn.Sequential(nn.Conv2d(z_channels + context_channels[0], base, 7, padding=3),
                                       nn.GroupNorm(min(base // 4, g), base))
        self.projects = nn.ModuleList(nn.Conv2d(c, dims[lvl], 1) for lvl, c in enumerate(context_channels))
        self.time = FourierTimeEmbedding(base, time_dim, fourier_scale)
        self.encoder = nn.ModuleList(
            _EncoderLevel(dims[lvl], dims[lvl + 1], lvl == L - 1, time_dim, relation(dims[lvl], dims[lvl], lvl), g,
                          attn_heads, attn_dim_head) for lvl in range(L))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, g)
        self.mid_attn = PreNormResidual(mid, Attention(mid, attn_heads, attn_dim_head))
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, g)
        side = image_size // 2 ** (L - 1)
        self.afts = nn.ModuleList(AdaptiveFourierFilter(mid, side, side, min(mid // 4, g)) for _ in range(2)) \
            if aft else None

        def decoder() -> _Decoder:
            levels = [_DecoderLevel(dims[lvl], dims[lvl + 1], lvl == 0, time_dim,
                                    relation(dims[lvl + 1], dims[lvl], lvl), g, attn_heads, attn_dim_head)
                      for lvl in reversed(range(L))]
            return _Decoder(levels, base, z_channels, time_dim, g)

        self.decoders = nn.ModuleList([decoder(), decoder()])

    def forward(self, z: torch.Tensor, t: torch.Tensor, context: list) -> tuple[torch.Tensor, torch.Tensor]:
        context = list(context)
        if len(context) != len(self.projects):
            raise ValueError(f"expected {len(self.projects)} context maps, got {len(context)}")
        t = torch.as_tensor(t, device=z.device, dtype=torch.float32).reshape(-1).expand(z.shape[0])
        c0 = F.interpolate(context[0].to(z.dtype), size=z.shape[-2:], mode="bilinear")
        x = self.init_conv(torch.cat([z, c0], dim=1))
        r = x
        temb = self.time(t)
        conds = [proj(c.to(z.dtype)) for proj, c in zip(self.projects, context)]
        skips: list[torch.Tensor] = []
        for lvl, level in enumerate(self.encoder):
            x = level(x, temb, conds[lvl], skips)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, temb)), temb)
        branches = [aft(x) for aft in self.afts] if self.afts is not None else [x, x]
        f1, f2 = (dec(b, temb, conds, skips, r) for dec, b in zip(self.decoders, branches))
        return f1, f2

    @property
    def aft(self) -> AdaptiveFourierFilter | None:
        """The first decoder's filter (both have the same size), or None without the AFT."""
        return self.afts[0] if self.afts is not None else None
