"""CKMDiff (Fu et al., S1): conditional decoupled diffusion in the latent of a KL autoencoder.

Pipeline (docs/methods/ckmdiff.md):

1. the dataset's KL autoencoder (:func:`ckmbench.latent.fitted_autoencoder`, one fit per
   dataset and profile, shared with every latent method and task), frozen;
2. the condition: feature emphasis [observed map, buildings, Canny edges] (S1 §IV-E) ->
   condition encoder (Swin-B at ``paper``, a conv encoder at ``tiny``/``small``) -> one
   feature map per U-Net level, concatenated at the decoder levels;
3. decoupled diffusion on z0 = scale x encode(u) with a two-head U-Net (c and eps), the
   unweighted L2 loss of S1 eq. 22, a new degradation of every training map each step
   (S1 Alg. 1 line 5: the trainer's ``fresh_degradations``), and S1 Alg. 2's sampler;
4. decode the sampled latent to the map.

One model per (task, dataset): the fit key holds the task. ``generate`` is unconditional
(no encoder; the U-Net has no condition channels). The U-Net and the training length
follow S1 Table I for inpainting (also used for ``denoise`` and ``generate``, which S1's
tables do not list) and Table II for super-resolution (the ``sr_`` keys of the profile).
"""

from __future__ import annotations

import torch
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.latent import DecoupledDiffusion, KLAutoencoder, TwoHeadUNet, build_condition_encoder, \
    fitted_autoencoder, vae_hparams
from ckmbench.method import Method
from ckmbench.training import Trainer, TrainConfig, autocast
from ckmbench_plugins.diffusion.srdiff import batch_seed

from .emphasis import CONDITIONED_KINDS, feature_emphasis

PREDICT_HPARAMS = ("sample_steps",)
KINDS = CONDITIONED_KINDS + ("generate",)
# keys that S1 Table II sets differently for super-resolution: ``sr_<key>`` overrides ``<key>``
SR_KEYS = ("base", "mults", "num_res_blocks", "cond_channels", "batch_size", "steps", "lr", "lr_end")


def task_hparams(hp: dict, kind: str) -> dict:
    """The profile as it applies to a task kind (super-resolution takes the ``sr_`` keys)."""
    out = dict(hp)
    if kind == "sr":
        out.update({k: hp[f"sr_{k}"] for k in SR_KEYS if f"sr_{k}" in hp})
    return out


class CKMDiffNet(nn.Module):
    """The trained part: condition encoder (None for ``generate``) + two-head U-Net."""

    def __init__(self, unet: TwoHeadUNet, encoder: nn.Module | None):
        super().__init__()
        self.unet = unet
        self.encoder = encoder

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        feats = self.encoder(cond) if self.encoder is not None else None
        return self.unet(z, t, feats)


class CKMDiff(Method):
    name = "ckmdiff"
    predict_hparams = PREDICT_HPARAMS
    weight_files = {"swin_weights": None}  # the fit key holds the ImageNet Swin file's digest

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        hp = self.hparams
        self.ddm = DecoupledDiffusion(float(hp.get("t_min", 1e-4)), hp.get("loss", "l2"))
        self.net: CKMDiffNet | None = None
        self.ae: KLAutoencoder | None = None
        self.arch: dict | None = None
        self._latents: dict[str, torch.Tensor] = {}  # key of a map -> its unscaled latent (cache_latents)

    # ------------------------------------------------------------ building
    def architecture(self, kind: str, image_size: int, downsample: int, z_channels: int) -> dict:
        hp = task_hparams(self.hparams, kind)
        levels = len(hp["mults"])
        arch = {
            "kind": kind, "image_size": int(image_size), "downsample": int(downsample),
            "unet": dict(z_channels=int(z_channels), base=int(hp["base"]), mults=[int(m) for m in hp["mults"]],
                         num_res_blocks=int(hp["num_res_blocks"]), dropout=float(hp.get("dropout", 0.0)),
                         attn_resolutions=[int(a) for a in hp.get("attn_resolutions", [])],
                         norm_groups=int(hp.get("norm_groups", 32)), image_size=int(image_size) // int(downsample)),
            "encoder": None, "latent_scale": None,
        }
        if kind != "generate":
            arch["encoder"] = dict(kind=str(hp["encoder"]), image_size=int(image_size), downsample=int(downsample),
                                   levels=levels, channels=[int(c) for c in hp.get("cond_channels") or []],
                                   weights=hp.get("swin_weights"), norm_groups=int(hp.get("norm_groups", 32)))
        return arch

    @staticmethod
    def build(arch: dict, init_weights: bool = True) -> CKMDiffNet:
        """The network of ``arch``; ``init_weights=False`` skips the encoder's ImageNet file
        (a stored fit brings its own weights, and the file need not exist where it is scored)."""
        enc = None
        if arch["encoder"] is not None:
            e = dict(arch["encoder"])
            if not init_weights:
                e["weights"] = None
            enc = build_condition_encoder(e.pop("kind"), **e)
        cond = tuple(enc.channels) if enc is not None else ()
        return CKMDiffNet(TwoHeadUNet(cond_channels=cond, **arch["unet"]), enc)

    def build_seeded(self, arch: dict, seed: int) -> CKMDiffNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.build(arch)

    # ------------------------------------------------------------ representation
    def condition(self, obs) -> torch.Tensor | None:
        if self.arch["kind"] == "generate":
            return None
        hp = self.hparams
        return feature_emphasis(obs, float(hp.get("building_threshold", 0.08)), float(hp.get("canny_sigma", 1.0)))

    def latent(self, u: torch.Tensor, keys=None) -> torch.Tensor:
        """z0 = scale x posterior mean. With ``cache_latents`` (and the maps' keys) each map is
        encoded once, alone (so its latent does not depend on the batch it came in), and kept:
        the target never changes, only the degradation does, so this saves the frozen encoder's
        pass at every step without changing what is trained."""
        scale = self.arch["latent_scale"]
        with torch.no_grad():
            if keys is None or not self.hparams.get("cache_latents"):
                return self.ae.encode(u).float() * scale
            cache = self._latents
            for i, k in enumerate(keys):
                if k not in cache:
                    cache[k] = self.ae.encode(u[i:i + 1]).float()[0].cpu()
            return torch.stack([cache[k] for k in keys]).to(u.device) * scale

    def latent_scale(self, train) -> float:
        """The profile's number (RadioDiff's 0.3), or "auto": 1 / std of the first 64 train latents."""
        value = self.hparams.get("latent_scale", 0.3)
        if value != "auto":
            return float(value)
        dev = next(self.ae.parameters()).device
        _, target, _ = train.batch_at(range(min(64, len(train))))
        with torch.no_grad():
            std = float(self.ae.encode(target.to(dev)).float().std())
        return 1.0 / max(std, 1e-6)

    # ------------------------------------------------------------ training
    def loss(self, net, batch, generator) -> torch.Tensor:
        obs, target, _ = batch
        cond = self.condition(obs)
        z0 = self.latent(target, obs.keys)
        return self.ddm.training_loss(lambda z, t: net(z, t, cond), z0, generator=generator)

    def validation_fn(self, val, batch_size: int):
        """Mean DDM loss on a fixed slice of the val split with fixed t and noise."""
        if val is None or len(val) == 0:
            return None
        idx = list(range(min(len(val), 2 * batch_size)))

        def value(model) -> float:
            dev = next(model.parameters()).device
            gen = torch.Generator(device=dev).manual_seed(1234)
            out = []
            for s in range(0, len(idx), batch_size):
                obs, target, regions = val.batch_at(idx[s:s + batch_size])
                out.append(float(self.loss(model, (obs.to(dev), target.to(dev), regions), gen)))
            return sum(out) / len(out)

        return value

    def fit(self, train, val, task, ctx) -> None:
        kind = getattr(task, "kind", None)
        if kind not in KINDS or (kind == "sr" and not getattr(task, "noisy", False)):
            raise CkmError(f"method ckmdiff trains on inpaint, denoise, sr*-noisy and generate; got {task.name}")
        ae_hp = vae_hparams(self.hparams)
        self._latents = {}
        self.ae, ae_info = fitted_autoencoder(train, val, ctx, ae_hp)
        H = int(train.dataset.shape[0])
        self.arch = self.architecture(kind, H, self.ae.downsample, self.ae.z_channels)
        self.arch["vae"] = ae_hp
        self.arch["latent_scale"] = self.latent_scale(train)
        self.net = self.build_seeded(self.arch, ctx.seed)
        hp = task_hparams(self.hparams, kind)
        cfg = TrainConfig.from_hparams(hp)
        trainer = Trainer(self.net, cfg, ctx, name="ddm")
        result = trainer.fit(train, self.loss, self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, autoencoder=ae_info, encoder=self.encoder_variant(),
                   latent_scale=self.arch["latent_scale"], loss=self.ddm.loss_kind)

    def encoder_variant(self) -> str:
        enc = self.net.encoder if self.net is not None else None
        return enc.describe() if enc is not None else "none (unconditional)"

    # ------------------------------------------------------------ prediction
    def predict(self, obs, ctx) -> torch.Tensor:
        if self.net is None:
            raise CkmError("ckmdiff has no weights: fit it first or pass --checkpoint of a ckmdiff fit")
        dev = obs.y.device if obs.y is not None else ctx.device
        self.net.to(dev).eval()
        self.ae.to(dev).eval()
        H, W = (int(s) for s in obs.out_shape)
        f = self.arch["downsample"]
        if H % f or W % f:
            raise CkmError(f"ckmdiff: map size {(H, W)} must divide by the autoencoder's {f}: use such a dataset")
        cond = self.condition(obs)
        shape = (len(obs), self.arch["unet"]["z_channels"], H // f, W // f)
        gen = torch.Generator(device=dev).manual_seed(batch_seed(obs.keys, ctx.seed))
        with torch.no_grad(), autocast(torch.device(dev), getattr(ctx, "amp", None)):
            z = self.ddm.sample(lambda z, t: self.net(z, t, cond), shape, self.sampling_steps(), generator=gen,
                                device=dev)
            u = self.ae.decode(z.float() / self.arch["latent_scale"])
        return u.float().clamp(0.0, 1.0)

    def sampling_steps(self) -> int:
        return int(self.hparams.get("sample_steps", 50))

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        if self.net is None:
            return {}
        return {"arch": self.arch, "net": self.net.state_dict(), "vae": self.ae.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state or "arch" not in state or "net" not in state or "vae" not in state:
            raise CkmError("checkpoint is not a ckmdiff checkpoint (no arch/net/vae): pass one written by "
                           "ckmbench run -m ckmdiff")
        arch = state["arch"]
        self.arch = arch
        self.net = self.build(arch, init_weights=False)
        self.net.load_state_dict(state["net"])
        self.ae = KLAutoencoder(arch["vae"])
        self.ae.load_state_dict(state["vae"])
        for p in self.ae.parameters():
            p.requires_grad_(False)
        self.ae.eval()

    def num_parameters(self) -> int:
        """Trainable: the condition encoder and the U-Net (the autoencoder is frozen)."""
        return sum(p.numel() for p in self.net.parameters()) if self.net is not None else 0

    def inference_parameters(self) -> int:
        """Everything used to predict: encoder + U-Net + the autoencoder's decoder (S3's way)."""
        dec = sum(p.numel() for n, p in self.ae.vae.named_parameters() if n.startswith(("decoder.", "post_quant")))
        return self.num_parameters() + dec
