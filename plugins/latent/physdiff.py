"""The physics-inspired latent diffusion model (Zhu et al., S3): radio maps from buildings + Tx.

Three stages (docs/methods/physdiff.md):

1. RegionUNet (:mod:`.regionunet`): 4 propagation regions per pixel, trained with cross-entropy
   on labels from thresholds on the excess gain over a log-distance fit; cached on its own, so
   the loss ablations share it. Only trained when the regional loss is on.
2. the shared KL autoencoder (:func:`ckmbench.latent.fitted_autoencoder`, 1x256^2 -> 3x64^2
   at ``paper``), frozen;
3. latent diffusion: T = 1000, cosine schedule, x0-prediction (``ckmbench.diffusion``); a
   U-Net with cross-attention (``ckmbench.latent.attention``) to the multi-level features of a
   condition encoder (Swin-T at ``paper``) of [buildings, Tx, cars], trained jointly. The loss is
   ||z0 - x0_hat(z_t, t)||^2 plus three physics losses (``ckmbench.latent.physics_losses``) on a
   map generated during training: a two-call DDIM (I = 1, timesteps 999 and 499) from
   z_T ~ N(0, I), decoded by the frozen decoder, gradients through both. Each loss can be
   switched off (``--set edge_loss=false`` ...): S3's Table IV ablation. Generation: DDIM, 5 steps.

The method reuses CKMDiff's latent plumbing (latents, latent scale, state, parameter counts);
what differs is the network, the diffusion and the loss.
"""

from __future__ import annotations

from collections import deque

import torch

from ckmbench.diffusion import GaussianDiffusion
from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.latent import build_condition_encoder, fitted_autoencoder, vae_hparams
from ckmbench.latent.autoencoder import AE_PAPER, AE_SMALL, AE_TINY, prefixed
from ckmbench.latent.attention import CrossAttnUNet
from ckmbench.latent.physics_losses import edge_loss, pyramid_loss, region_loss
from ckmbench.training import Trainer, TrainConfig

from .ckmdiff import CKMDiff, CKMDiffNet
from .regionunet import ENV_CHANNELS, environment, epochs_to_steps, fitted_regionunet, region_hparams

PHYSICS_LOSSES = ("edge_loss", "region_loss", "pyramid_loss")
# the method's revision (MethodSpec.version: records and fit keys): 2 = S3 eq. 21's soft/hard edge
# map with alpha, tau and the squared norms of eqs. 22 and 24 (revision 1: a fixed threshold, L1)
REVISION = "2"
ENVGEN_TASKS = ("envgen-static", "envgen-dynamic")

# paper: S3 as reference/methods.md gives it. Stage 1: Adam 1e-4, batch 16, 100 epochs, cross-entropy.
# Stage 3: T = 1000, cosine, x0-prediction, Swin-T + cross-attention trained jointly, AdamW 1e-5,
# effective batch 72, ~180 epochs (epochs x ceil(n_train / 72) trainer steps: 100k on 40k maps),
# loss weights 1e-3 / 5e-3 / 5e-3, physics x0 from DDIM with I = 1 (2 calls), DDIM 5 steps to
# generate. Not in S3 (docs/methods/physdiff.md): the U-Net (160, [1, 2, 4, 4], 2 blocks, self- and
# cross-attention as LDM's transformer blocks at 32/16/8, cross-attention also at 64 over 8x8
# windows: 246.1 M at inference against S3's 253.0 M), the RegionUNet (a 64-wide U-Net) and its
# thresholds, EMA / clipping (RadioDiff's code), latent scale 0.3, the edge loss's alpha and tau.
PHYSDIFF_PAPER = dict(
    encoder="swin-t", swin_weights=None, cond_channels=None,
    base=160, mults=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[1, 2, 3], dropout=0.0, norm_groups=32,
    xattn_heads=8, xattn_windows=[8, 4, 2, 1], xattn_queries="x",
    timesteps=1000, beta_schedule="cosine", latent_scale=0.3, cache_latents=False,
    edge_loss=True, region_loss=True, pyramid_loss=True, edge_weight=1e-3, region_weight=5e-3, pyramid_weight=5e-3,
    edge_alpha=50.0, edge_tau=0.05, pyramid_levels=5, physics_ddim_steps=2, physics_batch=None,
    epochs=180, steps=None, batch_size=72, optimizer="adamw", lr=1e-5, lr_schedule="constant", grad_clip=1.0,
    ema_decay=0.9999, ema_start=10_000, select="last", checkpoint_every=5000, log_every=100, val_every=0, amp=None,
    sample_steps=5,
    region_base=64, region_mults=[1, 2, 4, 8, 16], region_thresholds_db=[0.0, -10.0], region_batch_size=16,
    region_optimizer="adam", region_lr=1e-4, region_lr_schedule="constant", region_epochs=100, region_steps=None,
    region_grad_clip=None, region_checkpoint_every=5000, region_log_every=100,
    **prefixed(AE_PAPER),
)
# small (64^2 city, ~25-30 min with stage 1 on 2 CPU cores; docs/methods/physdiff.md): the shared small
# autoencoder (3 x 16^2 latents), a conv condition encoder, width 32 with one block per level, no
# self-attention, cross-attention over 8x8 tokens, fewer steps at a higher (decaying) learning rate and a
# faster EMA, the latent scale measured, each map's latent cached; a 16-wide 4-level RegionUNet.
PHYSDIFF_SMALL = dict(
    PHYSDIFF_PAPER, encoder="conv", cond_channels=[16, 32, 32, 32], base=32, mults=[1, 2, 2, 2], num_res_blocks=1,
    attn_resolutions=[], norm_groups=8, xattn_heads=4, xattn_windows=[2, 1, 1, 1], latent_scale="auto",
    cache_latents=True, physics_batch=4, epochs=None, steps=6000, batch_size=16, lr=2e-4, lr_end=2e-5, lr_schedule="linear",
    ema_decay=0.999, ema_start=200, checkpoint_every=250, log_every=50,
    region_base=8, region_mults=[1, 2, 4, 8], region_lr=1e-3, region_epochs=None, region_steps=300,
    region_checkpoint_every=200, region_log_every=50,
    **prefixed(AE_SMALL),
)
PHYSDIFF_TINY = dict(
    PHYSDIFF_SMALL, cond_channels=[8, 16], base=8, mults=[1, 2], norm_groups=4, xattn_heads=2, xattn_windows=[1, 1],
    steps=6, batch_size=4, lr=1e-3, lr_end=1e-4, ema_decay=0.9, ema_start=0, checkpoint_every=3, log_every=3,
    physics_batch=2, pyramid_levels=3, region_base=4, region_mults=[1, 2], region_steps=4, region_batch_size=4,
    region_checkpoint_every=2, region_log_every=2,
    **prefixed(AE_TINY),
)
# ckmbench.diffusion's DDIM without its torch.no_grad(): the physics losses train the U-Net through it
_ddim_with_grad = GaussianDiffusion.ddim_sample.__wrapped__


class LatentDDIM:
    """The x0-prediction Gaussian diffusion behind the sampler interface CKMDiff's ``predict`` calls:
    ``sample(model_fn, shape, steps, generator, device)`` runs DDIM (eta = 0); ``model_fn`` gets t / T."""

    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion

    def model(self, model_fn):
        """model_fn(z, t in (0, 1]) as ckmbench.diffusion's model (integer t in [0, T))."""
        T = float(self.diffusion.T)
        return lambda z, t: model_fn(z, t.float() / T)

    def sample(self, model_fn, shape, steps: int, generator=None, device=None, grad: bool = False) -> torch.Tensor:
        """DDIM over ``steps`` trailing timesteps from z_T ~ N(0, I); ``grad`` keeps autograd on
        (the physics losses train the network through the sampler)."""
        run = _ddim_with_grad if grad else GaussianDiffusion.ddim_sample
        return run(self.diffusion, self.model(model_fn), shape, int(steps), generator=generator, device=device)


class PhysDiff(CKMDiff):
    name = "physdiff"
    predict_hparams = ("sample_steps",)

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        hp = self.hparams
        for key in PHYSICS_LOSSES:
            if not isinstance(hp.get(key, True), bool):
                raise CkmError(f"physdiff: {key} must be true or false, got {hp[key]!r}: --set {key}=false")
        self.diffusion = GaussianDiffusion.from_schedule(hp.get("beta_schedule", "cosine"), int(hp.get("timesteps", 1000)),
                                                         prediction="x0")
        self.ddm = LatentDDIM(self.diffusion)  # what CKMDiff's predict samples with
        self.regions = None  # the frozen RegionUNet while training with the regional loss
        self.recent_terms: deque = deque(maxlen=int(hp.get("log_every", 50)))  # the physics terms of recent steps

    def uses(self, loss: str) -> bool:
        return bool(self.hparams.get(loss, True))

    # ------------------------------------------------------------ building
    def architecture(self, image_size: int, downsample: int, z_channels: int) -> dict:  # type: ignore[override]
        hp = self.hparams
        levels = len(hp["mults"])
        ints = lambda key: [int(v) for v in hp[key]]  # noqa: E731
        return {
            "kind": "envgen", "image_size": int(image_size), "downsample": int(downsample),
            "unet": dict(z_channels=int(z_channels), base=int(hp["base"]), mults=ints("mults"),
                         num_res_blocks=int(hp["num_res_blocks"]), dropout=float(hp.get("dropout", 0.0)),
                         attn_resolutions=ints("attn_resolutions"), norm_groups=int(hp["norm_groups"]),
                         image_size=int(image_size) // int(downsample), xattn_heads=int(hp["xattn_heads"]),
                         xattn_windows=ints("xattn_windows"), xattn_queries=str(hp.get("xattn_queries", "x")),
                         out_heads=1),
            "encoder": dict(kind=str(hp["encoder"]), image_size=int(image_size), downsample=int(downsample),
                            levels=levels, channels=[int(c) for c in hp.get("cond_channels") or []],
                            weights=hp.get("swin_weights"), norm_groups=int(hp["norm_groups"]),
                            in_channels=ENV_CHANNELS),
            "latent_scale": None,
        }

    @staticmethod
    def build(arch: dict, init_weights: bool = True) -> CKMDiffNet:
        """Condition encoder + cross-attention U-Net (x0 head); ``init_weights=False`` skips the
        encoder's ImageNet file (a stored fit brings its own weights)."""
        e = dict(arch["encoder"])
        if not init_weights:
            e["weights"] = None
        enc = build_condition_encoder(e.pop("kind"), **e)
        return CKMDiffNet(CrossAttnUNet(context_channels=tuple(enc.channels), **arch["unet"]), enc)

    # ------------------------------------------------------------ training
    def decode_for_loss(self, z: torch.Tensor) -> torch.Tensor:
        """The frozen decoder's map of a latent, unclipped so the gradient reaches every pixel."""
        return (self.ae.decode_x(z / self.arch["latent_scale"]).float() + 1.0) / 2.0

    def physics_terms(self, u_hat: torch.Tensor, target: torch.Tensor, env: torch.Tensor) -> dict:
        """The switched-on physics losses of the generated maps ``u_hat`` against the true maps."""
        hp, out = self.hparams, {}
        if self.uses("edge_loss"):
            out["edge_loss"] = edge_loss(u_hat, target, float(hp["edge_alpha"]), float(hp["edge_tau"]))
        if self.uses("region_loss"):
            with torch.no_grad():
                truth = self.regions.probabilities(target, env)
            out["region_loss"] = region_loss(self.regions.probabilities(u_hat, env), truth)
        if self.uses("pyramid_loss"):
            out["pyramid_loss"] = pyramid_loss(u_hat, target, int(hp["pyramid_levels"]))
        return out

    def loss(self, net, batch, generator) -> torch.Tensor:
        obs, target, _ = batch
        env = self.condition(obs)
        z0 = self.latent(target, obs.keys)
        total = self.diffusion.training_loss(self.ddm.model(lambda z, t: net(z, t, env)), z0, generator=generator)
        if any(self.uses(k) for k in PHYSICS_LOSSES):
            n = self.hparams.get("physics_batch") or len(target)  # small-profile device: the first n maps
            env, target = env[:n], target[:n]
            z_hat = self.ddm.sample(lambda z, t: net(z, t, env), (len(target), *z0.shape[1:]),
                                    int(self.hparams["physics_ddim_steps"]), generator=generator, device=z0.device,
                                    grad=True)
            terms = self.physics_terms(self.decode_for_loss(z_hat), target, env)
            if net.training:
                self.recent_terms.append({k: float(v.detach()) for k, v in terms.items()})
            total = total + sum(float(self.hparams[k.replace("_loss", "_weight")]) * v for k, v in terms.items())
        return total

    def fit(self, train, val, task, ctx) -> None:
        if getattr(task, "kind", None) != "envgen":
            raise CkmError(f"method physdiff trains on envgen-static and envgen-dynamic; got {task.name}")
        ae_hp = vae_hparams(self.hparams)
        self._latents = {}
        self.recent_terms.clear()
        self.ae, ae_info = fitted_autoencoder(train, val, ctx, ae_hp)
        region_info = None
        if self.uses("region_loss"):
            self.regions, region_info = fitted_regionunet(train, val, task, ctx, region_hparams(self.hparams))
        self.arch = self.architecture(int(train.dataset.shape[0]), self.ae.downsample, self.ae.z_channels)
        self.arch["vae"] = ae_hp
        self.arch["latent_scale"] = self.latent_scale(train)
        self.net = self.build_seeded(self.arch, ctx.seed)
        cfg = TrainConfig.from_hparams({**self.hparams, "steps": epochs_to_steps(self.hparams, len(train))})
        result = Trainer(self.net, cfg, ctx, name="ldm").fit(train, self.loss, self.validation_fn(val, cfg.batch_size))
        self.regions = None
        on = [k for k in PHYSICS_LOSSES if self.uses(k)]
        final = {k: sum(t[k] for t in self.recent_terms) / len(self.recent_terms) for k in on} if self.recent_terms else None
        report_fit(ctx, result, autoencoder=ae_info, regionunet=region_info, encoder=self.encoder_variant(),
                   latent_scale=self.arch["latent_scale"], physics_losses=on, final_physics_terms=final)

    # ------------------------------------------------------------ prediction
    def condition(self, obs) -> torch.Tensor:
        return environment(obs)

    def predict(self, obs, ctx) -> torch.Tensor:
        """CKMDiff's prediction (condition -> sampler -> decoder) with :class:`LatentDDIM` as the sampler."""
        if self.net is None:
            raise CkmError("physdiff has no weights: fit it first or pass --checkpoint of a physdiff fit")
        return super().predict(obs, ctx)

    def sampling_steps(self) -> int:
        return int(self.hparams.get("sample_steps", 5))

    def load_state_dict(self, state: dict) -> None:
        if not state or state.get("arch", {}).get("kind") != "envgen":
            raise CkmError("checkpoint is not a physdiff checkpoint: pass one written by ckmbench run -m physdiff")
        super().load_state_dict(state)
