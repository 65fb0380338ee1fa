"""Condition injection by cross-attention, and the U-Net that uses it (RadioDiff, physics LDM).

Why here: RadioDiff (S4) and the physics-inspired LDM (S3) both attend from U-Net feature
maps to the multi-level features of a condition encoder (Swin-B / Swin-T); CKMDiff only
concatenates (``TwoHeadUNet``). Stable API (keep it backward compatible):

* :class:`CrossAttention` ``(dim, context_dim, heads=8, window=1, queries="x", ...)``:
  ``forward(x, context) -> (B, dim, H, W)``. ``x`` is a U-Net feature map (B, dim, H, W),
  ``context`` a condition feature map (B, context_dim, h, w), resized to (H, W).
  Both are pooled over ``window`` x ``window`` windows into tokens (``window=1``: every
  pixel a token) with a 2-D sine position code; multi-head attention runs between the
  tokens, the answer is upsampled back and added. ``queries="x"``: the U-Net features ask
  and the condition answers (the LDM convention, S3); ``queries="context"``: the other way
  round, as RadioDiff's code (its ``RelationNet``/``BasicAttetnionLayer``, from DiffusionEdge).
  Either way the layer also fuses the two maps by concatenation (1x1 conv) on a residual
  path, as that code does, and its output replaces ``x``.
* :class:`AdaptiveFourierFilter` ``(channels, height, width)``: RadioDiff's AFT (S4 eqs.
  22-23), ``x + irfft2(W * rfft2(conv(GroupNorm(x))))`` with a learned complex ``W``.
* :class:`CrossAttnUNet` (a :class:`TwoHeadUNet`): ``xattn_levels`` switches cross-attention
  on per level (after the first Res+ block of the encoder and the decoder level, where
  RadioDiff's code puts it), ``input_context`` concatenates level 0 of the condition to the
  U-Net's input, ``aft`` adds the filter at the bottleneck, ``out_heads`` 2 (c, eps) or 1.
  ``forward(z, t, context) -> (c_hat, eps_hat)`` (or one tensor), ``context`` one feature
  map per level (level 0 at the latent's resolution: ``build_condition_encoder``'s output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CkmError
from ..diffusion.unet import SR3UNet
from .unet import TIME_SCALE, TwoHeadUNet

__all__ = ["CrossAttention", "AdaptiveFourierFilter", "CrossAttnUNet", "sine_positions"]


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= ``wanted`` that divides ``channels``."""
    g = max(1, min(wanted, channels))
    while channels % g:
        g -= 1
    return g


def sine_positions(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h * w, dim) 2-D sine/cosine position code (DETR's ``PositionEmbeddingSine``: half the
    channels for rows, half for columns, un-normalised pixel indices from 1)."""
    half = dim // 2
    k = torch.arange(half, device=device, dtype=torch.float32)
    freqs = 10000.0 ** (2 * (k // 2) / max(half, 1))

    def code(n: int) -> torch.Tensor:  # sin on even channels, cos on odd ones
        a = torch.arange(1, n + 1, device=device, dtype=torch.float32)[:, None] / freqs
        return torch.where(k % 2 == 0, a.sin(), a.cos())

    rows, cols = code(h), code(w)
    pos = torch.cat([rows[:, None].expand(h, w, half), cols[None].expand(h, w, half)], dim=2).reshape(h * w, 2 * half)
    return F.pad(pos, (0, dim - 2 * half)).to(dtype)


class CrossAttention(nn.Module):
    """Windowed cross-attention between a U-Net map and a condition map (see the module doc).

    ``heads`` must divide ``dim``; ``scale`` is the logit scale (None: 1/sqrt(head dim);
    RadioDiff's code uses 1); ``ffn_mult`` the width of the token MLP (code: 2); ``proj_norm``
    the norm after each input projection: "group" (GroupNorm, batch-independent) or "batch"
    (RadioDiff's code: BatchNorm2d with momentum 0.03, eps 1e-3).
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 8, window: int = 1, queries: str = "x",
                 ffn_mult: int = 2, dropout: float = 0.0, norm_groups: int = 8, scale: float | None = None,
                 proj_norm: str = "group"):
        super().__init__()
        if dim % heads:
            raise CkmError(f"cross-attention: {heads} heads do not divide {dim} channels: pick xattn_heads dividing "
                           f"every U-Net width")
        if queries not in ("x", "context"):
            raise CkmError(f"cross-attention: queries must be 'x' or 'context', got {queries!r}")
        if int(window) < 1:
            raise CkmError(f"cross-attention: window must be >= 1, got {window!r}")
        if proj_norm not in ("group", "batch"):
            raise CkmError(f"cross-attention: proj_norm must be 'group' or 'batch', got {proj_norm!r}")
        self.dim, self.context_dim, self.heads, self.window = dim, context_dim, heads, int(window)
        self.queries, self.scale = queries, scale
        g = _groups(dim, norm_groups)
        norm = (lambda: nn.GroupNorm(g, dim)) if proj_norm == "group" else \
            (lambda: nn.BatchNorm2d(dim, momentum=0.03, eps=1e-3))
        self.in_x = nn.Sequential(nn.Conv2d(dim, dim, 1), norm())
        self.in_context = nn.Sequential(nn.Conv2d(context_dim, dim, 1), norm())
        self.fuse = nn.Conv2d(2 * dim, dim, 1)
        self.fuse_norm = nn.GroupNorm(g, dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, ffn_mult * dim, 1), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Conv2d(ffn_mult * dim, dim, 1), nn.Dropout(dropout))
        self.out = nn.Conv2d(dim, dim, 1)

    def _tokens(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled map (B, C, h, w), tokens (B, h*w, C) with positions)."""
        pooled = F.avg_pool2d(m, self.window) if self.window > 1 else m
        B, C, h, w = pooled.shape
        tokens = pooled.flatten(2).transpose(1, 2) + sine_positions(h, w, C, m.device, m.dtype)
        return pooled, tokens

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H % self.window or W % self.window:
            raise CkmError(f"cross-attention: a {H}x{W} map does not split into {self.window}x{self.window} windows: "
                           f"use windows dividing each level's size")
        if context.shape[-2:] != (H, W):
            context = F.interpolate(context.to(x.dtype), size=(H, W), mode="bilinear", align_corners=True)
        xp, cp = self.in_x(x), self.in_context(context.to(x.dtype))
        shortcut = self.fuse_norm(xp + self.fuse(torch.cat([cp, xp], dim=1)))
        ask, answer = (xp, cp) if self.queries == "x" else (cp, xp)
        base, q_tok = self._tokens(ask)
        _, kv_tok = self._tokens(answer)
        split = lambda s: s.reshape(B, s.shape[1], self.heads, C // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(self.q(q_tok)), split(self.k(kv_tok)), split(self.v(kv_tok)),
                                             scale=self.scale)
        y = base + att.transpose(1, 2).reshape(B, -1, C).transpose(1, 2).reshape(base.shape)
        y = y + self.mlp(y)
        if y.shape[-2:] != (H, W):
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=True)
        return shortcut + self.out(y)


class AdaptiveFourierFilter(nn.Module):
    """RadioDiff's AFT (S4 eqs. 22-23; code: GroupNorm -> 3x3 conv -> rfft2 x W -> irfft2, residual).

    ``W`` is a learned complex weight per channel and frequency of an ``height`` x ``width``
    map (rfft2 keeps ``width // 2 + 1`` columns), initialised N(0, 0.02^2) as the code; the
    transforms use ``norm="ortho"``.

    On a map of another size (a fit scored on larger maps: transfer from 64² `city` to 256² real
    maps) the filter is applied as the spatial kernel it equals on its own size: a product with
    W under ortho transforms is the circular convolution with k = irfft2(W) (unnormalised), so k
    (h x w, offsets centred on 0) is placed in a zero map of the new size and transformed back.
    On the size it was built for this is the paper's filter exactly (an implementer's choice:
    RadioDiff only ever runs at its training size).
    """

    def __init__(self, channels: int, height: int, width: int, norm_groups: int = 8):
        super().__init__()
        self.size = (int(height), int(width))
        self.norm = nn.GroupNorm(_groups(channels, norm_groups), channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(channels, self.size[0], self.size[1] // 2 + 1, 2) * 0.02)

    def response(self, size: tuple[int, int]) -> torch.Tensor:
        """The complex filter for an rfft2 of a ``size`` map (W itself on the built size)."""
        w = torch.view_as_complex(self.weight.float())
        if tuple(size) == self.size:
            return w
        (h, wd), (H, Wd) = self.size, (int(size[0]), int(size[1]))
        if H < h or Wd < wd:
            raise CkmError(f"adaptive Fourier filter: built for {self.size} maps, got {tuple(size)}: "
                           "maps smaller than the training bottleneck are not supported; score on maps at least "
                           "as large as the ones the fit was trained on")
        kernel = torch.fft.irfft2(w, s=self.size, dim=(-2, -1), norm="backward")  # C x h x w, circular
        rows = [(i if i < (h + 1) // 2 else i - h) % H for i in range(h)]
        cols = [(j if j < (wd + 1) // 2 else j - wd) % Wd for j in range(wd)]
        big = kernel.new_zeros(kernel.shape[0], H, Wd)
        big[:, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = kernel
        return torch.fft.rfft2(big, dim=(-2, -1), norm="backward")

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The filter's branch alone: irfft2(W * rfft2(conv(GroupNorm(x))))."""
        size = tuple(x.shape[-2:])
        h = self.conv(self.norm(x)).float()
        spec = torch.fft.rfft2(h, dim=(-2, -1), norm="ortho") * self.response(size)
        return torch.fft.irfft2(spec, s=size, dim=(-2, -1), norm="ortho").to(x.dtype)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.filtered(x)


class _ContextSlot(nn.Module):
    """An attention slot of an SR3 level: the slot's old module (self-attention or identity),
    then cross-attention to the context set by :meth:`CrossAttnUNet.forward` for one call."""

    def __init__(self, before: nn.Module, xattn: CrossAttention):
        super().__init__()
        self.before = before
        self.xattn = xattn
        self.context: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.xattn(self.before(x), self.context)


class CrossAttnUNet(TwoHeadUNet):
    """The two-head U-Net with per-level cross-attention, input concatenation and AFT.

    ``context_channels[l]``: channels of the condition's level-``l`` map (len = levels).
    ``xattn_levels``: the levels with cross-attention (encoder and decoder alike; default all).
    ``xattn_windows[l]``: window of level ``l`` (default 1; RadioDiff: 8, 4, 2, 1 at 64^2, so
    every level attends over 8x8 tokens). ``input_context``: concatenate the level-0 map to
    the input (``conv_in`` becomes a 7x7 conv -> GroupNorm, as RadioDiff's ``init_conv``).
    ``aft``: the adaptive Fourier filter after the middle block. ``cond_channels`` (decoder
    concatenation, CKMDiff's injection) still works and may be combined.
    """

    def __init__(self, z_channels: int, context_channels=(), xattn_levels=None, xattn_heads: int = 8,
                 xattn_windows=None, xattn_queries: str = "x", xattn_scale: float | None = None,
                 xattn_ffn_mult: int = 2, input_context: bool = False, aft: bool = False, out_heads: int = 2,
                 cond_channels: tuple = (), base: int = 64, mults=(1, 2, 4, 8), num_res_blocks: int = 2,
                 dropout: float = 0.0, attn_resolutions: tuple = (), norm_groups: int = 32, image_size: int = 64):
        super().__init__(z_channels, cond_channels=cond_channels, base=base, mults=mults,
                         num_res_blocks=num_res_blocks, dropout=dropout, attn_resolutions=attn_resolutions,
                         norm_groups=norm_groups, image_size=image_size)
        L = self.num_levels
        context_channels = [int(c) for c in context_channels]
        levels = list(range(L)) if xattn_levels is None else sorted({int(lv) for lv in xattn_levels})
        windows = [1] * L if xattn_windows is None else [int(w) for w in xattn_windows]
        if (levels or input_context) and len(context_channels) != L:
            raise CkmError(f"cross-attention U-Net: context_channels needs one width per level ({L}), got "
                           f"{context_channels}")
        if any(not 0 <= lv < L for lv in levels) or len(windows) != L:
            raise CkmError(f"cross-attention U-Net: xattn_levels must be in [0, {L - 1}] and xattn_windows have "
                           f"{L} entries; got {levels} and {windows}")
        if out_heads not in (1, 2):
            raise CkmError(f"cross-attention U-Net: out_heads must be 1 or 2, got {out_heads!r}")
        self.config.update(context_channels=tuple(context_channels), xattn_levels=tuple(levels),
                           xattn_windows=tuple(windows), input_context=bool(input_context), aft=bool(aft),
                           out_heads=out_heads)
        self.xattn_levels, self.input_context, self.out_heads = tuple(levels), bool(input_context), out_heads
        self.slots: list[tuple[int, _ContextSlot]] = []
        for lvl in levels:
            for path in (self.down[lvl], self.up[lvl]):
                width = path.res[0].c_out
                slot = _ContextSlot(path.attn[0], CrossAttention(
                    width, context_channels[lvl], xattn_heads, windows[lvl], xattn_queries, xattn_ffn_mult,
                    dropout, norm_groups, xattn_scale))
                path.attn[0] = slot
                self.slots.append((lvl, slot))
        if input_context:
            self.conv_in = nn.Sequential(nn.Conv2d(z_channels + context_channels[0], base, 7, padding=3),
                                         nn.GroupNorm(_groups(base, norm_groups), base))
        if aft:
            ch = self.mid.res[1].c_out
            side = image_size // 2 ** (L - 1)
            self.mid.attn[1] = AdaptiveFourierFilter(ch, side, side, norm_groups)
        if out_heads == 1:
            self.conv_out = nn.Conv2d(base * int(mults[0]), z_channels, 3, padding=1)

    @property
    def aft(self) -> AdaptiveFourierFilter | None:
        m = self.mid.attn[1]
        return m if isinstance(m, AdaptiveFourierFilter) else None

    def forward(self, z: torch.Tensor, t: torch.Tensor, context: list | None = None,  # type: ignore[override]
                cond_feats: list | None = None):
        """``context``: the condition's per-level maps (for cross-attention and the input);
        ``cond_feats``: the maps concatenated at the decoder levels (``cond_channels``)."""
        context = list(context or [])
        if (self.slots or self.input_context) and len(context) != len(self.config["context_channels"]):
            raise ValueError(f"expected {len(self.config['context_channels'])} context maps, got {len(context)}")
        cond_feats = list(cond_feats or [])
        if len(cond_feats) != len(self.injections):
            raise ValueError(f"expected {len(self.injections)} condition feature maps, got {len(cond_feats)}")
        x = z
        if self.input_context:
            c0 = F.interpolate(context[0].to(z.dtype), size=z.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([z, c0], dim=1)
        for lvl, slot in self.slots:
            slot.context = context[lvl]
        for inj, f in zip(self.injections.values(), cond_feats):
            inj.feature = f
        try:
            out = SR3UNet.forward(self, x, TIME_SCALE * torch.as_tensor(t, device=z.device, dtype=torch.float32))
        finally:
            for _, slot in self.slots:
                slot.context = None
            for inj in self.injections.values():
                inj.feature = None
        if self.out_heads == 1:
            return out
        return out[:, :self.z_channels], out[:, self.z_channels:]
