"""Latent diffusion methods of the seed papers: CKMDiff (S1), RadioDiff (S4) and the physics-inspired
LDM (S3) (docs/methods/ckmdiff.md, radiodiff.md, physdiff.md).

They build on :mod:`ckmbench.latent` (docs/latent.md): the KL autoencoder fitted once per
dataset and profile, decoupled diffusion, the two-head U-Net and the condition encoders.
"""

from __future__ import annotations

from ckmbench.hookspecs import hookimpl
from ckmbench.latent.autoencoder import AE_PAPER, AE_SMALL, AE_TINY, prefixed
from ckmbench.specs import MethodSpec
from ckmbench.tasks.builtin import SR_FACTORS

from .ckmdiff import CKMDiff
from .physdiff import ENVGEN_TASKS, PHYSDIFF_PAPER, PHYSDIFF_SMALL, PHYSDIFF_TINY, PhysDiff
from .physdiff import REVISION as PHYSDIFF_REVISION
from .radiodiff import RADIODIFF_PAPER, RADIODIFF_SMALL, RADIODIFF_TINY, REVISION as RADIODIFF_REVISION, \
    TASKS as RADIODIFF_TASKS, RadioDiff

NOISY_SR_TASKS = tuple(f"sr{f}-noisy" for f in SR_FACTORS)
CKMDIFF_TASKS = ("inpaint", "denoise", "generate") + NOISY_SR_TASKS

# S1 Table I (inpainting, DPM): U-Net 96 / [1, 2, 4, 8], 2 blocks, batch 32, 300k iterations,
# lr 4e-5 -> 4e-6; Table II (super-resolution): 128 / [1, 2, 4, 4], 2 blocks, batch 12, 200k,
# lr 5e-5 -> 5e-6 (the sr_ keys); t_min 1e-4; Swin-B condition encoder; unweighted L2 (eq. 22);
# a new degradation every step. Not stated in S1 (choices in docs/methods/ckmdiff.md): the
# optimizer (AdamW), the decay shape (linear), dropout (0), attention (middle block only), EMA
# (0.9999 from 10k, RadioDiff's code), the latent scale (RadioDiff's 0.3), sampling steps (50).
# The autoencoder is RadioDiff's (vae_ keys, shared with every latent method).
CKMDIFF_PAPER = dict(
    encoder="swin-b", swin_weights=None, cond_channels=None,
    base=96, mults=[1, 2, 4, 8], num_res_blocks=2, dropout=0.0, attn_resolutions=[], norm_groups=32,
    sr_base=128, sr_mults=[1, 2, 4, 4], sr_batch_size=12, sr_steps=200_000, sr_lr=5e-5, sr_lr_end=5e-6,
    t_min=1e-4, loss="l2", latent_scale=0.3, building_threshold=0.08, canny_sigma=1.0,
    steps=300_000, batch_size=32, optimizer="adamw", lr=4e-5, lr_end=4e-6, lr_schedule="linear", grad_clip=1.0,
    ema_decay=0.9999, ema_start=10_000, fresh_degradations=True, select="last", checkpoint_every=5000,
    log_every=100, val_every=0, amp=None, sample_steps=50, cache_latents=False,
    **prefixed(AE_PAPER),
)
# small (~30 min in total on 2 CPU cores at 64^2, docs/methods/ckmdiff.md): the small autoencoder
# (f = 4: 3 x 16^2 latents), width 32 with [1, 2, 2, 2] and one block per level, a conv condition
# encoder, fewer steps, 10 sampling steps, a higher learning rate and a faster EMA for the short run,
# the latent scale measured (1 / std of the latents); the same U-Net for every task. Each map's
# latent is computed once and kept (cache_latents: the same values, not a shrinking device).
# 8,000 steps for inpaint/denoise/generate, 2,000 for sr*-noisy: at 8,000 the SR model over-fits the
# 1,920 training maps (train loss 0.055, val 0.837 against 0.169 / 0.285 at 2,000; worse scores).
CKMDIFF_SMALL = dict(
    CKMDIFF_PAPER, encoder="conv", cond_channels=[16, 32, 32, 32], base=32, mults=[1, 2, 2, 2], num_res_blocks=1,
    norm_groups=8, sr_base=32, sr_mults=[1, 2, 2, 2], sr_batch_size=16, sr_steps=2000, sr_lr=2e-4, sr_lr_end=2e-5,
    steps=8000, batch_size=16, lr=2e-4, lr_end=2e-5, ema_decay=0.999, ema_start=200, latent_scale="auto",
    checkpoint_every=250, log_every=50, sample_steps=10, cache_latents=True,
    **prefixed(AE_SMALL),
)
CKMDIFF_TINY = dict(
    CKMDIFF_SMALL, cond_channels=[8, 16], base=8, mults=[1, 2], norm_groups=4, sr_base=8, sr_mults=[1, 2],
    sr_batch_size=4, sr_steps=6, sr_lr=1e-3, sr_lr_end=1e-4, steps=6, batch_size=4, lr=1e-3, lr_end=1e-4,
    ema_decay=0.9, ema_start=0, checkpoint_every=3, log_every=3, sample_steps=3,
    **prefixed(AE_TINY),
)


def latent_specs() -> list[MethodSpec]:
    return [
        MethodSpec(name="ckmdiff", factory=CKMDiff, tasks=CKMDIFF_TASKS, kind="diffusion",
                   profiles={"tiny": CKMDIFF_TINY, "small": CKMDIFF_SMALL, "paper": CKMDIFF_PAPER},
                   description="CKMDiff (Fu et al.): conditional decoupled diffusion in a KL-autoencoder latent, "
                               "feature-emphasis condition through Swin-B"),
        MethodSpec(name="radiodiff", factory=RadioDiff, tasks=RADIODIFF_TASKS, kind="diffusion",
                   version=RADIODIFF_REVISION,
                   profiles={"tiny": RADIODIFF_TINY, "small": RADIODIFF_SMALL, "paper": RADIODIFF_PAPER},
                   description="RadioDiff (Wang et al.): decoupled latent diffusion from a buildings/cars/Tx "
                               "prompt, the code's two-decoder U-Net with Swin-B relation layers and adaptive "
                               "FFT filters"),
        MethodSpec(name="physdiff", factory=PhysDiff, tasks=ENVGEN_TASKS, kind="diffusion", version=PHYSDIFF_REVISION,
                   profiles={"tiny": PHYSDIFF_TINY, "small": PHYSDIFF_SMALL, "paper": PHYSDIFF_PAPER},
                   description="Physics-inspired LDM (Zhu et al.): x0-prediction latent diffusion, Swin-T "
                               "cross-attention, edge / regional (RegionUNet) / Laplacian-pyramid losses"),
    ]


@hookimpl
def ckmbench_register_methods(register):
    for spec in latent_specs():
        register(spec)
