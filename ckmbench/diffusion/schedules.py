"""Noise schedules (beta_t) for discrete-time Gaussian diffusion.

All schedules are returned in float64: the products 1 - alpha_bar_t near t = 0 are
~1e-6 for the papers' linear schedule and lose digits in float32.
"""

from __future__ import annotations

import math

import torch

__all__ = ["make_betas", "cosine_alpha_bar", "SCHEDULES"]

SCHEDULES = ("linear", "cosine")


def cosine_alpha_bar(s: torch.Tensor | float, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's f(s) = cos^2(((s + offset) / (1 + offset)) * pi / 2), s in [0, 1]."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2


def make_betas(kind: str, T: int, beta_start: float = 1e-6, beta_end: float = 1e-2) -> torch.Tensor:
    """beta_1..beta_T as a float64 tensor of length ``T`` (index t = 0..T-1).

    ``"linear"``: ``linspace(beta_start, beta_end, T)`` (the seed papers: 1e-6 -> 1e-2, T = 1000;
    diffusers' ``beta_schedule="linear"``).
    ``"cosine"``: Improved DDPM (Nichol & Dhariwal 2021), ``beta_t = min(1 - f((t+1)/T) / f(t/T),
    0.999)`` with ``s = 0.008``, so that ``alpha_bar_t = f((t+1)/T) / f(0)`` until the clip is hit;
    ``beta_start``/``beta_end`` are ignored (diffusers' ``"squaredcos_cap_v2"``).
    """
    T = int(T)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "cosine":
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = cosine_alpha_bar(steps)
        return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of {SCHEDULES}")
