"""Learned radio-map baselines of the seed papers' tables: RadioUNet-c/-s, UVM-Net (and RME-GAN).

Profiles: ``paper`` follows the papers and the official code (epochs become trainer steps
through the train-split size); ``small`` and ``tiny`` shrink only the
width and the number of steps (docs/methods/radiomap-baselines.md lists each device).
"""

from __future__ import annotations

from ckmbench.hookspecs import hookimpl
from ckmbench.specs import MethodSpec

from .radiounet import RadioUNet, RadioUNetS
from .uvmnet import UVMNet

ENVGEN_TASKS = ("envgen-static", "envgen-dynamic")

# Levie et al.'s code: RadioWNet (13.27 M), thresh 0.2, batch 15, Adam 1e-4, StepLR(30 epochs,
# 0.1), 50 epochs for the first U-Net, then 50 for the second with the first frozen, MSE,
# the best-validation weights of each phase (validated every epoch), no gradient clipping.
RADIOUNET_PAPER = dict(
    width=1.0, thresh=0.2, epochs_u1=50, epochs_u2=50, steps_u1=None, steps_u2=None, batch_size=15, lr=1e-4,
    optimizer="adam", lr_schedule="step", lr_step_epochs=30, lr_step_every=None, lr_gamma=0.1, grad_clip=None,
    select="best", val_every_epochs=1, val_every=None, val_max=None, checkpoint_every=1000, log_every=100, amp=None,
)
# small: ~15-25 min on one CPU core at 64^2: width 0.5 (3.32 M parameters), 1,000 steps per
# phase (2,000 in all), StepLR after 60 % of each phase (as 30 of 50 epochs), validation every
# 200 steps on the first 120 val maps; everything else as the paper.
RADIOUNET_SMALL = dict(
    RADIOUNET_PAPER, width=0.5, epochs_u1=None, epochs_u2=None, steps_u1=1000, steps_u2=1000, lr_step_epochs=None,
    lr_step_every=600, val_every_epochs=None, val_every=200, val_max=120, checkpoint_every=200, log_every=50,
)
# tiny: seconds, for tests: width 0.1, 6 steps per phase, batch 4, lr 1e-3.
RADIOUNET_TINY = dict(
    RADIOUNET_SMALL, width=0.1, steps_u1=6, steps_u2=6, batch_size=4, lr=1e-3, lr_step_every=4, val_every=3,
    val_max=8, checkpoint_every=3, log_every=3,
)

# UVM-Net: RadioUNet's training, one Mamba (UVMB) block per U-Net after encoder stage 5.
SSM = dict(ssm_stage=5, d_state=16, d_conv=4, expand=2)
UVMNET_PAPER = dict(RADIOUNET_PAPER, **SSM)
UVMNET_SMALL = dict(RADIOUNET_SMALL, **SSM)
UVMNET_TINY = dict(RADIOUNET_TINY, **{**SSM, "d_state": 4})


def radiomap_specs() -> list[MethodSpec]:
    return [
        MethodSpec(name="radiounet-c", factory=RadioUNet, tasks=ENVGEN_TASKS, kind="learned",
                   profiles={"tiny": RADIOUNET_TINY, "small": RADIOUNET_SMALL, "paper": RADIOUNET_PAPER},
                   description="RadioUNet-c (Levie et al.): RadioWNet on buildings + Tx (+ cars), two-phase curriculum"),
        MethodSpec(name="radiounet-s", factory=RadioUNetS, tasks=("sparse",), kind="learned",
                   profiles={"tiny": RADIOUNET_TINY, "small": RADIOUNET_SMALL, "paper": RADIOUNET_PAPER},
                   description="RadioUNet-s (Levie et al.): RadioWNet on the sparse samples and their mask"),
        MethodSpec(name="uvm-net", factory=UVMNet, tasks=ENVGEN_TASKS, kind="learned",
                   profiles={"tiny": UVMNET_TINY, "small": UVMNET_SMALL, "paper": UVMNET_PAPER},
                   description="UVM-Net (RadioDiff's baseline): RadioUNet training with a Mamba block in each U-Net"),
    ]


@hookimpl
def ckmbench_register_methods(register):
    for spec in radiomap_specs():
        register(spec)
