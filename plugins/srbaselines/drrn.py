"""DRRN (Tai et al., CVPR 2017), B1U25: one recursive block of U = 25 residual units.

The input is the low-resolution map upsampled to the target grid (the bicubic baseline's
aligned upsampling), so one network serves every factor. Layers: 3×3 conv in (C → 128);
the recursive block: H_u = H_0 + F(H_{u−1}) for u = 1..25, where F = BN–ReLU–conv–BN–ReLU–conv
(pre-activation, 128 channels) with the *same* weights in every unit and H_0 the block's
first output; BN–ReLU–3×3 conv out (128 → C); plus the global residual: the upsampled input.
1 + 2·25 + 1 = 52 conv layers; 297 k parameters at 128 channels and C = 1 (the paper's
luminance). Trained on the MSE, SGD with momentum and the adjustable gradient clipping of
VDSR (gradients within ±θ/lr).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import SRBaseline, crop_offsets, from_channels, to_channels, upsampled


class RecursiveUnit(nn.Module):
    """F of one residual unit (pre-activation); applied ``units`` times with shared weights."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return self.body(x)


class DRRN(nn.Module):
    def __init__(self, channels: int = 1, width: int = 128, units: int = 25):
        super().__init__()
        self.units = int(units)
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.unit = RecursiveUnit(width)  # one set of weights, used by all 25 units
        self.tail = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x):
        h0 = self.head(x)
        h = h0
        for _ in range(self.units):
            h = h0 + self.unit(h)
        return x + self.tail(h)

    def conv_layers(self) -> int:
        """Convolutions on the forward path (the paper's depth): 1 + 2·U + 1."""
        return 1 + 2 * self.units + 1


class DRRNMethod(SRBaseline):
    name = "drrn"
    channels_last_cpu = True  # measured: faster training steps on one CPU thread (docs/training.md)

    def build_net(self) -> nn.Module:
        hp = self.hparams
        return DRRN(self.channels, int(hp["width"]), int(hp["units"]))

    def variant(self) -> str:
        return super().variant() + f", width {self.hparams['width']}"

    def forward(self, net, obs) -> torch.Tensor:
        return from_channels(net(to_channels(upsampled(self.name, obs), self.channels)))

    def training_pair(self, batch, generator):
        obs, target, _ = batch
        up, hr = upsampled(self.name, obs), target
        box = crop_offsets(hr.shape, self.hparams.get("crop"), 1, generator)
        if box is not None:
            r, q, c = box
            up, hr = up[..., r:r + c, q:q + c], hr[..., r:r + c, q:q + c]
        return to_channels(up, self.channels), to_channels(hr, self.channels)

    def step(self, ctx):
        def loss(net, batch, generator):
            x, hr = self.training_pair(batch, generator)
            return F.mse_loss(net(x).float(), hr)

        return loss
