"""Shared diffusion building blocks for learned methods: beta schedules, a Gaussian
diffusion with ancestral/DDIM samplers, and the SR3-style U-Net of CGDM (docs/diffusion.md)."""

from .gaussian import PREDICTIONS, SPACINGS, GaussianDiffusion, ddim_timesteps
from .schedules import SCHEDULES, make_betas
from .unet import CGDM_PAPER_CONFIG, SR3UNet, cgdm_paper_unet

__all__ = ["make_betas", "SCHEDULES", "GaussianDiffusion", "PREDICTIONS", "SPACINGS", "ddim_timesteps",
           "SR3UNet", "cgdm_paper_unet", "CGDM_PAPER_CONFIG"]
