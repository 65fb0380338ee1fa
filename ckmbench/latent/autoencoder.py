"""The KL autoencoder (stage 1) of every latent method, fitted once per (dataset, profile).

Why here: CKMDiff, RadioDiff and the physics-inspired LDM all diffuse in the latent of one
KL autoencoder of the gain maps (RadioDiff's setting: channels 128, multipliers [1, 2, 4],
z = 3, KL weight 1e-6, LPIPS + patch discriminator from step 50,001, latent scale 0.3; the
physics-inspired LDM's 1x256^2 -> 3x64^2 is the same shape). The network is
``diffusers.AutoencoderKL``; training goes through the shared :class:`ckmbench.training.Trainer`
(the adversarial phase through its :class:`AdversarialStep`), and the weights are kept in
the fit cache under ``kl-autoencoder-<key>``, the key being (autoencoder version, the train
and val maps' content hashes, profile, autoencoder hyper-parameters, seed) -- no task and no
method, so every latent method and task of a dataset reuses one fit.

A latent method's profile holds the autoencoder's hyper-parameters under ``vae_``-prefixed
keys (:func:`vae_hparams` strips the prefix); the training settings are the trainer's
(``vae_steps``, ``vae_lr``, ``vae_optimizer`` ...). The loss is that of the LDM code RadioDiff
uses (``LPIPSWithDiscriminator``): per-image sums of |x - x_hat| (+ LPIPS) plus kl_weight x KL,
and from ``disc_start`` the hinge patch-discriminator game with LDM's adaptive weight.
LPIPS needs VGG weights that cannot be downloaded here: without a local file the loss is
L1 + adversarial, and the fit record says so (``perceptual``).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CkmError
from ..precision import fp32_loss
from ..fitcache import FitEntry, describe, fit_key
from ..training import AdversarialStep, Trainer, TrainConfig

log = logging.getLogger("ckmbench.latent")

AE_NAME = "kl-autoencoder"
# Bump when the autoencoder's code changes what a fit means (the key then changes).
AE_VERSION = "1"
ARCH_KEYS = ("channels", "mults", "layers_per_block", "z_channels", "norm_groups")
LOSS_KEYS = ("kl_weight", "disc_start", "disc_weight", "disc_layers", "disc_channels", "lpips_weights")

# RadioDiff's first stage (S4 code): ch 128, [1, 2, 4], 2 blocks, z = 3, KL 1e-6, LPIPS + patch
# discriminator from step 50,001, AdamW 5e-6 -> 5e-7 over 150k steps, batch 2.
AE_PAPER = dict(channels=128, mults=[1, 2, 4], layers_per_block=2, z_channels=3, norm_groups=32,
                kl_weight=1e-6, disc_start=50_001, disc_weight=0.5, disc_layers=3, disc_channels=64,
                lpips_weights=None, crop=None, steps=150_000, batch_size=2, optimizer="adamw", lr=5e-6, lr_end=5e-7,
                lr_schedule="linear", grad_clip=None, checkpoint_every=5000, log_every=100,
                d_lr=5e-6, d_optimizer="adamw", d_adam_betas=[0.5, 0.9], adam_betas=[0.5, 0.9])
# small (~10 min on one loaded CPU core at 64^2, 0.3 s/step): width 16, one block per level, 32^2
# random crops, 2,000 steps of batch 16 at a higher learning rate; no discriminator phase (it would
# start after the last step).
AE_SMALL = dict(AE_PAPER, channels=16, layers_per_block=1, norm_groups=8, crop=32, steps=2000, batch_size=16,
                lr=4e-4, lr_end=4e-5, checkpoint_every=250, log_every=50)
AE_TINY = dict(AE_SMALL, channels=8, mults=[1, 2], norm_groups=4, crop=None, steps=6, batch_size=4, lr=1e-3,
               lr_end=1e-4, checkpoint_every=3, log_every=3)


def vae_hparams(hp: dict) -> dict:
    """The autoencoder's hyper-parameters of a latent method's profile (``vae_`` keys, prefix stripped)."""
    return {k[4:]: v for k, v in sorted(hp.items()) if k.startswith("vae_")}


def prefixed(ae: dict) -> dict:
    """An autoencoder profile as ``vae_`` keys, to merge into a latent method's profile."""
    return {f"vae_{k}": v for k, v in ae.items()}


class KLAutoencoder(nn.Module):
    """``diffusers.AutoencoderKL`` on one-channel maps: ``encode(u)`` gives the posterior mean of
    2u - 1, ``decode(z)`` returns u in [0, 1]; the latent is ``downsample`` times smaller."""

    def __init__(self, hp: dict):
        super().__init__()
        from diffusers import AutoencoderKL

        missing = [k for k in ARCH_KEYS if k not in hp]
        if missing:
            raise CkmError(f"autoencoder: missing hyper-parameters {', '.join('vae_' + k for k in missing)}: "
                           f"add them to the profile")
        mults = [int(m) for m in hp["mults"]]
        ch, groups = int(hp["channels"]), int(hp["norm_groups"])
        if any((ch * m) % groups for m in mults):
            raise CkmError(f"autoencoder: vae_channels x each multiplier must divide by vae_norm_groups={groups}")
        self.config = {k: hp[k] for k in ARCH_KEYS}
        self.vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(mults),
                                 up_block_types=("UpDecoderBlock2D",) * len(mults),
                                 block_out_channels=tuple(ch * m for m in mults),
                                 layers_per_block=int(hp["layers_per_block"]), latent_channels=int(hp["z_channels"]),
                                 norm_num_groups=groups)
        self.downsample = 2 ** (len(mults) - 1)
        self.z_channels = int(hp["z_channels"])

    def posterior(self, u: torch.Tensor):
        return self.vae.encode(2.0 * u - 1.0).latent_dist

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """Posterior mean (deterministic: the same map always has the same latent)."""
        return self.posterior(u).mean

    def decode_x(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.decode_x(z).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def forward(self, u: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction of 2u - 1 from a posterior sample, posterior) for training."""
        post = self.posterior(u)
        return self.decode_x(post.sample(generator=generator)), post

    def check_size(self, shape) -> None:
        if shape[-1] % self.downsample or shape[-2] % self.downsample:
            raise CkmError(f"autoencoder: map size {tuple(shape[-2:])} must divide by {self.downsample} "
                           f"(2^(len(vae_mults) - 1)): use another vae_mults or dataset")


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN (the ``NLayerDiscriminator`` of the taming/LDM code)."""

    def __init__(self, layers: int = 3, channels: int = 64):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for n in range(1, layers + 1):
            nxt = channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            mods += [nn.Conv2d(ch, nxt, 4, stride, 1, bias=False), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


# ------------------------------------------------------------------ losses
def reconstruction_nll(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image sum of |x - x_hat|, mean over the batch (LDM's nll with logvar 0, no LPIPS)."""
    return (x - rec.float()).abs().sum() / x.shape[0]


def kl_term(post) -> torch.Tensor:
    """KL(posterior || N(0, I)), per-image sum, mean over the batch (diffusers' ``kl()``), in float32."""
    return standard_normal_kl(post.mean, post.logvar)


@fp32_loss  # var - 1 - log var cancels near var = 1 in bf16 (ckmbench/precision.py)
def standard_normal_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=[1, 2, 3]).sum() / mean.shape[0]


def check_perceptual(hp: dict) -> str:
    """What stands for LPIPS in the loss (recorded in the fit)."""
    if hp.get("lpips_weights"):
        raise CkmError("autoencoder: vae_lpips_weights is not supported yet (LPIPS is not implemented): "
                       "leave it unset to train with L1 + adversarial")
    return "none: L1 + adversarial (no local LPIPS/VGG weights)"


def random_crop(target: torch.Tensor, crop, generator: torch.Generator | None) -> torch.Tensor:
    """One ``crop`` x ``crop`` window of the batch at a position drawn from the step's seed
    (a small-profile device: the autoencoder is fully convolutional); no crop when unset."""
    if not crop or generator is None or int(crop) >= min(target.shape[-2:]):
        return target
    c = int(crop)
    host = torch.Generator().manual_seed(generator.initial_seed())  # no device sync for the offsets
    r = int(torch.randint(0, target.shape[-2] - c + 1, (1,), generator=host))
    q = int(torch.randint(0, target.shape[-1] - c + 1, (1,), generator=host))
    return target[..., r:r + c, q:q + c]


def ae_loss_fn(hp: dict):
    """Plain step (no discriminator phase in this fit): L1 sum + kl_weight x KL."""
    kl_weight = float(hp["kl_weight"])

    def loss(net, batch, generator):
        target = random_crop(batch[1], hp.get("crop"), generator)
        rec, post = net(target, generator)
        return reconstruction_nll(2.0 * target - 1.0, rec) + kl_weight * kl_term(post)

    return loss


def ae_adversarial_step(model: KLAutoencoder, hp: dict, step_of) -> AdversarialStep:
    """LDM's ``LPIPSWithDiscriminator`` on the shared trainer: hinge D loss and -D(x_hat) for G,
    both times ``disc_factor`` (0 before ``disc_start``, as taming's ``adopt_weight``); G's
    adversarial term scaled by the adaptive weight ||grad nll|| / ||grad g|| at the decoder's
    last layer, times ``disc_weight``. ``step_of()`` is the trainer's current step (0-based)."""
    kl_weight, start, disc_weight = float(hp["kl_weight"]), int(hp["disc_start"]), float(hp["disc_weight"])

    def generate(net, batch, generator):
        target = random_crop(batch[1], hp.get("crop"), generator)
        rec, post = net(target, generator)
        return {"rec": rec, "real": 2.0 * target - 1.0, "post": post}

    def d_loss(disc, out, batch, generator):
        factor = 1.0 if step_of() >= start else 0.0
        real, fake = disc(out["real"]), disc(out["rec"].float())
        return factor * 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())

    def g_loss(disc, out, batch, generator):
        step = step_of()
        nll = reconstruction_nll(out["real"], out["rec"])
        total = nll + kl_weight * kl_term(out["post"])
        if step < start:
            return total
        g = -disc(out["rec"].float()).mean()
        last = model.vae.decoder.conv_out.weight
        gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
        gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
        weight = (gn / (gg + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight
        return total + weight * g

    return AdversarialStep(generate, d_loss, g_loss)


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def reconstruction_psnr(model: KLAutoencoder, data, batch_size: int = 16, device=None) -> float | None:
    """Mean per-map PSNR 10 log10(1 / mse) of decode(encode(u)) on ``data`` (capped at 100 dB):
    the bound every latent method inherits."""
    if data is None or len(data) == 0:
        return None
    device = device or next(model.parameters()).device
    model.eval()
    values = []
    for start in range(0, len(data), batch_size):
        _, target, _ = data.batch_at(range(start, min(len(data), start + batch_size)))
        target = target.to(device)
        rec = model.decode(model.encode(target))
        mse = ((rec - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        values.append((10.0 * torch.log10(1.0 / mse)).clamp(max=100.0))
    return float(torch.cat(values).mean())


# ------------------------------------------------------------------ the cached fit
def data_hash(train, val) -> str:
    """Content hashes of the train and val maps the autoencoder sees (no task involved)."""
    return f"{train.dataset.content_hash}|{val.dataset.content_hash if val is not None else ''}"


def autoencoder_entry(train, val, ctx, hp: dict) -> FitEntry:
    key = fit_key(AE_NAME, AE_VERSION, "clean-maps", data_hash(train, val), ctx.profile, hp, ctx.seed)
    return FitEntry.for_run(AE_NAME, key)


def build_autoencoder(hp: dict, seed: int) -> KLAutoencoder:
    """The autoencoder with initial weights drawn from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return KLAutoencoder(hp)


def fitted_autoencoder(train, val, ctx, hp: dict) -> tuple[KLAutoencoder, dict]:
    """The autoencoder of this dataset and profile, from the fit cache or trained now (and stored).

    Returns (model in eval mode, frozen, on ``ctx.device``; the record's ``autoencoder`` field:
    source trained/cache, key, steps, val PSNR, perceptual variant). A fit stopped by the time
    budget is stored incomplete and resumed by the next run.
    """
    from ..fitting import _agreed
    from ..training import dist_info

    model = build_autoencoder(hp, ctx.seed)
    model.check_size(train.dataset.shape)
    entry = autoencoder_entry(train, val, ctx, hp)
    if _agreed(entry.complete(), ctx):
        model.load_state_dict(entry.load(map_location=ctx.device))
        log.info("autoencoder: using the cached fit %s", entry.dir)
        return _frozen(model, ctx), describe(entry, "cache", entry.meta())
    perceptual = check_perceptual(hp)
    cfg = TrainConfig.from_hparams(hp)
    sub = copy.copy(ctx)
    sub.fit_dir, sub.extras = entry.dir, {}
    adversarial = int(hp["disc_start"]) <= cfg.steps
    if adversarial:
        disc = build_discriminator(hp, ctx.seed)
        d_cfg = TrainConfig.from_hparams(hp, prefix="d_")
        trainer = Trainer(model, cfg, sub, name="vae", discriminator=disc, d_cfg=d_cfg)
        # the generator's schedule has stepped once per finished step (resumes included)
        result = trainer.fit(train, ae_adversarial_step(model, hp, lambda: trainer.scheduler.last_epoch))
    else:
        trainer = Trainer(model, cfg, sub, name="vae")
        result = trainer.fit(train, ae_loss_fn(hp))
    psnr = reconstruction_psnr(model, val, device=ctx.device)
    meta = {**result.as_record(), "method": AE_NAME, "method_version": AE_VERSION, "profile": ctx.profile,
            "seed": ctx.seed, "hparams": hp, "train_dataset": train.dataset.name, "psnr_val": psnr,
            "val_maps": len(val) if val is not None else 0, "perceptual": perceptual,
            "discriminator": f"patch, from step {int(hp['disc_start'])}" if adversarial else "not reached",
            "complete": not result.budget_reached}
    if dist_info().is_main:
        entry.save(model.state_dict(), meta)
    log.info("autoencoder: val reconstruction PSNR %.2f dB", psnr if psnr is not None else float("nan"))
    return _frozen(model, ctx), describe(entry, "trained", meta)


def build_discriminator(hp: dict, seed: int) -> PatchDiscriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 1)
        return PatchDiscriminator(int(hp["disc_layers"]), int(hp["disc_channels"]))


def _frozen(model: KLAutoencoder, ctx) -> KLAutoencoder:
    model.to(ctx.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
