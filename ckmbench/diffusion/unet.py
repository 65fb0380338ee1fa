"""The SR3-style U-Net of CGDM (Jin et al., S2 Fig. 3, eqs. 35-43), with block removal for LiCGDM.

Structure (SR3 / the DDPM ``ModelUNet`` layout):

* time: sinusoidal embedding of ``t`` (``base`` channels) -> Linear(base, 4 base) -> Swish ->
  Linear(4 base, base); every Res+ block projects it with its own Linear(base, c_out);
* Res+ block: GroupNorm -> Swish -> 3x3 conv, + time projection, GroupNorm -> Swish ->
  Dropout -> 3x3 conv, + shortcut (identity, or 1x1 conv when the channel count changes);
* encoder: conv_in (in -> base); per level ``num_res_blocks`` Res+ (+ self-attention when the
  level is in ``attn_resolutions``), a 3x3 stride-2 conv between levels;
* middle: Res+ -> self-attention (one head, GroupNorm, 1x1 qkv, 1x1 out) -> Res+;
* decoder: per level ``num_res_blocks + 1`` Res+ each taking one concatenated skip (every
  encoder output: conv_in, each Res+, each downsample), nearest x2 + 3x3 conv between
  levels; GroupNorm -> Swish -> 3x3 conv_out.

The paper profile (:func:`cgdm_paper_unet`: 6 -> 3 channels, base 64, 1:2:4:8:16, two blocks per
level, attention only in the middle) has 221,271,683 parameters (paper: 221.21 M).

Block removal: :meth:`SR3UNet.set_skipped` turns named Res+ blocks into their shortcut at run
time; :meth:`SR3UNet.prune` replaces them by a :class:`Shortcut` module for good (same output as
the skipped model, fewer parameters, the shortcut conv keeps its state-dict key).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SR3UNet", "ResBlock", "Shortcut", "SelfAttention", "timestep_embedding", "cgdm_paper_unet",
           "CGDM_PAPER_CONFIG"]

CGDM_PAPER_CONFIG = dict(in_channels=6, out_channels=3, base=64, mults=(1, 2, 4, 8, 16), num_res_blocks=2,
                         dropout=0.1, attn_resolutions=(), norm_groups=32, image_size=128,
                         dropout_placement="both")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (DDPM / Transformer): ``[sin(t w_k), cos(t w_k)]``,
    ``w_k = max_period^(-k / (half - 1))``; float32, shape ``(B, dim)``."""
    t = torch.as_tensor(t).reshape(-1).float()
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half - 1, 1))
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Swish(nn.Module):
    def forward(self, x):
        return F.silu(x)


# Where a Res+ block applies dropout: "second" (SR3's code, before the second conv only) or
# "both" (S2 eq. 40, inside both g(.) of the block).
DROPOUT_PLACEMENTS = ("second", "both")


class ResBlock(nn.Module):
    """SR3 Res+ block. ``skipped = True`` makes it return ``shortcut(x)`` only."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float = 0.0, norm_groups: int = 32,
                 dropout_placement: str = "second"):
        super().__init__()
        if dropout_placement not in DROPOUT_PLACEMENTS:
            raise ValueError(f"dropout_placement must be one of {DROPOUT_PLACEMENTS}, got {dropout_placement!r}")
        self.c_in, self.c_out = c_in, c_out
        self.norm1 = nn.GroupNorm(norm_groups, c_in)
        # S2 eq. 40: g(.) = conv(dropout(swish(GN(.)))) in both halves of the block; SR3's code
        # drops out only before the second conv (a stateless module: no parameter changes).
        both = dropout_placement == "both" and dropout > 0
        self.dropout1 = nn.Dropout(dropout) if both else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm(norm_groups, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.skipped = False

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.skipped:
            return self.shortcut(x)
        h = self.conv1(self.dropout1(F.silu(self.norm1(x))))
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.shortcut(x)

    def removable_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.shortcut.parameters())


class Shortcut(nn.Module):
    """What a pruned Res+ block becomes: its shortcut (identity or 1x1 conv) only."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.c_in, self.c_out = block.c_in, block.c_out
        self.shortcut = block.shortcut

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.shortcut(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual: GroupNorm -> 1x1 qkv -> softmax -> 1x1 out."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # (B, HW, C)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # scale 1/sqrt(C)
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class _Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.resample: nn.Module = nn.Identity()


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SR3UNet(nn.Module):
    """SR3/CGDM U-Net. ``forward(x, t)`` with ``x`` = [noisy map, upsampled LR] concatenated by the caller.

    Res+ block names (:meth:`res_blocks`) are their module paths: ``down.{level}.res.{i}``,
    ``mid.res.{0,1}``, ``up.{level}.res.{i}`` (``level`` 0 = full resolution for both paths).
    """

    def __init__(self, in_channels: int, out_channels: int, base: int = 64, mults=(1, 2, 4, 8, 16),
                 num_res_blocks: int = 2, dropout: float = 0.1, attn_resolutions: tuple = (),
                 norm_groups: int = 32, image_size: int = 128, dropout_placement: str = "second"):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        attn_resolutions = tuple(int(a) for a in attn_resolutions)
        L = len(mults)
        if L < 1 or num_res_blocks < 1:
            raise ValueError("need at least one level and one Res+ block per level")
        if image_size % (2 ** (L - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{L - 1}")
        if any(not 0 <= a < L for a in attn_resolutions):
            raise ValueError(f"attn_resolutions are level indices in [0, {L - 1}], got {attn_resolutions}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base=base, mults=mults,
                           num_res_blocks=num_res_blocks, dropout=dropout, attn_resolutions=attn_resolutions,
                           norm_groups=norm_groups, image_size=image_size, dropout_placement=dropout_placement)
        self.base, self.num_levels, self.min_size = base, L, 2 ** (L - 1)
        tdim = base
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), Swish(), nn.Linear(4 * base, tdim))

        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        skips = [base]
        ch = base
        self.down = nn.ModuleList()
        for lvl, m in enumerate(mults):
            level = _Level()
            for _ in range(num_res_blocks):
                level.res.append(ResBlock(ch, base * m, tdim, dropout, norm_groups, dropout_placement))
                ch = base * m
                level.attn.append(SelfAttention(ch, norm_groups) if lvl in attn_resolutions else nn.Identity())
                skips.append(ch)
            if lvl < L - 1:
                level.resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                skips.append(ch)
            self.down.append(level)

        self.mid = _Level()
        self.mid.res.append(ResBlock(ch, ch, tdim, dropout, norm_groups, dropout_placement))
        self.mid.attn.append(SelfAttention(ch, norm_groups))
        self.mid.res.append(ResBlock(ch, ch, tdim, dropout, norm_groups, dropout_placement))
        self.mid.attn.append(nn.Identity())

        ups: list[_Level] = [None] * L  # type: ignore[list-item]
        for lvl in reversed(range(L)):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.res.append(ResBlock(ch + skips.pop(), base * mults[lvl], tdim, dropout, norm_groups,
                                          dropout_placement))
                ch = base * mults[lvl]
                level.attn.append(SelfAttention(ch, norm_groups) if lvl in attn_resolutions else nn.Identity())
            if lvl > 0:
                level.resample = Upsample(ch)
            ups[lvl] = level
        assert not skips
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False):
        """``x``: (B, in, H, W) with H, W divisible by 2^(levels-1); ``t``: (B,) or scalar timesteps.

        Returns ``out`` (B, out, H, W), or ``(out, features)`` where ``features`` holds each
        stage's output: the encoder levels (after their Res+ blocks, before downsampling), the
        middle block, the decoder levels (deepest first, after their Res+ blocks, before
        upsampling) -- ``2 * levels + 1`` tensors.
        """
        if x.shape[-1] % self.min_size or x.shape[-2] % self.min_size:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {self.min_size}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(timestep_embedding(t, self.base))
        feats: list[torch.Tensor] = []
        h = self.conv_in(x)
        hs = [h]
        for lvl, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, temb))
                hs.append(h)
            feats.append(h)
            if lvl < self.num_levels - 1:
                h = level.resample(h)
                hs.append(h)
        for res, attn in zip(self.mid.res, self.mid.attn):
            h = attn(res(h, temb))
        feats.append(h)
        for lvl in reversed(range(self.num_levels)):
            level = self.up[lvl]
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), temb))
            feats.append(h)
            if lvl > 0:
                h = level.resample(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, feats) if return_features else out

    # ----------------------------------------------------------- block removal
    def res_blocks(self) -> dict[str, nn.Module]:
        """Every (unpruned) Res+ block by name (encoder, middle, decoder order)."""
        names = [f"down.{l}.res.{i}" for l in range(self.num_levels) for i in range(len(self.down[l].res))]
        names += [f"mid.res.{i}" for i in range(len(self.mid.res))]
        names += [f"up.{l}.res.{i}" for l in reversed(range(self.num_levels)) for i in range(len(self.up[l].res))]
        out = {}
        for n in names:
            m = self.get_submodule(n)
            if isinstance(m, ResBlock):
                out[n] = m
        return out

    def _check(self, names: Iterable[str]) -> tuple[dict[str, nn.Module], set[str]]:
        blocks = self.res_blocks()
        names = set([names] if isinstance(names, str) else names)
        unknown = names - set(blocks)
        if unknown:
            raise KeyError(f"not Res+ blocks of this model (or already pruned): {sorted(unknown)}")
        return blocks, names

    def set_skipped(self, names: Iterable[str]) -> None:
        """Skip exactly these blocks (each returns its shortcut only); every other block runs."""
        blocks, names = self._check(names)
        for n, b in blocks.items():
            b.skipped = n in names

    def skipped(self) -> set[str]:
        return {n for n, b in self.res_blocks().items() if b.skipped}

    def block_removable_params(self, name: str) -> int:
        """Parameters freed by removing block ``name``: all of it but the shortcut conv."""
        blocks, _ = self._check([name])
        return blocks[name].removable_params()

    def prune(self, names: Iterable[str]) -> None:
        """Replace these Res+ blocks by their :class:`Shortcut` for good (parameters drop)."""
        _, names = self._check(names)
        for n in names:
            parent_name, _, idx = n.rpartition(".")
            parent = self.get_submodule(parent_name)
            parent[int(idx)] = Shortcut(parent[int(idx)])

    def pruned(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, Shortcut)]


def cgdm_paper_unet(**overrides) -> SR3UNet:
    """The CGDM paper U-Net (S2 Sec. V-B): 6 -> 3 channels, base 64, mults 1:2:4:8:16, 2 Res+
    per encoder level (3 per decoder level), attention in the middle only, 128 x 128."""
    return SR3UNet(**{**CGDM_PAPER_CONFIG, **overrides})
