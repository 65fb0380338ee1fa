"""Losses that must be computed in float32 even when the forward passes run under bf16 autocast.

Why: bf16 keeps 8 bits of mantissa (about 2-3 decimal digits). A loss built on differences of
nearly equal numbers (SSIM's E[x^2] - mu^2, a variance, the log of a power spectrum, a
threshold on a normalised Laplacian) loses all its digits there: under autocast the Gaussian
blur of MS-SSIM ran as a bf16 matrix product, the SSIM denominator went negative and RME-GAN's
generator loss became -inf at step 3. :func:`fp32_loss` turns autocast off for the loss and
casts its floating-point tensor arguments to float32; gradients flow back to the bf16 tensors
unchanged (the cast is differentiable). The networks themselves keep running in bf16.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar

import torch

__all__ = ["fp32_loss", "full_precision", "to_float32"]

F = TypeVar("F", bound=Callable[..., Any])


def to_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor in it (also inside lists, tuples, dicts) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    return value


def _device_types(values) -> set[str]:
    found = {"cpu"}
    for v in values:
        if isinstance(v, torch.Tensor):
            found.add(v.device.type)
        elif isinstance(v, (list, tuple)):
            found |= _device_types(v)
        elif isinstance(v, dict):
            found |= _device_types(v.values())
    return found


@contextlib.contextmanager
def full_precision(*tensors: Any):
    """Autocast off on the CPU and on the devices of ``tensors`` (for a block, not a function)."""
    with contextlib.ExitStack() as stack:
        for device_type in sorted(_device_types(tensors)):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def fp32_loss(fn: F) -> F:
    """Decorate a loss so that it runs with autocast off and float32 inputs (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with full_precision(args, kwargs):
            return fn(*to_float32(args), **to_float32(kwargs))

    return wrapper  # type: ignore[return-value]
