"""DRRN (Tai et al., CVPR 2017), B1U25: one recursive block of U = 25 residual units, as the
official Caffe files (``DRRN_B1U25_52C128_train.prototxt``/``_solver.prototxt``) build and train it.

The input is the low-resolution map upsampled to the target grid (the bicubic baseline's
aligned upsampling), so one network serves every factor. Layers: BN–ReLU on the input, then a
3×3 conv (C → 128) giving H_0; the recursive block H_u = H_0 + F_u(H_{u−1}) for u = 1..25, where
F_u = BN–ReLU–conv_a–BN–ReLU–conv_b (pre-activation, 128 channels): the two convolutions are
*shared* by all 25 units (the prototxt names their weights RB1_wa/RB1_wb), each unit has its
*own* two BatchNorms with their scale and shift; BN–ReLU–3×3 conv out (128 → C); plus the global
residual (the upsampled input). 1 + 2·25 + 1 = 52 conv layers; the paper's 297 K is their
297,216 conv weights (C = 1). MSRA (He) initialisation, zero biases; the Caffe EuclideanLoss
(squared error summed over pixels, divided by 2·batch). The solver's clipping and schedule are
profile keys (plugins/srbaselines/__init__.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import SRBaseline, crop_offsets, from_channels, to_channels, upsampled


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """A 3×3 conv with the prototxt's MSRA filler (N(0, 2/fan_in)) and zero bias."""
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def pre_activation(channels: int) -> nn.Sequential:
    """Caffe's BatchNorm + Scale (one affine BatchNorm here), then ReLU."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


class DRRN(nn.Module):
    def __init__(self, channels: int = 1, width: int = 128, units: int = 25):
        super().__init__()
        self.units = int(units)
        self.head = nn.Sequential(pre_activation(channels), conv3x3(channels, width))
        self.conv_a, self.conv_b = conv3x3(width, width), conv3x3(width, width)  # shared by all units
        # each unit's own normalisation before conv_a and before conv_b
        self.norms = nn.ModuleList(nn.ModuleList([pre_activation(width), pre_activation(width)])
                                   for _ in range(self.units))
        self.tail = nn.Sequential(pre_activation(width), conv3x3(width, channels))

    def forward(self, x):
        h0 = self.head(x)
        h = h0
        for norm_a, norm_b in self.norms:
            h = h0 + self.conv_b(norm_b(self.conv_a(norm_a(h))))
        return x + self.tail(h)

    def conv_layers(self) -> int:
        """Convolutions on the forward path (the paper's depth): 1 + 2·U + 1."""
        return 1 + 2 * self.units + 1


def euclidean_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Caffe's EuclideanLoss, the official training loss: Σ (pred − target)² / (2·batch)."""
    return ((pred.float() - target.float()) ** 2).sum() / (2 * pred.shape[0])


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
            return euclidean_loss(net(x), hr)

        return loss
