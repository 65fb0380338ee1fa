"""Pixel-space diffusion methods of the seed papers: CGDM, LiCGDM (S2) and CDiff/EnvCDiff (S0).

Profiles: ``paper`` follows docs/methods/pixel-diffusion.md (the papers' settings);
``small`` and ``tiny`` shrink widths and steps and use the small-profile devices listed
there (random crops, residual over bicubic, DDIM with few steps).
"""

from __future__ import annotations

from pathlib import Path

from ckmbench.hookspecs import hookimpl
from ckmbench.specs import MethodSpec
from ckmbench.tasks.builtin import SR_FACTORS, ZERO_SHOT_FACTORS

from .licgdm import LiCGDM
from .srdiff import SRDiffusion

SR_TASKS = tuple(f"sr{f}" for f in SR_FACTORS)
NOISY_SR_TASKS = tuple(f"sr{f}-noisy" for f in SR_FACTORS)
ENVCF_SR_TASKS = tuple(f"sr{f}-envcf" for f in SR_FACTORS)
ZERO_SHOT_TASKS = tuple(f"zeroshot-sr{f}" for f in ZERO_SHOT_FACTORS)

# S2 §V-A / Fig. 3: SR3-style U-Net, c1 = 64, 1:2:4:8:16, 2 Res+ per level (3 in the decoder),
# dropout 0.1 inside both g(.) of each Res+ block (eq. 40), attention in the middle block, 3 -> 3 channels at 128^2; T = 1000, linear beta 1e-6 -> 1e-2,
# eps-prediction, Adam 5e-5, batch 16, 500k iterations, EMA 0.9999 from 5,000, last checkpoint.
CGDM_PAPER = dict(
    T=1000, schedule="linear", beta_start=1e-6, beta_end=1e-2, prediction="eps",
    base=64, mults=[1, 2, 4, 8, 16], num_res_blocks=2, dropout=0.1, dropout_placement="both", attn_resolutions=[],
    norm_groups=32, image_channels=3, image_size=128, residual=False, residual_scale=1.0, crop=None,
    steps=500_000, batch_size=16, lr=5e-5, optimizer="adam", lr_schedule="constant", grad_clip=None,
    ema_decay=0.9999, ema_start=5000, select="last", checkpoint_every=5000, log_every=100, val_every=0,
    amp=None, sampler="ancestral", sample_steps=1000, eta=0.0, predict_batch=4,
)
# small: ~30 min of training on 2 CPU cores at 64^2 (docs/methods/pixel-diffusion.md lists each
# device): width 32 with 1:2:2:2 and one Res+ block per level (1.39 M parameters), 32^2 random
# crops, the residual over bicubic (x4 scaled) as the diffused variable, 2,500 steps, DDIM 25
# steps; optimizer, lr, batch, beta schedule, T and EMA rule as the paper.
CGDM_SMALL = dict(
    CGDM_PAPER, base=32, mults=[1, 2, 2, 2], num_res_blocks=1, image_channels=1, image_size=64, residual=True,
    residual_scale=4.0, crop=32, steps=2500, checkpoint_every=250, log_every=50, sampler="ddim", sample_steps=25,
    # 16 maps a sampling batch (predict-only): the batch the committed small-profile rows were
    # scored with; the sampler's noise is drawn per batch, so this keeps them reproducible
    predict_batch=16,
)
CGDM_TINY = dict(
    CGDM_SMALL, T=50, base=8, mults=[1, 2], num_res_blocks=1, norm_groups=4, image_size=32, crop=None,
    steps=12, batch_size=4, checkpoint_every=4, log_every=4, sample_steps=4, ema_start=0, ema_decay=0.9,
)

# S0: Adam 5e-5, batch 16, linear beta 1e-6 -> 1e-2, 500k iterations, EMA 0.9999 from 5,000;
# no architecture or T given: CGDM's (same authors) at RadioMapSeer's 256^2.
CDIFF_PAPER = dict(CGDM_PAPER, image_size=256)
CDIFF_SMALL = dict(CGDM_SMALL)
CDIFF_TINY = dict(CGDM_TINY)

# LiCGDM (S2 §IV): prune >= 35 % of the parameters by the knapsack over layer values, then
# fine-tune with L_task + L_OKD + L_FKD (lambda = 1). The paper does not state the number of
# value batches or fine-tuning steps: the choices are in docs/methods/pixel-diffusion.md.
_FINETUNE = ("steps", "batch_size", "lr", "optimizer", "lr_schedule", "grad_clip", "ema_decay", "ema_start",
             "select", "checkpoint_every", "log_every", "val_every", "amp")


def licgdm_profile(cgdm: dict, finetune_steps: int, value_batches: int, value_batch_size: int, **extra) -> dict:
    out = {k: v for k, v in cgdm.items() if k not in _FINETUNE or k == "amp"}
    out.update({f"finetune_{k}": cgdm[k] for k in _FINETUNE})
    out.update(finetune_steps=finetune_steps, prune_fraction=0.35, lambda_okd=1.0, lambda_fkd=1.0,
               value_batches=value_batches, value_batch_size=value_batch_size, **extra)
    return out


LICGDM_PAPER = licgdm_profile(CGDM_PAPER, finetune_steps=50_000, value_batches=64, value_batch_size=16)
LICGDM_SMALL = licgdm_profile(CGDM_SMALL, finetune_steps=1000, value_batches=4, value_batch_size=16,
                              finetune_checkpoint_every=250)
LICGDM_TINY = licgdm_profile(CGDM_TINY, finetune_steps=6, value_batches=1, value_batch_size=4,
                             finetune_checkpoint_every=3)


class CGDM(SRDiffusion):
    name = "cgdm"


class CDiff(SRDiffusion):
    name = "cdiff"

    def shares_fit_with(self, task) -> str | None:
        """On a plain ``sr*`` task CDiff is CGDM (same network, profile and batches): it uses
        CGDM's fit (ckmbench.fitting.shared_fit_owner) instead of training a second copy."""
        return "cgdm" if task.name in SR_TASKS else None


# Small-profile fits behind the committed leaderboards, shipped so that a fresh clone scores
# them in minutes instead of training for half an hour (`--refit` trains anyway).
SHIPPED_FITS = str(Path(__file__).parent / "fits")
# Code revision of the three methods (joins the fit key): 2 = dropout in both halves of each
# Res+ block (S2 eq. 40; before, only before the second conv as in SR3's code).
REVISION = "2"


def diffusion_specs() -> list[MethodSpec]:
    cgdm_tasks = SR_TASKS + NOISY_SR_TASKS + ZERO_SHOT_TASKS
    return [
        MethodSpec(name="cgdm", factory=CGDM, tasks=cgdm_tasks, kind="diffusion", fits_dir=SHIPPED_FITS, version=REVISION,
                   profiles={"tiny": CGDM_TINY, "small": CGDM_SMALL, "paper": CGDM_PAPER},
                   description="CGDM (Jin et al.): conditional DDPM super-resolution, SR3-style U-Net"),
        MethodSpec(name="cdiff", factory=CDiff, tasks=SR_TASKS + ENVCF_SR_TASKS + ZERO_SHOT_TASKS, kind="diffusion",
                   fits_dir=SHIPPED_FITS, version=REVISION,
                   profiles={"tiny": CDIFF_TINY, "small": CDIFF_SMALL, "paper": CDIFF_PAPER},
                   description="CDiff/EnvCDiff (Jin et al.): conditional DDPM SR of the environment-carrying map"),
        MethodSpec(name="licgdm", factory=LiCGDM, tasks=cgdm_tasks, kind="diffusion", fits_dir=SHIPPED_FITS, version=REVISION,
                   profiles={"tiny": LICGDM_TINY, "small": LICGDM_SMALL, "paper": LICGDM_PAPER},
                   description="LiCGDM (Jin et al.): CGDM pruned by a knapsack over layer values, then distilled"),
    ]


@hookimpl
def ckmbench_register_methods(register):
    for spec in diffusion_specs():
        register(spec)
