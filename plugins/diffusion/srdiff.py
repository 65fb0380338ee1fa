"""Conditional DDPM super-resolution of radio maps: CGDM (Jin et al., S2) and CDiff/EnvCDiff (S0).

The network is CGDM's SR3-style U-Net (:class:`ckmbench.diffusion.SR3UNet`); its input is
the noisy map concatenated with the low-resolution measurements upsampled to the target
size (aligned Keys bicubic on the task's sample grid). ε-prediction, linear β 1e-6 → 1e-2,
T = 1000, Adam 5e-5, batch 16, EMA 0.9999 from step 5,000, last checkpoint (S2 §V-A).
EnvCDiff runs the same model on the EnvCF map max(u, buildings, Tx) (tasks ``sr*-envcf``);
S0 gives neither architecture nor T, so CGDM's (same authors) are used (docs/methods/).

``small``-profile devices (documented in docs/methods/pixel-diffusion.md; never in
``paper``): a smaller U-Net, random crops for training, the residual over bicubic as the
diffused variable, and DDIM sampling with few steps.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ckmbench.diffusion import GaussianDiffusion, SR3UNet, make_betas
from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.method import Method
from ckmbench.tasks.operators import lr_offset
from ckmbench.training import Trainer, TrainConfig, autocast
from ckmbench.upsample import upsample_grid
from ckmbench_plugins.baselines.problem import lr_mode_of

# Keys of the profiles that only change prediction, so a new sampler setting reuses the fit.
PREDICT_HPARAMS = ("sampler", "sample_steps", "eta", "predict_batch")
ARCH_KEYS = ("base", "mults", "num_res_blocks", "dropout", "dropout_placement", "attn_resolutions", "norm_groups",
             "image_channels")


class SRDiffusion(Method):
    """CGDM-style conditional DDPM for the ``sr*`` tasks (and ``sr*-envcf``/``-noisy``/zero-shot)."""

    name = "cgdm"
    predict_hparams = PREDICT_HPARAMS

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        hp = self.hparams
        self.residual = bool(hp.get("residual", False))
        self.residual_scale = float(hp.get("residual_scale", 1.0))
        self.channels = int(hp.get("image_channels", 1))
        self.crop = hp.get("crop")
        if hp.get("sampler", "ddim") not in ("ddim", "ancestral"):
            raise CkmError(f"method {self.name}: sampler must be ddim or ancestral, got {hp.get('sampler')!r}")
        self.diffusion = GaussianDiffusion(
            make_betas(hp.get("schedule", "linear"), int(hp["T"]), float(hp["beta_start"]), float(hp["beta_end"])),
            prediction=hp.get("prediction", "eps"))
        self.net = self.build_net()

    def build_net(self) -> SR3UNet:
        hp = self.hparams
        return SR3UNet(in_channels=2 * self.channels, out_channels=self.channels, base=int(hp["base"]),
                       mults=tuple(hp["mults"]), num_res_blocks=int(hp["num_res_blocks"]),
                       dropout=float(hp["dropout"]), attn_resolutions=tuple(hp.get("attn_resolutions", ())),
                       norm_groups=int(hp.get("norm_groups", 32)), image_size=int(hp.get("image_size", 64)),
                       dropout_placement=hp.get("dropout_placement", "second"))

    # ------------------------------------------------------------ representation
    def upsampled(self, obs) -> torch.Tensor:
        """The measurements on the target grid (B, 1, H, W), float32 on the observation's device."""
        if obs.y is None or obs.factor is None:
            raise CkmError(f"method {self.name} needs a super-resolution task (sr*, zeroshot-sr*); got {obs.task}")
        return upsample_on_device(obs.y, tuple(obs.out_shape), int(obs.factor), lr_mode_of(obs))

    def encode(self, u: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Map in [0, 1] -> the diffused variable: 2u − 1 (paper), or the scaled residual over bicubic."""
        x = (u - up) * self.residual_scale if self.residual else 2.0 * u - 1.0
        return x.repeat(1, self.channels, 1, 1)

    def decode(self, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = x.float().mean(dim=1, keepdim=True)
        u = up + x / self.residual_scale if self.residual else (x + 1.0) / 2.0
        return u.clamp(0.0, 1.0)

    def condition(self, up: torch.Tensor) -> torch.Tensor:
        return (2.0 * up - 1.0).repeat(1, self.channels, 1, 1)

    def clip_range(self, up: torch.Tensor):
        """The valid range of x̂0 while sampling: [−1, 1] for 2u − 1 (as SR3/DDPM clip); for the
        residual, the per-pixel range that keeps bicubic + residual inside [0, 1]."""
        if not self.residual:
            return (-1.0, 1.0)
        s = self.residual_scale
        return (-s * up).repeat(1, self.channels, 1, 1), (s * (1.0 - up)).repeat(1, self.channels, 1, 1)

    # ------------------------------------------------------------ training
    def model_fn(self, net, cond: torch.Tensor):
        return lambda xt, t: net(torch.cat([xt, cond.to(xt.dtype)], dim=1), t)

    def training_pair(self, batch, generator: torch.Generator | None):
        """(x0, condition) of a batch, randomly cropped to ``crop`` pixels when the profile asks."""
        obs, target, _ = batch
        up = self.upsampled(obs)
        x0, cond = self.encode(target, up), self.condition(up)
        if self.crop and generator is not None and int(self.crop) < x0.shape[-1]:
            c = int(self.crop)
            H, W = x0.shape[-2:]
            # host-side draw from the step's seed: no device sync for the crop offsets
            host = torch.Generator().manual_seed(generator.initial_seed())
            r, q = (int(v) for v in torch.randint(0, min(H, W) - c + 1, (2,), generator=host))
            x0, cond = x0[..., r:r + c, q:q + c], cond[..., r:r + c, q:q + c]
        return x0, cond

    def loss(self, net, batch, generator) -> torch.Tensor:
        x0, cond = self.training_pair(batch, generator)
        return self.diffusion.training_loss(self.model_fn(net, cond), x0, generator=generator)

    def validation_fn(self, val, batch_size: int):
        """Mean diffusion loss on a fixed slice of the val split with fixed noise (cheap, seeded)."""
        if len(val) == 0:
            return None
        idx = list(range(min(len(val), 2 * batch_size)))

        def value(model) -> float:
            gen = torch.Generator(device=self.device_of(model)).manual_seed(1234)
            losses = []
            for start in range(0, len(idx), batch_size):
                obs, target, regions = val.batch_at(idx[start:start + batch_size])
                dev = self.device_of(model)
                batch = (obs.to(dev), target.to(dev), regions)
                x0, cond = self.training_pair(batch, None)
                losses.append(float(self.diffusion.training_loss(self.model_fn(model, cond), x0, generator=gen)))
            return sum(losses) / len(losses)

        return value

    @staticmethod
    def device_of(model) -> torch.device:
        return next(model.parameters()).device

    def fit(self, train, val, task, ctx) -> None:
        check_sr(self.name, task)
        cfg = TrainConfig.from_hparams(self.hparams)
        self.net = seeded_build(self.build_net, ctx.seed)
        trainer = Trainer(self.net, cfg, ctx, name="unet")
        result = trainer.fit(train, self.loss, self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, variant=self.variant())

    def variant(self) -> str:
        return ("residual-over-bicubic" if self.residual else "direct") + (f", crop {self.crop}" if self.crop else "")

    # ------------------------------------------------------------ prediction
    def sample(self, net, cond: torch.Tensor, generator: torch.Generator, amp: str | None = None,
               clip=None) -> torch.Tensor:
        hp = self.hparams
        shape = (cond.shape[0], self.channels, *cond.shape[-2:])
        fn = self.model_fn(net, cond)
        with autocast(cond.device, amp):
            if hp.get("sampler", "ddim") == "ancestral":
                return self.diffusion.sample(fn, shape, generator=generator, clip_x0=clip,
                                             device=cond.device)
            return self.diffusion.ddim_sample(fn, shape, int(hp["sample_steps"]), eta=float(hp.get("eta", 0.0)),
                                              generator=generator, clip_x0=clip, device=cond.device)

    def predict(self, obs, ctx) -> torch.Tensor:
        self.net.to(obs.y.device).eval()
        up = self.upsampled(obs)
        cond, pad = pad_to_multiple(self.condition(up), self.net.min_size)
        clip = self.clip_range(pad_to_multiple(up, self.net.min_size)[0])
        gen = torch.Generator(device=cond.device).manual_seed(batch_seed(obs.keys, ctx.seed))
        x = self.sample(self.net, cond, gen, getattr(ctx, "amp", None), clip)
        x = x[..., :up.shape[-2], :up.shape[-1]] if pad else x
        return self.decode(x, up)

    def sampling_steps(self) -> int:
        hp = self.hparams
        return int(hp["T"]) if hp.get("sampler", "ddim") == "ancestral" else int(hp["sample_steps"])

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "net" not in state:
            raise CkmError(f"checkpoint is not a {self.name} checkpoint (no 'net' weights): pass one written by "
                           f"ckmbench run -m {self.name}")
        self.net.load_state_dict(state["net"])


_UPSAMPLERS: dict = {}


def _axis_matrix(n_lr: int, n_hr: int, factor: int, offset: float) -> torch.Tensor:
    """(n_hr, n_lr) matrix of the aligned bicubic grid interpolation along one axis."""
    basis = torch.eye(n_lr, dtype=torch.float64).reshape(n_lr, 1, n_lr, 1)
    out = upsample_grid(basis, (n_hr, 1), factor, offset, mode="bicubic", edge="edge")
    return out[:, 0, :, 0].T.contiguous()


def upsample_on_device(y: torch.Tensor, out_shape: tuple[int, int], factor: int, lr_mode: str) -> torch.Tensor:
    """The bicubic baseline's aligned upsampling as two matrix products on ``y``'s device.

    Same values as ``ckmbench.upsample.upsample_grid`` (Keys a = -0.5, edge
    replication), but no host round trip, so it runs inside a CUDA training loop.
    """
    h, w = y.shape[-2:]
    offset = lr_offset(factor, lr_mode)
    key = (h, w, tuple(out_shape), factor, offset, str(y.device))
    if key not in _UPSAMPLERS:
        rows = _axis_matrix(h, out_shape[0], factor, offset).float().to(y.device)
        cols = _axis_matrix(w, out_shape[1], factor, offset).float().to(y.device)
        _UPSAMPLERS[key] = (rows, cols)
    rows, cols = _UPSAMPLERS[key]
    return rows @ y.float() @ cols.T


def seeded_build(build, seed: int):
    """Build a network with its initial weights drawn from ``seed`` alone (not the global RNG's history)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def check_sr(name: str, task) -> None:
    if getattr(task, "kind", None) != "sr":
        raise CkmError(f"method {name} trains on super-resolution tasks only; got {task.name}")


def pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, bool]:
    """Replicate-pad the bottom/right so both sides divide by ``m`` (the U-Net's downsampling)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % m, (-W) % m
    if not (ph or pw):
        return x, False
    return F.pad(x, (0, pw, 0, ph), mode="replicate"), True


def batch_seed(keys, seed: int) -> int:
    """Sampling noise seeded by the maps in the batch and the run seed: re-scoring is repeatable."""
    text = f"{int(seed)}|" + "|".join(keys)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)
