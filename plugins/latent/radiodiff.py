"""RadioDiff (Wang et al., S4, and its public code): decoupled diffusion in the latent of the
shared KL autoencoder, conditioned on a prompt of the environment (docs/methods/radiodiff.md).

Pipeline:

1. the dataset's KL autoencoder (:func:`ckmbench.latent.fitted_autoencoder`, shared with
   every latent method), frozen; in training z0 = scale x a posterior sample (the code's
   ``get_first_stage_encoding``), the posterior mean where a deterministic latent is needed
   (the latent scale and clip bound);
2. the prompt: [buildings, Tx, buildings] (``envgen-static``, the code's static prompt) or
   [buildings, cars, Tx] (``envgen-dynamic``, S4's prompt C) -> condition encoder (Swin-B at
   ``paper``, a conv encoder at ``small``/``tiny``) -> one feature map per U-Net level;
3. the code's U-Net (:class:`ckmbench.latent.radiodiff_unet.RadioDiffUNet`, revision 2):
   weight-standardised ResNet blocks with scale-shift time conditioning on Fourier features of
   log(t)/4, a relation layer (cross-attention to the prompt's features) and linear attention
   at every level, two AFT branches (S4 eqs. 22-23) at the bottleneck each feeding its own
   full decoder (F1 -> c, F2 -> eps), and the code's output preconditioning (:func:`precondition`);
4. decoupled diffusion (S4 eqs. 13-20): the paper's unweighted L2 loss (``loss=code``: the
   code's weighted L1 + L2), and the code's sampler (5 steps + a final step at t_min, c
   re-derived from the clipped x0 estimate) with the raw weights (the code samples without
   EMA); decode.

Everything else -- latents (cached per map), the latent scale, validation, prediction, state
and parameter counts -- is CKMDiff's (:class:`RadioDiff` subclasses it).
"""

from __future__ import annotations

import torch
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.latent import DecoupledDiffusion, build_condition_encoder, fitted_autoencoder, vae_hparams
from ckmbench.latent.autoencoder import AE_PAPER, AE_SMALL, AE_TINY, prefixed
from ckmbench.latent.radiodiff_unet import RadioDiffUNet
from ckmbench.training import Trainer, TrainConfig

from .ckmdiff import CKMDiff

TASKS = ("envgen-static", "envgen-dynamic")

# The prompt of each task, in channel order (the fit key holds the task, so a fit keeps its prompt).
PROMPTS = {"envgen-static": ("buildings", "tx_map", "buildings"), "envgen-dynamic": ("buildings", "cars", "tx_map")}
# ``loss`` of the profile -> DecoupledDiffusion's loss
LOSSES = {"l2": "l2", "code": "radiodiff"}
# The method's revision (MethodSpec.version): 2 = the code's U-Net (two decoders, WS-conv blocks,
# linear attention, Fourier time features), posterior-sampled latents, raw weights at sampling.
REVISION = "2"
BACKBONE = "radiodiff-code"  # arch["backbone"] of a revision-2 fit


def precondition(z: torch.Tensor, t: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor):
    """RadioDiff's code: c_hat = (1 - t) z_t + t / sqrt(t^2 + 1) F1,
    eps_hat = sqrt(t) z_t + sqrt(1 - t) / sqrt(t^2 + 1) F2 (t broadcast per sample)."""
    tb = t.to(z.dtype).reshape(-1, *([1] * (z.dim() - 1)))
    norm = (tb ** 2 + 1.0).sqrt()
    return (1.0 - tb) * z + tb / norm * f1, tb.sqrt() * z + (1.0 - tb).clamp_min(0.0).sqrt() / norm * f2


class RadioDiffNet(nn.Module):
    """The trained part: condition encoder + the code's U-Net, preconditioned outputs."""

    def __init__(self, unet: RadioDiffUNet, encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.encoder = encoder

    def forward(self, z: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor):
        f1, f2 = self.unet(z, t, self.encoder(prompt))
        return precondition(z, t, f1, f2)


class CodeSampler(DecoupledDiffusion):
    """DDM whose ``sample`` is RadioDiff's code sampler (:meth:`sample_corrected`);
    ``steps`` there counts network calls (S + 1 when the last step is split)."""

    def __init__(self, t_min: float, loss: str, split_last: bool = True):
        super().__init__(t_min, loss)
        self.split_last = bool(split_last)
        self.clip: float | None = None  # set from the fit's measured latent range

    def sample(self, model_fn, shape, steps: int, generator=None, device=None, z1=None):  # type: ignore[override]
        equal = steps - 1 if self.split_last else steps
        return self.sample_corrected(model_fn, shape, equal, generator, device, z1, self.split_last, self.clip)


def prompt_fields(task) -> tuple[str, ...]:
    """The prompt of a fit on ``task`` (one-line error for a task without one)."""
    name = getattr(task, "name", str(task))
    if name not in PROMPTS:
        raise CkmError(f"method radiodiff trains on {', '.join(PROMPTS)}; got {name}: pick one of them")
    return PROMPTS[name]


def loss_name(hp: dict) -> str:
    value = hp.get("loss", "l2")
    if value not in LOSSES:
        raise CkmError(f"radiodiff: loss {value!r} is not one of {', '.join(LOSSES)}: pass --set loss=l2 (the "
                       f"paper's) or loss=code (the code's weighted L1 + L2)")
    return LOSSES[value]


class RadioDiff(CKMDiff):
    name = "radiodiff"
    channels_last_cpu = True  # measured: faster training steps on one CPU thread (docs/training.md)
    predict_hparams = ("sample_steps", "split_last", "zero_buildings")

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        hp = dict(hparams or {})
        super().__init__(profile, {**hp, "loss": loss_name(hp)})  # CKMDiff's process knows the code loss as "radiodiff"
        self.hparams = hp
        self.ddm = CodeSampler(float(hp.get("t_min", 1e-4)), loss_name(hp), bool(hp.get("split_last", True)))
        clip = hp.get("clip_x0")
        if clip not in (None, "auto") and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
            raise CkmError(f"radiodiff: clip_x0={clip!r}: pass a number >= 0 (0: no clipping) or auto")

    # ------------------------------------------------------------ building
    def architecture(self, task_name: str, image_size: int, downsample: int, z_channels: int) -> dict:
        """The code's U-Net (:class:`RadioDiffUNet`) and the condition encoder, for ``task_name``'s prompt.

        Windows are chosen so every level's relation layer attends over ``xattn_tokens`` x
        ``xattn_tokens`` tokens (8: the code's 8, 4, 2, 1 at a 64^2 latent)."""
        hp = self.hparams
        mults = [int(m) for m in hp["mults"]]
        levels, side = len(mults), int(image_size) // int(downsample)
        tokens = int(hp.get("xattn_tokens", 8))
        unet = dict(z_channels=int(z_channels), base=int(hp["base"]), mults=mults,
                    windows=[max(1, (side >> lvl) // tokens) for lvl in range(levels)],
                    relation_heads=int(hp.get("xattn_heads", 8)),
                    relation_scale=hp.get("xattn_scale") or None,  # 0/null: the usual 1/sqrt(head dim)
                    relation_dropout=float(hp.get("relation_dropout", 0.1)),
                    relation_norm=str(hp.get("relation_norm", "batch")), attn_heads=int(hp.get("attn_heads", 4)),
                    attn_dim_head=int(hp.get("attn_dim_head", 32)), fourier_scale=float(hp.get("fourier_scale", 16)),
                    norm_groups=int(hp.get("norm_groups", 8)), aft=bool(hp.get("aft", True)), image_size=side)
        encoder = dict(kind=str(hp["encoder"]), image_size=int(image_size), downsample=int(downsample), levels=levels,
                       channels=[int(c) for c in hp.get("cond_channels") or []], weights=hp.get("swin_weights"),
                       norm_groups=int(hp.get("encoder_norm_groups", hp.get("norm_groups", 8))))
        return {"kind": "envgen", "backbone": BACKBONE, "image_size": int(image_size), "downsample": int(downsample),
                "unet": unet, "encoder": encoder, "latent_scale": None, "task": task_name,
                "prompt": list(PROMPTS[task_name])}

    @staticmethod
    def build(arch: dict, init_weights: bool = True) -> RadioDiffNet:  # type: ignore[override]
        """``init_weights=False`` skips the encoder's ImageNet file (a stored fit brings its weights)."""
        e = dict(arch["encoder"])
        if not init_weights:
            e["weights"] = None
        enc = build_condition_encoder(e.pop("kind"), **e)
        return RadioDiffNet(RadioDiffUNet(context_channels=tuple(enc.channels), **arch["unet"]), enc)

    # ------------------------------------------------------------ representation
    def condition(self, obs) -> torch.Tensor:
        """The prompt (B, 3, H, W); a field the observation lacks is one clear error."""
        chans = []
        for f in self.arch["prompt"]:
            v = getattr(obs, f, None)
            if v is None:
                raise CkmError(f"radiodiff was fitted on {self.arch['task']} with '{f}' in its prompt, which the "
                               f"{obs.task} observation lacks: score it on a task that provides {f}")
            chans.append(v.float())
        return torch.cat(chans, dim=1)

    def clip_bound(self, train) -> float | None:
        """``clip_x0``: null or "auto" (default): the largest |z0| (scaled) over the first 64
        train latents -- the latent's own data range, where the code's pixel-space sampler
        clips to its data range [-1, 1]; a number > 0: +-that number; 0: no clipping."""
        value = self.hparams.get("clip_x0")
        if value not in (None, "auto"):
            return float(value) or None
        _, target, _ = train.batch_at(range(min(64, len(train))))
        dev = next(self.ae.parameters()).device
        return float(self.latent(target.to(dev)).abs().max())

    # ------------------------------------------------------------ training
    def training_latent(self, u: torch.Tensor, keys, generator: torch.Generator | None) -> torch.Tensor:
        """z0 = scale x a draw from the autoencoder's posterior (the code's ``encode(x).sample()``),
        the noise from the step's ``generator``; ``latent_sample=false``: the posterior mean
        (revision 1). With ``cache_latents`` each map's posterior (mean, std) is computed once,
        alone, and kept; the draw is new at every step either way."""
        if not self.hparams.get("latent_sample", True):
            return self.latent(u, keys)
        with torch.no_grad():
            if keys is None or not self.hparams.get("cache_latents"):
                post = self.ae.posterior(u)
                mean, std = post.mean.float(), post.std.float()
            else:
                cache = self._latents
                for i, k in enumerate(keys):
                    if k not in cache:
                        post = self.ae.posterior(u[i:i + 1])
                        cache[k] = torch.stack([post.mean.float()[0], post.std.float()[0]]).cpu()
                both = torch.stack([cache[k] for k in keys]).to(u.device)
                mean, std = both[:, 0], both[:, 1]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.arch["latent_scale"]

    def loss(self, net, batch, generator) -> torch.Tensor:
        obs, target, _ = batch
        prompt = self.condition(obs)
        z0 = self.training_latent(target, obs.keys, generator)
        return self.ddm.training_loss(lambda z, t: net(z, t, prompt), z0, generator=generator)

    def fit(self, train, val, task, ctx) -> None:
        prompt_fields(task)
        if int(train.dataset.shape[0]) != int(train.dataset.shape[1]):
            raise CkmError("radiodiff: the AFT is built for square latents: use a dataset of square maps")
        ae_hp = vae_hparams(self.hparams)
        self._latents = {}  # key -> stacked posterior (mean, std) (training_latent)
        self.ae, ae_info = fitted_autoencoder(train, val, ctx, ae_hp)
        self.arch = self.architecture(task.name, int(train.dataset.shape[0]), self.ae.downsample, self.ae.z_channels)
        self.arch.update(vae=ae_hp, latent_scale=self.latent_scale(train))
        self.arch["clip_x0"] = self.clip_bound(train)
        self.net = self.build_seeded(self.arch, ctx.seed)
        cfg = TrainConfig.from_hparams(self.hparams)
        result = Trainer(self.net, cfg, ctx, name="ddm").fit(train, self.loss, self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, autoencoder=ae_info, encoder=self.encoder_variant(), prompt=self.arch["prompt"],
                   latent_scale=self.arch["latent_scale"], clip_x0=self.arch["clip_x0"], aft=self.arch["unet"]["aft"],
                   loss=self.hparams.get("loss", "l2"), backbone=BACKBONE,
                   latent_sample=bool(self.hparams.get("latent_sample", True)),
                   weights="ema" if cfg.ema_decay else "raw")

    # ------------------------------------------------------------ prediction
    def predict(self, obs, ctx) -> torch.Tensor:
        if self.net is None:
            raise CkmError("radiodiff has no weights: fit it first or pass --checkpoint of a radiodiff fit")
        self.ddm.clip = self.arch.get("clip_x0")
        u = super().predict(obs, ctx)
        if self.hparams.get("zero_buildings", True) and obs.buildings is not None:
            u = torch.where(obs.buildings.to(u.device) > 0.5, torch.zeros_like(u), u)  # the data's convention
        return u

    def sampling_steps(self) -> int:
        """Network calls per map: ``sample_steps`` (+ 1 for the split last step)."""
        return int(self.hparams.get("sample_steps", 5)) + (1 if self.ddm.split_last else 0)

    # ------------------------------------------------------------ state
    def load_state_dict(self, state: dict) -> None:
        if not state or "prompt" not in state.get("arch", {}):
            raise CkmError("checkpoint is not a radiodiff checkpoint (no arch with a prompt): pass one written by "
                           "ckmbench run -m radiodiff")
        if state["arch"].get("backbone") != BACKBONE:
            raise CkmError("checkpoint was written by radiodiff revision 1 (the SR3 cross-attention U-Net), which "
                           f"this revision ({REVISION}, the code's U-Net) cannot load: refit it with ckmbench run -m "
                           "radiodiff")
        super().load_state_dict(state)


# ------------------------------------------------------------------ profiles
# paper: S4 and its code (reference/methods.md, docs/methods/radiodiff.md): the code's U-Net
# (RadioDiffUNet) 128 / [1, 2, 4, 4], GroupNorm(8), 2 ResNet blocks per level, a relation layer per level
# (8 x 8 window tokens: windows 8, 4, 2, 1 at the 64^2 latent; 8 heads, unscaled logits, MLP dropout 0.1,
# BatchNorm in the projections), linear attention 4 x 32 per level, Fourier time features (scale 16) of
# log(t)/4, two AFT branches at the 8 x 8 bottleneck and two decoders, the code's preconditioning; Swin-B
# condition encoder (ImageNet weights from a local file when given: swin_weights); unweighted L2 (S4 eq.
# 20); AdamW 5e-5 -> 5e-6, batch 64, 50k steps; raw weights (the code's sampling config: use_ema False);
# latent scale 0.3, posterior-sampled latents; 5 sampling steps + the split last step; t_min 1e-4 (the
# code's eps). The autoencoder is RadioDiff's (the shared one) with train_vae.py's optimiser: AdamW with
# torch's defaults (betas 0.9, 0.999, weight decay 0.01) for both the autoencoder and the discriminator,
# no effective clipping (the code clips after the step). Choices the sources leave open:
# docs/methods/radiodiff.md.
RADIODIFF_PAPER = dict(
    encoder="swin-b", swin_weights=None, cond_channels=None,
    base=128, mults=[1, 2, 4, 4], norm_groups=8, attn_heads=4, attn_dim_head=32, fourier_scale=16.0,
    xattn_heads=8, xattn_tokens=8, xattn_scale=1.0, relation_dropout=0.1, relation_norm="batch", aft=True,
    t_min=1e-4, loss="l2", latent_scale=0.3, latent_sample=True, clip_x0=None, sample_steps=5, split_last=True,
    zero_buildings=True,
    steps=50_000, batch_size=64, optimizer="adamw", weight_decay=1e-4, lr=5e-5, lr_end=5e-6, lr_schedule="linear",
    grad_clip=1.0, ema_decay=None, select="last", checkpoint_every=5000,
    log_every=100, val_every=0, amp=None, cache_latents=False,
    **prefixed(dict(AE_PAPER, adam_betas=[0.9, 0.999], d_adam_betas=[0.9, 0.999], weight_decay=0.01,
                    d_weight_decay=0.01)),
)
# small (docs/methods/radiodiff.md, "Small-profile devices"): the same U-Net shrunk -- width 32 with
# [1, 2, 2] (4 x 4 bottleneck for the AFTs), linear attention 4 x 8, 4 relation heads -- on 64^2 city
# maps; the small autoencoder (shared with ckmdiff's small profile: one fit per dataset), a conv
# condition encoder, steps sized to the machine, a higher learning rate; the latent scale measured;
# latents (their posteriors) cached.
RADIODIFF_SMALL = dict(
    RADIODIFF_PAPER, encoder="conv", cond_channels=[32, 64, 64], encoder_norm_groups=8, base=32, mults=[1, 2, 2],
    attn_dim_head=8, xattn_heads=4, latent_scale="auto", steps=6000, batch_size=16, lr=2e-4, lr_end=2e-5,
    checkpoint_every=250, log_every=50, cache_latents=True,
    **prefixed(AE_SMALL),
)
RADIODIFF_TINY = dict(
    RADIODIFF_SMALL, cond_channels=[8, 16], encoder_norm_groups=4, base=8, mults=[1, 2], norm_groups=4,
    attn_heads=2, attn_dim_head=4, xattn_heads=2, steps=6, batch_size=4, lr=1e-3, lr_end=1e-4, checkpoint_every=3,
    log_every=3, sample_steps=2,
    **prefixed(AE_TINY),
)
