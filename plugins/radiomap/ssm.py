"""Mamba (selective state-space) block for UVM-Net, with a pure-PyTorch selective scan.

``mamba_ssm`` (Gu & Dao's CUDA kernels) is used when it is importable and the tensors are on
a GPU; everywhere else :func:`selective_scan` computes the same function in plain PyTorch:
the recurrence h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t, y_t = C_t · h_t + D x_t, gated by
SiLU(z), evaluated by a Hillis–Steele prefix scan (log2 L vectorised steps, each a product
of decays ≤ 1, so nothing overflows). The parameters carry mamba_ssm's names and
initialisation, so weights move between the two paths unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # CUDA-only kernels; absent on CPU machines
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_scan
except Exception:  # pragma: no cover - depends on the machine
    _cuda_scan = None


def _discretise(u, delta, A, B, delta_bias, delta_softplus):
    """(exp(Δ A), Δ B u) of shape (batch, d, L, n) and the effective Δ."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (b, d, L, n)
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, L, n)
    return decay, drive


def _readout(h, u, C, D, z):
    y = torch.einsum("bdln,bnl->bdl", h, C)
    if D is not None:
        y = y + D[:, None] * u
    return y * F.silu(z) if z is not None else y


def prefix_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """All states of h_t = decay_t h_{t-1} + drive_t (h_{-1} = 0) along dim 2, vectorised.

    Hillis–Steele: after the step with offset k, element t holds the composition of the
    affine maps t-2k+1 … t; composing (a1, b1) then (a2, b2) gives (a2 a1, a2 b1 + b2).
    """
    a, b = decay, drive
    L, k = a.shape[2], 1
    while k < L:
        b = torch.cat([b[:, :, :k], a[:, :, k:] * b[:, :, :-k] + b[:, :, k:]], dim=2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], dim=2)
        k *= 2
    return b


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's ``selective_scan_fn`` signature: u, delta (b, d, L); A (d, n); B, C (b, n, L)."""
    if _cuda_scan is not None and u.is_cuda:
        return _cuda_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    decay, drive = _discretise(u.float(), delta.float(), A.float(), B.float(), delta_bias, delta_softplus)
    return _readout(prefix_scan(decay, drive), u.float(), C.float(), D, z).to(u.dtype)


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The same function one timestep at a time (mamba_ssm's reference form); for tests."""
    decay, drive = _discretise(u, delta, A, B, delta_bias, delta_softplus)
    h = torch.zeros_like(drive[:, :, 0])
    states = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        states.append(h)
    return _readout(torch.stack(states, dim=2), u, C, D, z)


class Mamba(nn.Module):
    """The Mamba block (in_proj → causal depthwise conv → SiLU → selective scan ⊙ SiLU(z) →
    out_proj) on sequences (batch, L, d_model), with mamba_ssm's parameters and init."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        d_inner = expand * d_model
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        x, z = self.in_proj(seq).transpose(1, 2).chunk(2, dim=1)  # (b, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y = selective_scan(x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
                           self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class UVMBlock(nn.Module):
    """ckmbench's Bi-SSM block after Zheng & Wu's UVMB, sized for any map.

    x + convb(x) → LayerNorm over each pixel's channels → the pixel sequence (row-major)
    through Mamba 1, gated by a softmax over channels of Mamba 2 → 3×3 smoothing conv, added
    to the input. Not UVMB's computation: UVMB tokenises by a raw ``reshape(b, -1, c)``
    (ours transposes: one token per pixel), takes its softmax over the batch axis (ours over
    channels), has a third Mamba whose model dimension is the number of pixels (left out:
    ≈100 M parameters at 64², tied to one map size) and no residual around the block (ours
    adds one); docs/methods/radiomap-baselines.md lists each with the code's lines.
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, hidden: int = 16):
        super().__init__()
        self.convb = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, channels, 3, padding=1))
        self.ln = nn.LayerNorm(channels)
        self.mamba = Mamba(channels, d_state, d_conv, expand)
        self.gate = Mamba(channels, d_state, d_conv, expand)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.ln((x + self.convb(x)).flatten(2).transpose(1, 2))  # (b, h*w, c)
        mixed = torch.softmax(self.gate(seq), dim=-1) * self.mamba(seq)
        return x + self.smooth(mixed.transpose(1, 2).reshape(b, c, h, w))
