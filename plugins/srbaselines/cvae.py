"""C-VAE: a conditional variational autoencoder conditioned on the upsampled low-res map
(the C-VAE baseline of CGDM, S2; after Sohn et al. 2015, with a learned conditional prior).

Neither S2 nor its sources give an architecture; ckmbench's (docs/methods/sr-baselines.md):

- condition c = the measurements upsampled to the target grid (bicubic baseline's upsampling);
- a condition encoder (3×3 convs, two stride-2 stages) gives features at 1, 1/2 and 1/4 of
  the target size;
- the recognition network q(z | x, c) reads [x, c] with the same layout and gives a Gaussian
  latent map z (``latent`` channels at 1/4 of the size); the prior network p(z | c) reads the
  condition's 1/4 features;
- the decoder reads [condition features, z] at 1/4, upsamples ×2 twice with skips from the
  condition encoder, and adds its output to c (the prediction is c + a learned correction).

Loss: the negative ELBO per pixel with a Gaussian likelihood of standard deviation σ
(``sigma``): ‖x − x̂‖²/(2σ²) + KL(q ‖ p), both divided by the number of pixels, and
multiplied by 2σ² so that it reads as MSE + 2σ²·KL. Scored on z = the prior mean
(the decoder's output at the most probable latent); ``sample`` draws z ~ p(z | c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.precision import fp32_loss
from ckmbench_plugins.diffusion.srdiff import pad_to_multiple

from .common import SRBaseline, crop_offsets, from_channels, to_channels, upsampled


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class Pyramid(nn.Module):
    """Features at 1, 1/2 and 1/4 of the input size."""

    def __init__(self, c_in: int, width: int):
        super().__init__()
        self.l0 = nn.Sequential(conv(c_in, width), conv(width, width))
        self.l1 = nn.Sequential(conv(width, 2 * width, 2), conv(2 * width, 2 * width))
        self.l2 = nn.Sequential(conv(2 * width, 4 * width, 2), conv(4 * width, 4 * width))

    def forward(self, x):
        f0 = self.l0(x)
        f1 = self.l1(f0)
        return f0, f1, self.l2(f1)


class CVAE(nn.Module):
    def __init__(self, channels: int = 1, width: int = 32, latent: int = 4):
        super().__init__()
        self.cond = Pyramid(channels, width)
        self.recog = Pyramid(2 * channels, width)
        self.q_head = nn.Conv2d(4 * width, 2 * latent, 1)
        self.p_head = nn.Sequential(conv(4 * width, 4 * width), nn.Conv2d(4 * width, 2 * latent, 1))
        self.d2 = nn.Sequential(conv(4 * width + latent, 4 * width), conv(4 * width, 4 * width))
        self.d1 = nn.Sequential(conv(4 * width + 2 * width, 2 * width), conv(2 * width, 2 * width))
        self.d0 = nn.Sequential(conv(2 * width + width, width), conv(width, width))
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def prior(self, feats):
        mu, logvar = self.p_head(feats[2]).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def posterior(self, x, c):
        mu, logvar = self.q_head(self.recog(torch.cat([x, c], dim=1))[2]).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, c, feats, z):
        f0, f1, f2 = feats
        h = self.d2(torch.cat([f2, z], dim=1))
        h = self.d1(torch.cat([F.interpolate(h, size=f1.shape[-2:], mode="nearest"), f1], dim=1))
        h = self.d0(torch.cat([F.interpolate(h, size=f0.shape[-2:], mode="nearest"), f0], dim=1))
        return c + self.out(h)

    def forward(self, c):
        """The prediction at the prior mean (what ckmbench scores)."""
        feats = self.cond(c)
        return self.decode(c, feats, self.prior(feats)[0])


@fp32_loss  # in float32: exp and differences of log-variances (ckmbench/precision.py)
def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) ‖ N(mu_p, e^logvar_p)), summed over everything but the batch, mean over it."""
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1).mean()


class CVAEMethod(SRBaseline):
    name = "cvae"
    multiple = 4  # two stride-2 stages

    def build_net(self) -> nn.Module:
        hp = self.hparams
        return CVAE(self.channels, int(hp["width"]), int(hp["latent"]))

    def condition(self, obs) -> tuple[torch.Tensor, tuple[int, int]]:
        c, _ = pad_to_multiple(to_channels(upsampled(self.name, obs), self.channels), self.multiple)
        return c, tuple(obs.out_shape)

    def forward(self, net, obs) -> torch.Tensor:
        c, (H, W) = self.condition(obs)
        return from_channels(net(c))[..., :H, :W]

    def sample(self, obs, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, B, 1, H, W) maps drawn with z ~ p(z | c), clamped to [0, 1]."""
        net = self.net.eval()
        c, (H, W) = self.condition(obs)
        out = []
        with torch.no_grad():
            feats = net.cond(c)
            mu, logvar = net.prior(feats)
            for _ in range(n):
                z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, device=mu.device)
                out.append(from_channels(net.decode(c, feats, z))[..., :H, :W].clamp(0.0, 1.0))
        return torch.stack(out)

    def step(self, ctx):
        two_sigma2 = 2.0 * float(self.hparams.get("sigma", 0.05)) ** 2

        def loss(net, batch, generator):
            obs, target, _ = batch
            c, x = to_channels(upsampled(self.name, obs), self.channels), to_channels(target, self.channels)
            box = crop_offsets(x.shape, self.hparams.get("crop"), self.multiple, generator)
            if box is not None:
                r, q, s = box
                c, x = c[..., r:r + s, q:q + s], x[..., r:r + s, q:q + s]
            c, _ = pad_to_multiple(c, self.multiple)
            x, _ = pad_to_multiple(x, self.multiple)
            feats = net.cond(c)
            mu_q, logvar_q = net.posterior(x, c)
            mu_p, logvar_p = net.prior(feats)
            eps = torch.randn(mu_q.shape, generator=generator, device=mu_q.device)
            recon = net.decode(c, feats, mu_q + (0.5 * logvar_q).exp() * eps)
            kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
            return F.mse_loss(recon.float(), x) + two_sigma2 * kl / x[0].numel()

        return loss
