"""The two-head U-Net of decoupled diffusion, built on CGDM's SR3 U-Net.

Why a subclass and not a copy: the encoder, middle block, time embedding, Res+ blocks,
attention and the forward pass are :class:`ckmbench.diffusion.SR3UNet`'s. Two things change
for DDM (S1 §IV-C), both by swapping modules:

* two heads instead of ``conv_out``: after the shared decoder and its GroupNorm -> Swish,
  each head is "two stacked conv layers" (3x3 conv -> Swish -> 3x3 conv), one predicting the
  attenuation ``c``, one the noise ``eps``;
* condition injection at the decoder levels: the condition encoder's feature map of each
  level (level 0 = the latent's resolution) is concatenated to the input of that decoder
  level's first Res+ block, next to the skip connection (CKMDiff: "multi-level features
  concatenated at the decoder levels"). ``cond_channels[l] = 0`` leaves level ``l`` plain;
  ``cond_channels = ()`` gives an unconditional model (``generate``).

``t`` is the DDM time in (0, 1]; the sinusoidal embedding sees ``1000 t`` (the DDPM range).
"""

from __future__ import annotations

import torch
from torch import nn

from ..diffusion.unet import ResBlock, SR3UNet, Swish

TIME_SCALE = 1000.0


class TwoHeads(nn.Module):
    """The c head and the eps head on the shared decoder output, concatenated on channels."""

    def __init__(self, ch: int, out: int):
        super().__init__()
        self.c = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), Swish(), nn.Conv2d(ch, out, 3, padding=1))
        self.eps = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), Swish(), nn.Conv2d(ch, out, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.c(h), self.eps(h)], dim=1)


class CondInjection(nn.Module):
    """A decoder Res+ block whose input gets the level's condition features concatenated
    (set in ``feature`` by :meth:`TwoHeadUNet.forward` for the duration of one call)."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.block = block
        self.feature: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([x, self.feature.to(x.dtype)], dim=1), temb)


class TwoHeadUNet(SR3UNet):
    """``forward(z_t, t, cond_feats) -> (c_hat, eps_hat)``, each (B, z, h, w)."""

    def __init__(self, z_channels: int, cond_channels: tuple = (), base: int = 64, mults=(1, 2, 4, 8),
                 num_res_blocks: int = 2, dropout: float = 0.0, attn_resolutions: tuple = (),
                 norm_groups: int = 32, image_size: int = 64):
        super().__init__(in_channels=z_channels, out_channels=z_channels, base=base, mults=mults,
                         num_res_blocks=num_res_blocks, dropout=dropout, attn_resolutions=attn_resolutions,
                         norm_groups=norm_groups, image_size=image_size)
        cond_channels = tuple(int(c) for c in cond_channels)
        if len(cond_channels) > self.num_levels:
            raise ValueError(f"{len(cond_channels)} condition levels for a U-Net of {self.num_levels} levels")
        self.cond_channels, self.z_channels = cond_channels, z_channels
        self.config.update(z_channels=z_channels, cond_channels=cond_channels)
        self.injections: dict[int, CondInjection] = {}
        for lvl, extra in enumerate(cond_channels):
            if extra:
                old = self.up[lvl].res[0]
                self.up[lvl].res[0] = CondInjection(ResBlock(old.c_in + extra, old.c_out, base, dropout, norm_groups))
                self.injections[lvl] = self.up[lvl].res[0]
        self.conv_out = TwoHeads(base * int(mults[0]), z_channels)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond_feats: list | None = None):  # type: ignore[override]
        cond_feats = list(cond_feats or [])
        if len(cond_feats) != len(self.injections):
            raise ValueError(f"expected {len(self.injections)} condition feature maps, got {len(cond_feats)}")
        for inj, f in zip(self.injections.values(), cond_feats):
            inj.feature = f
        try:
            out = super().forward(z, TIME_SCALE * torch.as_tensor(t, device=z.device, dtype=torch.float32))
        finally:
            for inj in self.injections.values():
                inj.feature = None
        return out[:, :self.z_channels], out[:, self.z_channels:]
