"""What every learned baseline of this package shares: build at fit time, train on the shared
trainer, store the weights with what the network was built for, predict in [0, 1].

A network's shape depends on the train task (the ×s of SRResNet's sub-pixel stages, the
input fields of the cGAN), so it is built in ``fit`` from the task (``configure``) and
rebuilt in ``load_state_dict`` from the stored ``meta``; a zero-shot run loads the ``sr4``
fit and so gets the ×4 network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.method import Method
from ckmbench.training import Trainer, TrainConfig, step_seed
from ckmbench_plugins.baselines.problem import lr_mode_of
from ckmbench_plugins.diffusion.srdiff import check_sr, seeded_build, upsample_on_device

class LearnedBaseline(Method):
    """Skeleton of a learned baseline: subclasses give ``configure``, ``build_net``, ``forward``
    (observation -> map in [0, 1], the network's prediction) and ``step`` (the trainer's loss
    function or ``AdversarialStep``)."""

    predict_hparams = ()  # every profile key changes the fit (prediction is one forward pass)
    trainer_name = "net"

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        self.meta: dict = {}
        self.net: nn.Module | None = None

    # ------------------------------------------------------------ subclass hooks
    def configure(self, task) -> dict:
        """What the network is built for, from the train task (stored with the weights)."""
        raise NotImplementedError

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, net: nn.Module, obs) -> torch.Tensor:
        """(B, 1, H, W) prediction of ``net`` for ``obs`` (not yet clamped)."""
        raise NotImplementedError

    def step(self, ctx):
        raise NotImplementedError

    def make_trainer(self, cfg: TrainConfig, ctx) -> Trainer:
        return Trainer(self.net, cfg, ctx, name=self.trainer_name)

    def gan_trainer(self, cfg: TrainConfig, ctx, build_discriminator) -> Trainer:
        """The shared trainer with a discriminator (initial weights from the run seed alone; a
        training device: neither stored in the fit nor counted in the record's params), set by
        the profile's ``d_`` keys."""
        disc = seeded_build(build_discriminator, step_seed(ctx.seed, 0, 0, "discriminator"))
        return Trainer(self.net, cfg, ctx, name=self.trainer_name, discriminator=disc,
                       d_cfg=TrainConfig.from_hparams(self.hparams, prefix="d_"))

    def prepare(self, ctx) -> None:
        """Before training: e.g. start from another method's fit (SRGAN from SRResNet)."""

    def variant(self) -> str:
        return "as the paper"

    # ------------------------------------------------------------ fit / predict
    def fit(self, train, val, task, ctx) -> None:
        self.meta = self.configure(task)
        self.net = seeded_build(self.build_net, ctx.seed)
        self.prepare(ctx)
        cfg = TrainConfig.from_hparams(self.hparams)
        trainer = self.make_trainer(cfg, ctx)
        result = trainer.fit(train, self.step(ctx), self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, variant=self.variant())

    def validation_fn(self, val, batch_size: int):
        """MSE of the prediction on a fixed slice of the val split (lower is better)."""
        if len(val) == 0:
            return None
        idx = list(range(min(len(val), 2 * batch_size)))

        def value(model) -> float:
            dev = next(model.parameters()).device
            errs = []
            for start in range(0, len(idx), batch_size):
                obs, target, _ = val.batch_at(idx[start:start + batch_size])
                pred = self.forward(model, obs.to(dev)).clamp(0.0, 1.0)
                errs.append(float(((pred - target.to(dev)) ** 2).mean()))
            return sum(errs) / len(errs)

        return value

    def predict(self, obs, ctx) -> torch.Tensor:
        if self.net is None:
            raise CkmError(f"method {self.name} has no trained network: fit it first (ckmbench run -m {self.name})")
        self.net.to(device_of_obs(obs)).eval()
        with torch.no_grad():
            return self.forward(self.net, obs).float().clamp(0.0, 1.0)

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict() if self.net is not None else {}, "meta": dict(self.meta)}

    def load_state_dict(self, state: dict) -> None:
        if "net" not in state or "meta" not in state:
            raise CkmError(f"checkpoint is not a {self.name} checkpoint (no 'net'/'meta'): pass one written by "
                           f"ckmbench run -m {self.name}")
        self.meta = dict(state["meta"])
        self.net = self.build_net()
        self.net.load_state_dict(state["net"])


def device_of_obs(obs) -> torch.device:
    for v in (obs.y, obs.buildings, obs.tx_map, obs.mask):
        if v is not None:
            return v.device
    return torch.device("cpu")


# ------------------------------------------------------------ super-resolution
class SRBaseline(LearnedBaseline):
    """A baseline of the ``sr*`` family: trained on one factor (stored as ``meta["factor"]``),
    on ``image_channels`` copies of the map (the papers' RGB or luminance images)."""

    def configure(self, task) -> dict:
        check_sr(self.name, task)
        return {"factor": int(task.factor)}

    @property
    def channels(self) -> int:
        return int(self.hparams.get("image_channels", 1))

    def variant(self) -> str:
        crop = self.hparams.get("crop")
        return f"trained at x{self.meta['factor']}" + (f", {crop}^2 crops" if crop else "")


def upsampled(name: str, obs) -> torch.Tensor:
    """The measurements on the target grid (aligned Keys bicubic, as the bicubic baseline)."""
    if obs.y is None or obs.factor is None:
        raise CkmError(f"method {name} needs a super-resolution task (sr*, zeroshot-sr*); got {obs.task}")
    return upsample_on_device(obs.y, tuple(obs.out_shape), int(obs.factor), lr_mode_of(obs))


def degrade(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """The tasks' low-res operator on a tensor: every ``factor``-th pixel, or f×f block means."""
    if mode == "subsample":
        return x[..., ::factor, ::factor]
    return F.avg_pool2d(x, factor, ceil_mode=True)


def crop_offsets(shape, crop: int | None, align: int, generator: torch.Generator | None):
    """Top-left (r, q) of a ``crop``-pixel square, multiples of ``align`` (so a low-res grid of
    that factor stays aligned), drawn on the host from the step's seed; None: no crop."""
    H, W = shape[-2:]
    if not crop or generator is None or crop >= min(H, W):
        return None
    c = max(align, int(crop) // align * align)
    host = torch.Generator().manual_seed(generator.initial_seed())
    r, q = (int(v) * align for v in torch.randint(0, (min(H, W) - c) // align + 1, (2,), generator=host))
    return r, q, c


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A one-channel map repeated to ``channels`` (the papers' 3-channel images)."""
    return x.float().repeat(1, channels, 1, 1) if channels != x.shape[1] else x.float()


def from_channels(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=1, keepdim=True)


def bce_logits(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The vanilla GAN loss (−log D or −log(1 − D)) on logits."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def start_from(method, ctx, source: str, keys: tuple[str, ...]) -> None:
    """Copy the generator of ``source``'s fit (same train task, data, profile, seed) into
    ``method.net``; the architecture keys of both profiles must agree."""
    if ctx.fit_dependency is None:
        raise CkmError(f"method {method.name} starts from the {source} fit (init_from={source!r}): run it through "
                       f"ckmbench run, or pass --set init_from=null to start from random weights")
    dep = ctx.fit_dependency(source)
    differ = [k for k in keys if dep.hparams.get(k) != method.hparams.get(k)]
    if differ or dep.meta != method.meta:
        raise CkmError(f"method {method.name} starts from the {source} fit, whose architecture differs "
                       f"({', '.join(differ) or 'train task'}): give both the same values or --set init_from=null")
    method.net.load_state_dict(dep.net.state_dict())
