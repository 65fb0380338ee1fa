"""Discrete-time Gaussian diffusion (DDPM) with an ancestral and a DDIM sampler.

The math is written in torch (schedule constants in float64) and is tested step for step
against diffusers' ``DDPMScheduler`` (``variance_type="fixed_small"``) and ``DDIMScheduler``
(``set_alpha_to_one=True``) in ``tests/test_diffusion.py``; :meth:`GaussianDiffusion.to_diffusers`
builds those equivalent schedulers. See ``docs/diffusion.md`` for the choices.

Conventions: timestep indices ``t`` run over ``0..T-1`` (``t = 0`` is the least noisy,
``alpha_bar_0 = 1 - beta_0``); ``model_fn(xt, t)`` receives ``t`` as a ``LongTensor`` of shape
``(B,)`` and returns the prediction (``"eps"``, ``"x0"`` or ``"v"``); conditioning is the
caller's closure. Every random draw goes through the given ``torch.Generator`` on the
generator's own device (then moved), in a fixed order:

* ``training_loss``: ``t`` (``randint``) first, then ``noise`` (``randn`` of ``x0``'s shape);
* samplers: ``x_T`` first (unless given), then one ``randn`` per step for every step that
  adds noise (ancestral: ``t > 0``; DDIM: ``eta > 0`` and not the last step). DDIM with
  ``steps == T``, ``eta == 1`` therefore consumes the generator exactly like the ancestral
  sampler and returns the same samples.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..warmup import sampler_steps

__all__ = ["GaussianDiffusion", "PREDICTIONS", "SPACINGS", "ddim_timesteps"]

PREDICTIONS = ("eps", "x0", "v")
SPACINGS = ("trailing", "leading", "linspace")
_DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None]


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The ``steps`` timesteps a DDIM run visits, in the order it visits them (descending).

    Same arrays as diffusers' ``DDIMScheduler.set_timesteps`` (``steps_offset=0``):
    ``"trailing"`` = ``round(arange(T, 0, -T/S)) - 1`` (starts at ``T-1``, the step the
    prior ``x_T ~ N(0, I)`` belongs to; default), ``"leading"`` = ``arange(S) * (T // S)``
    reversed (DDIM paper / diffusers default; starts at ``T - T//S``), ``"linspace"`` =
    ``round(linspace(0, T-1, S))`` reversed. With ``S == T`` all three are ``T-1, ..., 0``.
    """
    T, S = int(T), int(steps)
    if not 1 <= S <= T:
        raise ValueError(f"DDIM steps must be in [1, T={T}], got {S}")
    if spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(0, S) * (T // S)).round()[::-1].astype(np.int64)
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}; expected one of {SPACINGS}")
    out = [int(v) for v in ts]
    if len(set(out)) != len(out) or any(a <= b for a, b in zip(out, out[1:])):
        raise ValueError(f"DDIM timesteps not strictly decreasing for T={T}, S={S}, {spacing}: {out}")
    return out


class GaussianDiffusion:
    """DDPM forward process, training target/loss and samplers for a beta schedule.

    Attributes (float64, length ``T``): ``betas``, ``alphas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (``alpha_bar_{t-1}``, 1 at ``t = 0``), ``posterior_variance``
    (``beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)``), ``posterior_mean_coef1/2``.
    """

    def __init__(self, betas: torch.Tensor, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().flatten().clone()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D sequence in (0, 1)")
        self.prediction = prediction
        self.T = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_schedule(cls, kind: str = "linear", T: int = 1000, beta_start: float = 1e-6,
                      beta_end: float = 1e-2, prediction: str = "eps") -> "GaussianDiffusion":
        """Shortcut for ``GaussianDiffusion(make_betas(kind, T, beta_start, beta_end), prediction)``."""
        from .schedules import make_betas

        return cls(make_betas(kind, T, beta_start, beta_end), prediction)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(T={self.T}, prediction={self.prediction!r}, "
                f"beta[0]={self.betas[0].item():.3g}, beta[-1]={self.betas[-1].item():.3g})")

    # ------------------------------------------------------------------ helpers
    def _coef(self, arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor, dtype=None) -> torch.Tensor:
        """``arr[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against ``like``."""
        t = torch.as_tensor(t).reshape(-1).long().cpu()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise IndexError(f"timesteps must be in [0, {self.T - 1}], got {t.tolist()}")
        vals = arr[t].to(dtype=dtype or like.dtype).to(like.device)
        return vals.reshape(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
        dt = torch.float32
        for x in tensors:
            dt = torch.promote_types(dt, x.dtype)
        return dt

    # ------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` (in ``x0``'s dtype)."""
        a = self._coef(self.sqrt_alphas_cumprod, t, x0)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * x0 + s * noise.to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses: ``noise`` (eps), ``x0`` (x0) or
        ``v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0`` (v, Salimans & Ho 2022)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a = self._coef(self.sqrt_alphas_cumprod, t, x0)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * noise.to(x0.dtype) - s * x0

    def split(self, xt: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` from a prediction of this diffusion's type (at least float32)."""
        dt = self._work_dtype(xt, model_out)
        xt, out = xt.to(dt), model_out.to(dt)
        a = self._coef(self.sqrt_alphas_cumprod, t, xt, dt)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, xt, dt)
        if self.prediction == "eps":
            return (xt - s * out) / a, out
        if self.prediction == "x0":
            return out, (xt - a * out) / s
        return a * xt - s * out, s * xt + a * out

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``."""
        dt = self._work_dtype(xt, x0)
        a = self._coef(self.sqrt_alphas_cumprod, t, xt, dt)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, xt, dt)
        return (xt.to(dt) - a * x0.to(dt)) / s

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (broadcastable) of ``q(x_{t-1} | x_t, x_0)``."""
        c1 = self._coef(self.posterior_mean_coef1, t, xt)
        c2 = self._coef(self.posterior_mean_coef2, t, xt)
        return c1 * x0.to(xt.dtype) + c2 * xt, self._coef(self.posterior_variance, t, xt)

    # --------------------------------------------------------------- training
    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator | None = None,
                      t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error between ``model_fn(x_t, t)`` and :meth:`target` (a scalar, float32).

        Draws ``t ~ U{0..T-1}`` (one per sample) and then ``noise ~ N(0, I)`` from ``generator``
        when they are not given.
        """
        B = x0.shape[0]
        if t is None:
            gdev = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.T, (B,), generator=generator, device=gdev)
        t = torch.as_tensor(t, device=x0.device).long().reshape(B)
        if noise is None:
            noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        xt = self.q_sample(x0, t, noise)
        out = model_fn(xt, t)
        return F.mse_loss(out.float(), self.target(x0, noise, t).float())

    # ---------------------------------------------------------------- sampling
    def _prepare(self, shape, generator, device, dtype, x_T):
        if x_T is not None:
            device = x_T.device if device is None else torch.device(device)
            return x_T.to(device=device, dtype=dtype), device
        device = torch.device("cpu") if device is None else torch.device(device)
        return _randn(tuple(shape), generator, device, dtype), device

    def _predict(self, model_fn, x, t_int, clip_x0):
        tvec = torch.full((x.shape[0],), t_int, dtype=torch.long, device=x.device)
        x0_hat, eps_hat = self.split(x, tvec, model_fn(x, tvec))
        if clip_x0 is not None:
            lo, hi = clip_x0  # numbers, or tensors broadcastable to x (a per-pixel valid range)
            x0_hat = torch.maximum(torch.minimum(x0_hat, torch.as_tensor(hi, dtype=x0_hat.dtype, device=x.device)),
                                   torch.as_tensor(lo, dtype=x0_hat.dtype, device=x.device))
            eps_hat = self.eps_from_x0(x, tvec, x0_hat)
        return x0_hat, eps_hat

    @staticmethod
    def _iter(seq, progress, desc):
        if not progress:
            return seq
        from tqdm.auto import tqdm

        return tqdm(seq, desc=desc, leave=False)

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape, generator: torch.Generator | None = None,
               clip_x0: tuple | None = None, progress: bool = False, device=None,
               dtype: torch.dtype = torch.float32, x_T: torch.Tensor | None = None,
               callback: Callback | None = None) -> torch.Tensor:
        """Ancestral DDPM sampling over all ``T`` steps; returns ``x_0`` (``shape``, ``dtype``).

        ``x_{t-1} = coef1_t x0_hat + coef2_t x_t + sigma_t z`` with the posterior variance
        ``sigma_t^2 = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` and ``z`` drawn only for
        ``t > 0``. ``clip_x0 = (lo, hi)`` clamps ``x0_hat`` before it is used (numbers,
        or tensors broadcastable to the sample for a per-pixel range). ``x_T`` replaces
        the initial draw; ``callback(t, x_{t-1})`` is called after each step.
        """
        x, device = self._prepare(shape, generator, device, dtype, x_T)
        c1, c2 = self.posterior_mean_coef1.tolist(), self.posterior_mean_coef2.tolist()
        sd = self.posterior_variance.sqrt().tolist()
        timesteps = range(self.T - 1, self.T - 1 - sampler_steps(self.T), -1)  # one step in a warm-up
        for t in self._iter(timesteps, progress, "DDPM"):
            x0_hat, _ = self._predict(model_fn, x, t, clip_x0)
            x = (c1[t] * x0_hat + c2[t] * x).to(dtype)
            if t > 0:
                x = x + sd[t] * _randn(x.shape, generator, device, dtype)
            if callback is not None:
                callback(t, x)
        return x

    @torch.no_grad()
    def ddim_sample(self, model_fn: ModelFn, shape, steps: int, eta: float = 0.0,
                    generator: torch.Generator | None = None, clip_x0: tuple | None = None,
                    progress: bool = False, device=None, dtype: torch.dtype = torch.float32,
                    spacing: str = "trailing", x_T: torch.Tensor | None = None,
                    callback: Callback | None = None) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) over ``steps`` timesteps (:func:`ddim_timesteps`).

        From ``t`` to the next visited ``s`` (``alpha_bar = 1`` after the last step):
        ``x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z`` with
        ``sigma = eta sqrt((1 - ab_s)/(1 - ab_t) (1 - ab_t/ab_s))``; ``z`` is drawn only when
        ``sigma > 0`` (``eta > 0``, not the last step). With ``clip_x0`` the clamped ``x0_hat``
        also gives ``eps_hat`` (diffusers' ``use_clipped_model_output=True``), so ``steps = T``,
        ``eta = 1`` is the ancestral sampler, clipped or not.
        """
        ts = ddim_timesteps(self.T, sampler_steps(steps), spacing)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        x, device = self._prepare(shape, generator, device, dtype, x_T)
        ab = self.alphas_cumprod.tolist()
        for i in self._iter(range(len(ts)), progress, "DDIM"):
            t = ts[i]
            s = ts[i + 1] if i + 1 < len(ts) else -1
            ab_t, ab_s = ab[t], (ab[s] if s >= 0 else 1.0)
            x0_hat, eps_hat = self._predict(model_fn, x, t, clip_x0)
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            x = (math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps_hat).to(dtype)
            if sigma > 0:
                x = x + sigma * _randn(x.shape, generator, device, dtype)
            if callback is not None:
                callback(t, x)
        return x

    # ------------------------------------------------------------- diffusers
    def to_diffusers(self, kind: str = "ddpm", **kwargs):
        """The equivalent diffusers scheduler (``"ddpm"`` or ``"ddim"``) with these betas.

        DDPM: ``variance_type="fixed_small"`` (posterior variance), ``clip_sample=False``.
        DDIM: ``set_alpha_to_one=True``, ``timestep_spacing="trailing"``, ``clip_sample=False``.
        ``kwargs`` override the config.
        """
        cfg = dict(num_train_timesteps=self.T, trained_betas=self.betas.float().numpy().tolist(),
                   prediction_type=_DIFFUSERS_PREDICTION[self.prediction], clip_sample=False)
        if kind == "ddpm":
            from diffusers import DDPMScheduler

            cfg.update(variance_type="fixed_small")
            cfg.update(kwargs)
            return DDPMScheduler(**cfg)
        if kind == "ddim":
            from diffusers import DDIMScheduler

            cfg.update(set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=0)
            cfg.update(kwargs)
            return DDIMScheduler(**cfg)
        raise ValueError(f"kind must be 'ddpm' or 'ddim', got {kind!r}")
