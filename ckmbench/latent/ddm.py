"""Decoupled diffusion (DDM): the forward process, training loss and sampler of CKMDiff/RadioDiff.

Why its own module: CKMDiff (S1 eqs. 19-22, Alg. 2) and RadioDiff (S4 eqs. 13-20) share it,
and it differs from the Gaussian DDPM of :mod:`ckmbench.diffusion` in every formula.

* forward (S1 eq. 19): ``z_t = (1 - t) z0 + sqrt(t) eps`` for ``t`` in (0, 1]; the data part
  decays along the constant "attenuation" ``c = -z0`` (``z_t = z0 + c t + sqrt(t) eps``);
* network: two heads, ``(c_hat, eps_hat) = net(z_t, t)``;
* loss (S1 eq. 22 / S4 eq. 20): ``||c - c_hat||^2 + ||eps - eps_hat||^2`` (unweighted, as a mean
  over elements), ``t ~ U(t_min, 1)``; ``loss="radiodiff"`` gives the loss of RadioDiff's code,
  ``[2 e^(1-t) ||c - c_hat||^2 + e^sqrt(t) ||eps - eps_hat||^2 + the same in L1] / 2``;
* sampler (S1 Alg. 2): from ``z_1 ~ N(0, I)`` over ``S`` equal steps ``t -> t - dt``:
  ``z_{t-dt} = z_t - c_hat dt - (dt / sqrt(t)) eps_hat + sqrt(dt (t - dt) / t) n``.
  The variance is the posterior ``q(z_{t-dt} | z_t, z0)`` of the Brownian bridge; S1 eq. 20
  prints ``dt (1 - dt) / t``, which is not (reference/methods.md, "Known errors"). The last
  step (``t = dt``) has variance 0 and returns ``z_t - c_hat t - sqrt(t) eps_hat``: with the
  true ``c`` and ``eps`` that is ``z0`` exactly;
* :meth:`DecoupledDiffusion.sample_corrected`: RadioDiff's code sampler (c re-derived from
  the clipped x0 estimate at every step, the last step split at t_min).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import CkmError
from ..warmup import sampler_steps

LOSSES = ("l2", "radiodiff")

# model_fn(z_t, t) -> (c_hat, eps_hat); t is a (B,) float tensor in (0, 1]
ModelFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DecoupledDiffusion:
    """The DDM process with ``t ~ U(t_min, 1)`` for training and an S-step sampler."""

    def __init__(self, t_min: float = 1e-4, loss: str = "l2"):
        if not 0 < float(t_min) < 1:
            raise CkmError(f"decoupled diffusion: t_min must be in (0, 1), got {t_min!r}: pass e.g. t_min=1e-4")
        if loss not in LOSSES:
            raise CkmError(f"decoupled diffusion: loss {loss!r} is not one of {', '.join(LOSSES)}: pass loss=l2")
        self.t_min = float(t_min)
        self.loss_kind = loss

    # ------------------------------------------------------------ forward process
    @staticmethod
    def _b(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``z_t = (1 - t) z0 + sqrt(t) eps`` (S1 eq. 19)."""
        tb = self._b(t, z0)
        return (1.0 - tb) * z0 + tb.sqrt() * eps

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """``t ~ U(t_min, 1)``, shape (n,)."""
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (1.0 - self.t_min) * u

    # ------------------------------------------------------------ training
    def training_loss(self, model_fn: ModelFn, z0: torch.Tensor, generator: torch.Generator | None = None,
                      t: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of one batch: t and eps drawn from ``generator`` (t may be given)."""
        if t is None:
            t = self.sample_t(z0.shape[0], generator, z0.device)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        zt = self.q_sample(z0, t, eps)
        c_hat, eps_hat = model_fn(zt, t)
        return self.loss_terms(-z0, eps, c_hat.float(), eps_hat.float(), t)

    def loss_terms(self, c, eps, c_hat, eps_hat, t) -> torch.Tensor:
        if self.loss_kind == "l2":
            return ((c - c_hat) ** 2).mean() + ((eps - eps_hat) ** 2).mean()
        # RadioDiff's code: per-sample weights 2 e^(1 - t) on c, e^sqrt(t) on eps; L2 and L1, halved
        dims = tuple(range(1, c.dim()))
        wc, we = 2.0 * torch.exp(1.0 - t), torch.exp(t.sqrt())
        l2 = wc * ((c - c_hat) ** 2).mean(dims) + we * ((eps - eps_hat) ** 2).mean(dims)
        l1 = wc * (c - c_hat).abs().mean(dims) + we * (eps - eps_hat).abs().mean(dims)
        return ((l2 + l1) / 2.0).mean()

    # ------------------------------------------------------------ sampling
    def sample(self, model_fn: ModelFn, shape, steps: int, generator: torch.Generator | None = None,
               device=None, z1: torch.Tensor | None = None) -> torch.Tensor:
        """S1 Alg. 2 over ``steps`` equal steps from t = 1 to 0; returns the final z0."""
        if not isinstance(steps, int) or steps < 1:
            raise CkmError(f"decoupled diffusion: sample_steps must be an integer >= 1, got {steps!r}")
        steps = sampler_steps(steps)  # one step in the runner's warm-up
        z = z1 if z1 is not None else torch.randn(tuple(shape), generator=generator, device=device)
        dt = 1.0 / steps
        for k in range(steps):
            t = 1.0 - k * dt
            s = max(t - dt, 0.0)
            step = t - s
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32)
            c_hat, eps_hat = model_fn(z, tt)
            c_hat, eps_hat = c_hat.to(z.dtype), eps_hat.to(z.dtype)
            mean = z - c_hat * step - (step / math.sqrt(t)) * eps_hat
            var = step * s / t
            if var > 0:
                mean = mean + math.sqrt(var) * torch.randn(z.shape, generator=generator, device=z.device,
                                                           dtype=z.dtype)
            z = mean
        return z

    def sample_corrected(self, model_fn: ModelFn, shape, steps: int, generator: torch.Generator | None = None,
                         device=None, z1: torch.Tensor | None = None, split_last: bool = True,
                         clip: float | None = None) -> torch.Tensor:
        """RadioDiff's code sampler: Alg. 2's steps with c replaced, at each step, by -x0_hat,
        x0_hat = z_t - c_hat t - sqrt(t) eps_hat (clipped to [-clip, clip] when ``clip`` is set).
        ``split_last`` splits the last of the ``steps`` equal steps into (1/S - t_min, t_min):
        S + 1 network calls, the final one at t = t_min (the code's ``denoise`` option)."""
        if not isinstance(steps, int) or steps < 1:
            raise CkmError(f"decoupled diffusion: sample_steps must be an integer >= 1, got {steps!r}")
        steps = sampler_steps(steps)  # one step in the runner's warm-up
        sizes = [1.0 / steps] * steps
        if split_last:
            sizes[-1:] = [1.0 / steps - self.t_min, self.t_min]
        z = z1 if z1 is not None else torch.randn(tuple(shape), generator=generator, device=device)
        t = 1.0
        for k, size in enumerate(sizes):
            step = t if k == len(sizes) - 1 else size  # the last step lands on 0 exactly
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32)
            c_hat, eps_hat = model_fn(z, tt)
            eps_hat = eps_hat.to(z.dtype)
            x0 = z - c_hat.to(z.dtype) * t - math.sqrt(t) * eps_hat
            if clip is not None:
                x0 = x0.clamp(-float(clip), float(clip))
            mean = z + x0 * step - (step / math.sqrt(t)) * eps_hat
            var = step * (t - step) / t
            if var > 0:
                mean = mean + math.sqrt(var) * torch.randn(z.shape, generator=generator, device=z.device,
                                                           dtype=z.dtype)
            z, t = mean, t - step
        return z
