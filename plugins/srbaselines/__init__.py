"""Learned baselines of the seed papers' tables: SRResNet, SRGAN-MSE, SRGAN (Ledig et al.),
DRRN (Tai et al.), C-VAE (CGDM's baseline) and a pix2pix-style cGAN (S1's cGAN).

Profiles: ``paper`` follows docs/methods/sr-baselines.md (each paper's architecture and
training); ``small`` keeps the architectures (DRRN and the cGAN at smaller widths) and uses
only the small-profile devices listed there (random crops, smaller widths, fewer steps);
``tiny`` is for tests.
"""

from __future__ import annotations

from ckmbench.hookspecs import hookimpl
from ckmbench.specs import MethodSpec
from ckmbench_plugins.diffusion import ENVCF_SR_TASKS, NOISY_SR_TASKS, SR_TASKS, ZERO_SHOT_TASKS

from .cgan import CGANMethod
from .cvae import CVAEMethod
from .drrn import DRRNMethod
from .srresnet import SRGANMethod, SRGANMSEMethod, SRResNetMethod

SR_FAMILY = SR_TASKS + NOISY_SR_TASKS + ENVCF_SR_TASKS + ZERO_SHOT_TASKS
CGAN_TASKS = ("inpaint", "sr4-noisy", "denoise", "envgen-static", "envgen-dynamic")

_RUN = dict(lr_schedule="constant", grad_clip=None, ema_decay=None, select="last", val_every=0, amp=None)

# Ledig et al. §3.2/§4: B = 16 blocks of 64 channels, RGB, 96x96 HR crops, batch 16, Adam
# (beta1 0.9) lr 1e-4, 10^6 updates for SRResNet.
SRRESNET_PAPER = dict(_RUN, blocks=16, width=64, image_channels=3, crop=96, residual=False, steps=1_000_000,
                      batch_size=16, lr=1e-4, optimizer="adam", adam_betas=[0.9, 0.999], checkpoint_every=5000,
                      log_every=100)
# small: the paper's network on the one-channel map, 32^2 crops, the residual over bicubic,
# 4,000 steps (~0.4 s each on one core)
SRRESNET_SMALL = dict(SRRESNET_PAPER, image_channels=1, crop=32, residual=True, steps=4000, checkpoint_every=250,
                      log_every=50)
SRRESNET_TINY = dict(SRRESNET_SMALL, blocks=2, width=8, crop=None, steps=8, batch_size=4, checkpoint_every=4,
                     log_every=4)

# SRGAN: the generator starts from the SRResNet fit (§3.2: "to avoid undesired local optima"),
# 10^5 updates at lr 1e-4 then 10^5 at 1e-5, G and D alternating, adversarial weight 1e-3.
_GAN = dict(lr_schedule="step", lr_gamma=0.1, d_lr_schedule="step", d_lr_gamma=0.1, d_optimizer="adam",
            d_adam_betas=[0.9, 0.999], d_grad_clip=None, adv_weight=1e-3, d_width=64, init_from="srresnet")
SRGAN_PAPER = dict(SRRESNET_PAPER, **_GAN, steps=200_000, lr_step_every=100_000, d_lr=1e-4, d_lr_step_every=100_000,
                   d_pool=6)
SRGAN_SMALL = dict(SRRESNET_SMALL, **_GAN, steps=1000, lr_step_every=500, d_lr=1e-4, d_lr_step_every=500, d_pool=2)
SRGAN_TINY = dict(SRRESNET_TINY, **{**_GAN, "d_width": 8, "init_from": None}, steps=8, lr_step_every=4, d_lr=1e-4,
                  d_lr_step_every=4, d_pool=2)
VGG = dict(vgg_weights=None)

# DRRN as its official Caffe solver (DRRN_B1U25_52C128_solver.prototxt): B1U25, 128 channels, Y
# channel, 31x31 patches, batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 halved every 65,360
# iterations (10 of its 6,536-iteration epochs), clip_gradients 0.01 through the authors' Caffe
# patch (global L2 norm <= 0.01 / lr). Length: S2 trains its baselines with CGDM's 500k iterations.
DRRN_PAPER = dict(_RUN, width=128, units=25, image_channels=1, crop=31, steps=500_000, batch_size=128, lr=0.1,
                  optimizer="sgd", momentum=0.9, weight_decay=1e-4, lr_schedule="step", lr_step_every=65_360,
                  lr_gamma=0.5, grad_clip=0.01, grad_clip_mode="adjustable-norm", checkpoint_every=5000,
                  log_every=100)
# small: width 16 (0.35 s a step on one core at 31^2, batch 16), 4,000 steps, the halving every fifth of the run
DRRN_SMALL = dict(DRRN_PAPER, width=16, batch_size=16, steps=4000, lr_step_every=800, checkpoint_every=250,
                  log_every=50)
DRRN_TINY = dict(DRRN_SMALL, width=8, units=3, crop=None, steps=8, batch_size=4, lr_step_every=4,
                 checkpoint_every=4, log_every=4)

# C-VAE: no paper architecture (cvae.py); CGDM's training (S2 §V-A: Adam 5e-5, batch 16, 500k
# iterations, last checkpoint) on the full 128^2 maps.
CVAE_PAPER = dict(_RUN, width=64, latent=4, sigma=0.05, image_channels=1, crop=None, steps=500_000, batch_size=16,
                  lr=5e-5, optimizer="adam", adam_betas=[0.9, 0.999], checkpoint_every=5000, log_every=100)
CVAE_SMALL = dict(CVAE_PAPER, width=32, crop=32, steps=4000, checkpoint_every=250, log_every=50)
CVAE_TINY = dict(CVAE_SMALL, width=8, latent=2, crop=None, steps=8, batch_size=4, checkpoint_every=4, log_every=4)

# pix2pix (Isola et al. §3.3, §4): unet_256 (8 downs, ngf 64), 70x70 PatchGAN (ndf 64), batch 1,
# Adam 2e-4 (beta1 0.5) for G and D, L1 weight 100; 200 epochs, the last 100 decaying to 0 —
# here a linear decay to 0 over 400k steps (200 epochs of 2,000 maps; docs).
CGAN_PAPER = dict(_RUN, num_downs=8, ngf=64, ndf=64, n_layers=3, dropout=True, l1_weight=100.0, steps=400_000,
                  batch_size=1, lr=2e-4, lr_schedule="linear", lr_end=0.0, optimizer="adam",
                  adam_betas=[0.5, 0.999], d_lr=2e-4, d_lr_schedule="linear", d_lr_end=0.0, d_optimizer="adam",
                  d_adam_betas=[0.5, 0.999], d_grad_clip=None, checkpoint_every=5000, log_every=100)
# small: the U-Net at 64^2 (6 downs), ngf/ndf 32, batch 16, 1,500 steps
CGAN_SMALL = dict(CGAN_PAPER, num_downs=6, ngf=32, ndf=32, batch_size=16, steps=1500, checkpoint_every=250,
                  log_every=50)
CGAN_TINY = dict(CGAN_SMALL, num_downs=5, ngf=4, ndf=4, batch_size=4, steps=8, checkpoint_every=4, log_every=4)


# Revision of a method's code (MethodSpec.version): bumped when a change alters what its fits
# compute. drrn 2: as its official prototxt and solver; cgan 2: pix2pix's N(0, 0.02) initialisation.
REVISIONS = {"drrn": "2", "cgan": "2"}

# name: (class, tasks, (tiny, small, paper), description)
SPECS = {
    "srresnet": (SRResNetMethod, SR_FAMILY, (SRRESNET_TINY, SRRESNET_SMALL, SRRESNET_PAPER),
                 "SRResNet (Ledig et al.): 16 residual blocks, sub-pixel upsampling, MSE"),
    "srgan-mse": (SRGANMSEMethod, SR_FAMILY, (SRGAN_TINY, SRGAN_SMALL, SRGAN_PAPER),
                  "SRGAN-MSE (Ledig et al.): SRResNet + discriminator, MSE + 1e-3 adversarial"),
    "srgan": (SRGANMethod, SR_FAMILY, tuple({**p, **VGG} for p in (SRGAN_TINY, SRGAN_SMALL, SRGAN_PAPER)),
              "SRGAN (Ledig et al.): VGG54 + 1e-3 adversarial; needs local VGG19 weights"),
    "drrn": (DRRNMethod, SR_FAMILY, (DRRN_TINY, DRRN_SMALL, DRRN_PAPER),
             "DRRN B1U25 (Tai et al.): 25 residual units sharing their convs on the bicubic input"),
    "cvae": (CVAEMethod, SR_FAMILY, (CVAE_TINY, CVAE_SMALL, CVAE_PAPER),
             "C-VAE (CGDM's baseline): conditional VAE on the upsampled map, scored at the prior mean"),
    "cgan": (CGANMethod, CGAN_TASKS, (CGAN_TINY, CGAN_SMALL, CGAN_PAPER),
             "cGAN (pix2pix U-Net + 70x70 PatchGAN, L1 x100 + adversarial)"),
}


def srbaseline_specs() -> list[MethodSpec]:
    return [MethodSpec(name=name, factory=cls, tasks=tasks, kind="learned", description=text,
                       profiles=dict(zip(("tiny", "small", "paper"), (dict(p) for p in profiles))),
                       version=REVISIONS.get(name, ""))
            for name, (cls, tasks, profiles, text) in SPECS.items()]


@hookimpl
def ckmbench_register_methods(register):
    for spec in srbaseline_specs():
        register(spec)
