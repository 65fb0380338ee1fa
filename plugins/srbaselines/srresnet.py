"""SRResNet, SRGAN-MSE and SRGAN (Ledig et al., CVPR 2017), on radio maps.

Generator (Fig. 4): 9×9 conv (64) + PReLU; B = 16 residual blocks (3×3 conv, BN, PReLU,
3×3 conv, BN, skip); 3×3 conv + BN + the long skip; log2(s) sub-pixel stages (3×3 conv to
256, PixelShuffle ×2, PReLU); 9×9 conv to the image channels. The input is the
low-resolution map itself, so the network is built for the train task's factor s.

Discriminator (Fig. 4): 3×3 conv 64 + LeakyReLU(0.2); seven conv–BN–LeakyReLU blocks
(64 s2, 128, 128 s2, 256, 256 s2, 512, 512 s2); dense 1024 + LeakyReLU; dense 1 (logit).
The paper's dense layer reads the 6×6×512 features of a 96×96 crop; ckmbench pools the
features to ``d_pool``² first (6 for the paper's crops, so the paper's layer exactly), which
lets one discriminator read crops of any size.

Losses: SRResNet = MSE; SRGAN-MSE = MSE + 1e-3·(−log D(G(x))); SRGAN = VGG54 + 1e-3·adv,
where VGG54 is the MSE between the φ5,4 feature maps (after the activation, before the 5th
max-pool) of ImageNet VGG19, scaled by 1/12.75. The VGG19 weights are never downloaded: a
local file (``vgg_weights`` or ``$CKMBENCH_VGG19``) or the method refuses to train.

Other factors than the trained one (zero-shot): see :meth:`SRResNetMethod.native_input`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.checkpoints import load_checkpoint_file
from ckmbench.errors import CkmError
from ckmbench.training import AdversarialStep, Trainer, TrainConfig
from ckmbench_plugins.baselines.problem import lr_mode_of

from .common import SRBaseline, bce_logits, crop_offsets, degrade, from_channels, start_from, to_channels, upsampled

ARCH_KEYS = ("blocks", "width", "image_channels", "residual")
VGG_FILE = "vgg19-dcbb9e9d.pth"
VGG_ENV = "CKMBENCH_VGG19"


# ------------------------------------------------------------------ networks
class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))

    def forward(self, x):
        return x + self.body(x)


class SRResNet(nn.Module):
    """The generator of Ledig et al. for a power-of-two factor."""

    def __init__(self, factor: int, channels: int = 3, width: int = 64, blocks: int = 16):
        super().__init__()
        stages = int(round(math.log2(factor)))
        if 2 ** stages != factor:
            raise CkmError(f"SRResNet upsamples by powers of two; the train task's factor is {factor}: "
                           f"train on sr2, sr4, sr8 or sr16")
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.body_end = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.upsample = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2),
                                                      nn.PReLU()) for _ in range(stages)])
        self.tail = nn.Conv2d(width, channels, 9, padding=4)

    def forward(self, x):
        h = self.head(x)
        return self.tail(self.upsample(h + self.body_end(self.body(h))))


class SRGANDiscriminator(nn.Module):
    """The discriminator of Ledig et al. (logit output); ``pool`` = side of the dense layer's grid."""

    def __init__(self, channels: int = 3, width: int = 64, pool: int = 6):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        plan = [(width, 2), (2 * width, 1), (2 * width, 2), (4 * width, 1), (4 * width, 2), (8 * width, 1),
                (8 * width, 2)]
        c_in = width
        for c_out, stride in plan:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * pool * pool, 1024), nn.LeakyReLU(0.2),
                                  nn.Linear(1024, 1))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


class VGG54(nn.Module):
    """φ5,4 of ImageNet VGG19 (torchvision layout, features[:36]), frozen, ImageNet-normalised."""

    def __init__(self, path: Path):
        from torchvision.models.vgg import cfgs, make_layers

        super().__init__()
        state = load_checkpoint_file(path, what="VGG19 weights", kind="torchvision VGG19 weights",
                                     fix=f"pass the torchvision file {VGG_FILE} with --set vgg_weights=PATH")
        features = make_layers(cfgs["E"])[:36]  # VGG19's convolutions, without the 120 M classifier
        sub = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict({k: v for k, v in sub.items() if int(k.split(".")[0]) < 36})
        except (RuntimeError, ValueError) as exc:
            raise CkmError(f"VGG19 weights {path} do not fit torchvision's VGG19 ({str(exc).splitlines()[0][:120]}): "
                           f"pass the torchvision file {VGG_FILE}") from None
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, u):
        x = from_channels(u).repeat(1, 3, 1, 1)
        return self.features((x - self.mean) / self.std) / 12.75

    def train(self, mode: bool = True):
        return super().train(False)  # always in eval mode (no dropout/BN inside anyway)


def vgg_weights_path(name: str, hparams: dict) -> Path:
    """The local VGG19 file, or a one-line refusal naming the file it needs."""
    given = hparams.get("vgg_weights") or os.environ.get(VGG_ENV)
    if not given or not Path(given).is_file():
        what = f"{given} is not a file" if given else "none given"
        raise CkmError(f"method {name} needs ImageNet VGG19 weights for its VGG54 loss ({what}): pass torchvision's "
                       f"{VGG_FILE} with --set vgg_weights=PATH or ${VGG_ENV}=PATH (nothing is downloaded), "
                       f"or run srgan-mse")
    return Path(given)


# ------------------------------------------------------------------ methods
class SRResNetMethod(SRBaseline):
    """SRResNet: the generator trained on the pixel MSE alone."""

    name = "srresnet"
    channels_last_cpu = True  # measured: faster training steps on one CPU thread (docs/training.md)
    trainer_name = "generator"

    def build_net(self) -> nn.Module:
        hp = self.hparams
        return SRResNet(int(self.meta["factor"]), self.channels, int(hp["width"]), int(hp["blocks"]))

    def variant(self) -> str:
        return super().variant() + (", residual over bicubic" if self.residual else "")

    # ------------------------------------------------------------ data
    @property
    def residual(self) -> bool:
        """Small-profile device: the network adds to the bicubic map instead of drawing the map."""
        return bool(self.hparams.get("residual", False))

    def training_pair(self, batch, generator):
        """(low-res input, high-res target, bicubic base or None) of a batch, as ``image_channels``
        channels; an aligned random crop (offset a multiple of s) when the profile asks."""
        obs, target, _ = batch
        s = int(self.meta["factor"])
        lr, hr = obs.y, target
        base = upsampled(self.name, obs) if self.residual else None
        box = crop_offsets(hr.shape, self.hparams.get("crop"), s, generator)
        if box is not None:
            r, q, c = box
            hr = hr[..., r:r + c, q:q + c]
            lr = lr[..., r // s:(r + c) // s, q // s:(q + c) // s]
            base = base[..., r:r + c, q:q + c] if base is not None else None
        base = to_channels(base, self.channels) if base is not None else None
        return to_channels(lr, self.channels), to_channels(hr, self.channels), base

    @staticmethod
    def generate_hr(net, lr, hr, base) -> torch.Tensor:
        """The network's map for a training pair, on the target's grid (+ the bicubic base)."""
        out = net(lr)[..., :hr.shape[-2], :hr.shape[-1]]
        return out if base is None else out + base

    def native_input(self, obs) -> tuple[torch.Tensor, int]:
        """(low-res map at the trained factor s, reduction r of the output) for any task factor f.

        f = s: the measurements. f > s (zero-shot ×8, ×16 from ×4): bicubic to the target grid,
        then the task's own degradation at factor s, so the network sees what it was trained
        on. f < s (×2 from ×4), s divisible by f: the measurements as if at factor s; the output
        is then s/f times finer than the target and is brought back by the task's degradation
        at s/f (every (s/f)-th pixel, or block means), so every measurement is used.
        """
        f, s = int(obs.factor), int(self.meta["factor"])
        if f == s:
            return obs.y, 1
        if f > s:
            return degrade(upsampled(self.name, obs), s, lr_mode_of(obs)), 1
        if s % f:
            raise CkmError(f"method {self.name} was trained at x{s} and cannot run at x{f} (not a divisor): "
                           f"train on sr{f}")
        return obs.y, s // f

    def forward(self, net, obs) -> torch.Tensor:
        lr, reduce = self.native_input(obs)
        out = from_channels(net(to_channels(lr, self.channels)))
        if reduce > 1:
            out = degrade(out, reduce, lr_mode_of(obs))
        H, W = obs.out_shape
        # residual: the base is the bicubic map of the measurements as given (their own factor)
        return out[..., :H, :W] + upsampled(self.name, obs) if self.residual else out[..., :H, :W]

    def step(self, ctx):
        def loss(net, batch, generator):
            lr, hr, base = self.training_pair(batch, generator)
            return F.mse_loss(self.generate_hr(net, lr, hr, base).float(), hr)

        return loss


class SRGANMethod(SRResNetMethod):
    """SRGAN: SRResNet's generator + the discriminator, content loss + 1e-3 adversarial loss."""

    name = "srgan"
    content = "vgg54"
    weight_files = {"vgg_weights": VGG_ENV}  # the fit key holds the VGG19 file's digest

    def prepare(self, ctx) -> None:
        self.vgg = VGG54(vgg_weights_path(self.name, self.hparams)).to(ctx.device) if self.content == "vgg54" else None
        source = self.hparams.get("init_from")
        if source:
            start_from(self, ctx, source, ARCH_KEYS)

    def variant(self) -> str:
        init = self.hparams.get("init_from")
        return super().variant() + f", {self.content} content" + (f", from the {init} fit" if init else "")

    def make_trainer(self, cfg: TrainConfig, ctx) -> Trainer:
        hp = self.hparams
        return self.gan_trainer(cfg, ctx, lambda: SRGANDiscriminator(self.channels, int(hp.get("d_width", 64)),
                                                                     int(hp.get("d_pool", 6))))

    def content_loss(self, fake, real) -> torch.Tensor:
        if self.content == "vgg54":
            return F.mse_loss(self.vgg(fake.float()), self.vgg(real))
        return F.mse_loss(fake.float(), real)

    def step(self, ctx):
        weight = float(self.hparams.get("adv_weight", 1e-3))

        def generate(net, batch, generator):
            lr, hr, base = self.training_pair(batch, generator)
            return {"fake": self.generate_hr(net, lr, hr, base), "real": hr}

        def d_loss(disc, out, batch, generator):
            return bce_logits(disc(out["real"]), True) + bce_logits(disc(out["fake"]), False)

        def g_loss(disc, out, batch, generator):
            return self.content_loss(out["fake"], out["real"]) + weight * bce_logits(disc(out["fake"]), True)

        return AdversarialStep(generate, d_loss, g_loss)


class SRGANMSEMethod(SRGANMethod):
    """SRGAN-MSE (Ledig et al. Table 1): the pixel MSE as content loss + 1e-3 adversarial loss."""

    name = "srgan-mse"
    content = "mse"
