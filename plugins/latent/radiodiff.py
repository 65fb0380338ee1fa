"""RadioDiff (Wang et al., S4, and its public code): decoupled diffusion in the latent of the
shared KL autoencoder, conditioned on a prompt of the environment (docs/methods/radiodiff.md).

Pipeline:

1. the dataset's KL autoencoder (:func:`ckmbench.latent.fitted_autoencoder`, shared with
   every latent method), frozen; z0 = scale x its posterior mean;
2. the prompt: [buildings, Tx, buildings] (``envgen-static``, the code's static prompt) or
   [buildings, cars, Tx] (``envgen-dynamic``, S4's prompt C) -> condition encoder (Swin-B at
   ``paper``, a conv encoder at ``small``/``tiny``) -> one feature map per U-Net level;
3. a :class:`ckmbench.latent.attention.CrossAttnUNet`: windowed cross-attention to the
   prompt's features at every encoder and decoder level, the level-0 features concatenated
   to the input, the adaptive Fourier filter (AFT, S4 eqs. 22-23) at the bottleneck, two
   heads F1, F2 with the code's output preconditioning (:func:`precondition`);
4. decoupled diffusion (S4 eqs. 13-20): the paper's unweighted L2 loss (``loss=code``: the
   code's weighted L1 + L2), and the code's sampler (5 steps + a final step at t_min, c
   re-derived from the clipped x0 estimate); decode.

Everything else -- latents (cached per map), the latent scale, validation, prediction, state
and parameter counts -- is CKMDiff's (:class:`RadioDiff` subclasses it).
"""

from __future__ import annotations

import torch
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.latent import DecoupledDiffusion, build_condition_encoder, fitted_autoencoder, vae_hparams
from ckmbench.latent.attention import CrossAttnUNet
from ckmbench.latent.autoencoder import AE_PAPER, AE_SMALL, AE_TINY, prefixed
from ckmbench.training import Trainer, TrainConfig

from .ckmdiff import CKMDiff

TASKS = ("envgen-static", "envgen-dynamic")

# The prompt of each task, in channel order (the fit key holds the task, so a fit keeps its prompt).
PROMPTS = {"envgen-static": ("buildings", "tx_map", "buildings"), "envgen-dynamic": ("buildings", "cars", "tx_map")}
# ``loss`` of the profile -> DecoupledDiffusion's loss
LOSSES = {"l2": "l2", "code": "radiodiff"}


def precondition(z: torch.Tensor, t: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor):
    """RadioDiff's code: c_hat = (1 - t) z_t + t / sqrt(t^2 + 1) F1,
    eps_hat = sqrt(t) z_t + sqrt(1 - t) / sqrt(t^2 + 1) F2 (t broadcast per sample)."""
    tb = t.to(z.dtype).reshape(-1, *([1] * (z.dim() - 1)))
    norm = (tb ** 2 + 1.0).sqrt()
    return (1.0 - tb) * z + tb / norm * f1, tb.sqrt() * z + (1.0 - tb).clamp_min(0.0).sqrt() / norm * f2


class RadioDiffNet(nn.Module):
    """The trained part: condition encoder + cross-attention U-Net, preconditioned outputs."""

    def __init__(self, unet: CrossAttnUNet, encoder: nn.Module):
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
        """CKMDiff's U-Net and encoder settings, plus the prompt, cross-attention and AFT."""
        hp = self.hparams
        arch = super().architecture("envgen", image_size, downsample, z_channels)
        levels, side = len(arch["unet"]["mults"]), int(image_size) // int(downsample)
        tokens = int(hp.get("xattn_tokens", 8))
        windows = [max(1, (side >> lvl) // tokens) for lvl in range(levels)]
        arch["unet"].update(xattn_heads=int(hp.get("xattn_heads", 8)), xattn_windows=windows,
                            xattn_queries=str(hp.get("xattn_queries", "context")),
                            xattn_scale=hp.get("xattn_scale") or None,  # 0/null: the usual 1/sqrt(head dim)
                            xattn_ffn_mult=int(hp.get("xattn_ffn_mult", 2)),
                            input_context=bool(hp.get("input_context", True)), aft=bool(hp.get("aft", True)))
        arch.update(kind="envgen", task=task_name, prompt=list(PROMPTS[task_name]))
        return arch

    @staticmethod
    def build(arch: dict, init_weights: bool = True) -> RadioDiffNet:  # type: ignore[override]
        """``init_weights=False`` skips the encoder's ImageNet file (a stored fit brings its weights)."""
        e = dict(arch["encoder"])
        if not init_weights:
            e["weights"] = None
        enc = build_condition_encoder(e.pop("kind"), **e)
        return RadioDiffNet(CrossAttnUNet(context_channels=tuple(enc.channels), **arch["unet"]), enc)

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
    def fit(self, train, val, task, ctx) -> None:
        prompt_fields(task)
        if int(train.dataset.shape[0]) != int(train.dataset.shape[1]):
            raise CkmError("radiodiff: the AFT is built for square latents: use a dataset of square maps")
        ae_hp = vae_hparams(self.hparams)
        self._latents = {}
        self.ae, ae_info = fitted_autoencoder(train, val, ctx, ae_hp)
        self.arch = self.architecture(task.name, int(train.dataset.shape[0]), self.ae.downsample, self.ae.z_channels)
        self.arch.update(vae=ae_hp, latent_scale=self.latent_scale(train))
        self.arch["clip_x0"] = self.clip_bound(train)
        self.net = self.build_seeded(self.arch, ctx.seed)
        cfg = TrainConfig.from_hparams(self.hparams)
        result = Trainer(self.net, cfg, ctx, name="ddm").fit(train, self.loss, self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, autoencoder=ae_info, encoder=self.encoder_variant(), prompt=self.arch["prompt"],
                   latent_scale=self.arch["latent_scale"], clip_x0=self.arch["clip_x0"], aft=self.arch["unet"]["aft"],
                   loss=self.hparams.get("loss", "l2"))

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
        super().load_state_dict(state)


# ------------------------------------------------------------------ profiles
# paper: S4 and its code (reference/methods.md): U-Net 128 / [1, 2, 4, 4], 2 blocks, Swin-B condition
# encoder (ImageNet weights from a local file when given: swin_weights), windowed cross-attention at
# every level (8 x 8 window tokens per level: windows 8, 4, 2, 1 at the 64^2 latent; 8 heads, unscaled
# logits, queries from the prompt, as the code), the level-0 prompt features concatenated at the input,
# AFT at the 8 x 8 bottleneck, the code's preconditioning; unweighted L2 (S4 eq. 20); AdamW 5e-5 ->
# 5e-6, batch 64, 50k steps, EMA 0.9999 after 10k; latent scale 0.3; 5 sampling steps + the split last
# step; t_min 1e-4 (the code's eps); RadioDiff's autoencoder (the shared one). Choices the sources leave
# open: docs/methods/radiodiff.md.
RADIODIFF_PAPER = dict(
    encoder="swin-b", swin_weights=None, cond_channels=None,
    base=128, mults=[1, 2, 4, 4], num_res_blocks=2, dropout=0.0, attn_resolutions=[], norm_groups=32,
    xattn_heads=8, xattn_tokens=8, xattn_queries="context", xattn_scale=1.0, xattn_ffn_mult=2,
    input_context=True, aft=True,
    t_min=1e-4, loss="l2", latent_scale=0.3, clip_x0=None, sample_steps=5, split_last=True, zero_buildings=True,
    steps=50_000, batch_size=64, optimizer="adamw", weight_decay=1e-4, lr=5e-5, lr_end=5e-6, lr_schedule="linear",
    grad_clip=1.0,
    ema_decay=0.9999, ema_start=10_000, fresh_degradations=False, select="last", checkpoint_every=5000,
    log_every=100, val_every=0, amp=None, cache_latents=False,
    **prefixed(AE_PAPER),
)
# small (docs/methods/radiodiff.md, "Small-profile devices"): 64^2 city maps, the small autoencoder
# (shared with ckmdiff's small profile: one fit per dataset), a conv condition encoder, width 32 with
# [1, 2, 2] and one block per level (4 x 4 bottleneck for the AFT), 4 heads, steps sized to the machine,
# a higher learning rate and a faster EMA; the latent scale measured; latents cached.
RADIODIFF_SMALL = dict(
    RADIODIFF_PAPER, encoder="conv", cond_channels=[32, 64, 64], base=32, mults=[1, 2, 2], num_res_blocks=1,
    norm_groups=8, xattn_heads=4, latent_scale="auto", steps=6000, batch_size=16, lr=2e-4, lr_end=2e-5,
    ema_decay=0.999, ema_start=150, checkpoint_every=250, log_every=50, cache_latents=True,
    **prefixed(AE_SMALL),
)
RADIODIFF_TINY = dict(
    RADIODIFF_SMALL, cond_channels=[8, 16], base=8, mults=[1, 2], norm_groups=4, xattn_heads=2, steps=6,
    batch_size=4, lr=1e-3, lr_end=1e-4, ema_decay=0.9, ema_start=0, checkpoint_every=3, log_every=3, sample_steps=2,
    **prefixed(AE_TINY),
)
