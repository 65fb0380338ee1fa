"""Shared parts of the latent methods (CKMDiff, RadioDiff, physics-inspired LDM): the KL
autoencoder fitted once per dataset and profile, decoupled diffusion, the two-head U-Net and
the condition encoders (docs/latent.md)."""

from .autoencoder import KLAutoencoder, fitted_autoencoder, prefixed, reconstruction_psnr, vae_hparams
from .ddm import DecoupledDiffusion
from .encoders import ConvEncoder, SwinEncoder, build_condition_encoder
from .unet import TwoHeadUNet

__all__ = ["KLAutoencoder", "fitted_autoencoder", "prefixed", "reconstruction_psnr", "vae_hparams",
           "DecoupledDiffusion", "ConvEncoder", "SwinEncoder", "build_condition_encoder", "TwoHeadUNet"]
