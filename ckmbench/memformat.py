"""Channels-last memory format on CPU for the networks where it was measured faster.

oneDNN's convolutions run NHWC kernels; with NCHW tensors each convolution converts to and
from them. For some networks (RadioUNet's plain conv stacks) channels-last halves a training
step on one CPU thread, for others (CGDM's U-Net, whose GroupNorm and attention want NCHW) it
costs more. So a method class chooses: ``channels_last_cpu = True`` where the docs' table
(docs/training.md) shows it faster. CUDA keeps its own default. ``$CKMBENCH_CHANNELS_LAST``
= 1 or 0 forces it on or off for every method (to measure it on another CPU).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import CkmError

ENV_VAR = "CKMBENCH_CHANNELS_LAST"


def channels_last_for(method, device: torch.device) -> bool:
    """Whether ``method`` computes in channels-last on ``device``: CPU only, as its class
    chooses (``channels_last_cpu``), unless $CKMBENCH_CHANNELS_LAST forces it."""
    if torch.device(device).type != "cpu":
        return False
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise CkmError(f"{ENV_VAR}={forced!r}: set it to 1 (channels-last), 0 (not) or leave it unset "
                           f"(each method's measured choice)")
        return forced == "1"
    return bool(getattr(method, "channels_last_cpu", False))


CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)


def to_channels_last(module: nn.Module) -> nn.Module:
    """The weights of the module's 2-d convolutions in channels-last (in place; same values).
    Only convolutions: another 4-d parameter (e.g. a complex filter stored as (..., 2) pairs)
    may need its own layout."""
    for sub in module.modules():
        if isinstance(sub, CONVOLUTIONS):
            sub.to(memory_format=torch.channels_last)
    return module


def method_modules(method) -> list[nn.Module]:
    """The networks a method holds as attributes (as ``num_parameters`` counts them)."""
    return [v for v in vars(method).values() if isinstance(v, nn.Module)]


def method_to_channels_last(method) -> None:
    """Every network of ``method`` in channels-last (for prediction after a fit is loaded)."""
    for module in method_modules(method):
        to_channels_last(module)
