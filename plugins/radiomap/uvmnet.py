"""UVM-Net as RadioDiff (S4 §V-D) ran it: RadioUNet's network and training with a Mamba block.

Each U-Net of RadioWNet carries one Bi-SSM block after UVM-Net's UVMB (:class:`.ssm.UVMBlock`;
the docs list where it departs from the official UVMB) on the output of encoder stage
``ssm_stage`` (default 5, RadioWNet's ``layer20``: 1/8 of the map side, 100 channels at the
paper width), so the selective scan runs over that stage's pixel sequence before it feeds
both the deeper stages and its skip connection. Inputs, curriculum,
losses, optimizer and selection are RadioUNet-c's (docs/methods/radiomap-baselines.md).
"""

from __future__ import annotations

from functools import partial

from ckmbench.errors import CkmError

from .radiounet import RadioUNet
from .ssm import UVMBlock
from .wnet import FIRST_U, RadioWNet


class UVMNet(RadioUNet):
    name = "uvm-net"
    official_weights = None  # no published RadioWNet-with-UVMB checkpoint to map

    def build_net(self, inputs: int) -> RadioWNet:
        hp = self.hparams
        stage = int(hp.get("ssm_stage", 5))
        if not 0 <= stage < len(FIRST_U):
            raise CkmError(f"method {self.name}: ssm_stage must be in 0..{len(FIRST_U) - 1}, got {stage}: "
                           f"pass e.g. --set ssm_stage=5")
        block = partial(UVMBlock, d_state=int(hp.get("d_state", 16)), d_conv=int(hp.get("d_conv", 4)),
                        expand=int(hp.get("expand", 2)))
        return RadioWNet(inputs, self.width, mid_block=(stage, block))
