"""RadioWNet of Levie et al.'s official RadioUNet code: two cascaded U-Nets.

The layer lists below are the official ``RadioWNet`` written as data, so one builder makes
the paper network (13.27 M parameters with two inputs), its narrower ``small``/``tiny``
versions (``width`` scales every channel count) and UVM-Net's variant (a sequence block
after one encoder stage). Each encoder stage is conv → ReLU → max-pool (pool 1 = none);
each decoder layer maps back to the previous stage's resolution — a stride-2 transposed
conv where that stage pooled, a conv otherwise — and is concatenated with that stage's
output; the last two convs also see the network input again. Every layer ends in a ReLU,
the output layer included, as in the official code.

The second U-Net sees [output of the first, input]; the first one's output is detached,
so the second never trains the first (the curriculum freezes it outright in phase 2).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# (out channels, kernel, pool, decoder kernel) per encoder stage: layer00, layer0, layer1,
# layer10, layer2, layer20, layer3, layer4, layer5 of the official code. The decoder kernel
# is that of the layer that maps the stage's output back to the previous stage's resolution
# (transposed 4/p1 or 6/p2 where the stage pools, the stage's own conv kernel where it does not).
FIRST_U = ((6, 3, 1, 0), (40, 5, 2, 6), (50, 5, 2, 6), (60, 5, 1, 5), (100, 5, 2, 6), (100, 3, 1, 3),
           (150, 5, 2, 4), (300, 5, 2, 4), (500, 5, 2, 4))
FIRST_U_WIDE_IN = 10  # layer00 has 10 channels instead of 6 when the net has more than 3 inputs
SECOND_U = ((20, 3, 1, 0), (30, 5, 2, 6), (40, 5, 2, 6), (50, 5, 1, 5), (60, 5, 2, 6), (70, 3, 1, 3),
            (90, 5, 2, 4), (110, 5, 2, 4), (150, 5, 2, 4))
HEAD = 20  # channels of the last decoder layers (conv_up0, conv_up00) of both U-Nets

# The official attribute names, in the order of our encoder / decoder lists (the second U-Net's
# are these with a "W" in front): the key map of the authors' RadioWNet state_dict.
OFFICIAL_ENCODER = ("layer00", "layer0", "layer1", "layer10", "layer2", "layer20", "layer3", "layer4", "layer5")
OFFICIAL_DECODER = ("conv_up5", "conv_up4", "conv_up3", "conv_up20", "conv_up2", "conv_up10", "conv_up1", "conv_up0")
OFFICIAL_HEADS = ("conv_up00", "conv_up000")


def conv_relu(cin: int, cout: int, k: int, pool: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, padding=(k - 1) // 2), nn.ReLU(inplace=True)]
    if pool > 1:
        layers.append(nn.MaxPool2d(pool))
    return nn.Sequential(*layers)


def convT_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    """Exactly doubles the resolution: kernel 4 with padding 1, or kernel 6 with padding 2."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, k, stride=2, padding=(k - 2) // 2), nn.ReLU(inplace=True))


def scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class LevieUNet(nn.Module):
    """One U-Net of RadioWNet, built from a stage list; ``mid_block`` = (stage index,
    factory(channels) -> module) inserts a block on that stage's output (UVM-Net)."""

    def __init__(self, inputs: int, stages, width: float = 1.0,
                 mid_block: tuple[int, Callable[[int], nn.Module]] | None = None):
        super().__init__()
        chans = [scaled(c, width) for c, *_ in stages]
        head = scaled(HEAD, width)
        self.encoder = nn.ModuleList()
        cin = inputs
        for c, (_, k, pool, _) in zip(chans, stages):
            self.encoder.append(conv_relu(cin, c, k, pool))
            cin = c
        self.block_at = mid_block[0] if mid_block else None
        self.block = mid_block[1](chans[mid_block[0]]) if mid_block else None
        self.decoder = nn.ModuleList()
        for j in range(len(stages) - 1, 0, -1):
            _, k, pool, up_k = stages[j]
            cout = chans[j - 1] if j > 1 else head
            self.decoder.append(convT_relu(cin, cout, up_k) if pool > 1 else conv_relu(cin, cout, up_k))
            cin = cout + chans[j - 1]
        self.head1 = conv_relu(cin + inputs, head, 5)
        self.head2 = conv_relu(head + inputs, 1, 5)
        self.min_size = 1
        for _, _, pool, _ in stages:
            self.min_size *= pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i == self.block_at:
                h = self.block(h)
            skips.append(h)
        h = skips.pop()
        for layer in self.decoder:
            h = torch.cat([layer(h), skips.pop()], dim=1)
        h = self.head1(torch.cat([h, x], dim=1))
        return self.head2(torch.cat([h, x], dim=1))


class RadioWNet(nn.Module):
    """Two cascaded U-Nets; ``forward`` returns (output of the first, output of the second)."""

    def __init__(self, inputs: int, width: float = 1.0, mid_block=None):
        super().__init__()
        first = FIRST_U if inputs <= 3 else ((FIRST_U_WIDE_IN, *FIRST_U[0][1:]),) + FIRST_U[1:]
        self.inputs = inputs
        self.u1 = LevieUNet(inputs, first, width, mid_block)
        self.u2 = LevieUNet(inputs + 1, SECOND_U, width, mid_block)
        self.min_size = max(self.u1.min_size, self.u2.min_size)

    @staticmethod
    def second_input(out1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([out1.detach(), x], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.u1(x)
        return out1, self.u2(self.second_input(out1, x))


def official_renames(prefix: str = "net.") -> tuple[tuple[str, str], ...]:
    """(official prefix, ours) for every layer of the authors' ``RadioWNet`` (RonLevie/RadioUNet,
    lib/modules.py): ``layer00 … layer5`` -> ``u1.encoder.0 … 8``, ``conv_up5 … conv_up0`` ->
    ``u1.decoder.0 … 7``, ``conv_up00``/``conv_up000`` -> ``u1.head1``/``head2``, and the same
    names with a leading ``W`` -> ``u2``. Both codes wrap each conv in a Sequential at index 0."""
    pairs = []
    for official, ours in (("", "u1"), ("W", "u2")):
        pairs += [(f"{official}{n}.", f"{prefix}{ours}.encoder.{i}.") for i, n in enumerate(OFFICIAL_ENCODER)]
        pairs += [(f"{official}{n}.", f"{prefix}{ours}.decoder.{i}.") for i, n in enumerate(OFFICIAL_DECODER)]
        pairs += [(f"{official}{n}.", f"{prefix}{ours}.{h}.") for n, h in zip(OFFICIAL_HEADS, ("head1", "head2"))]
    return tuple(pairs)
