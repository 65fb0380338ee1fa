"""cGAN: a conditional GAN for inpainting, noisy ×4 SR, denoising and map generation from
the environment (S1 cites Mirza & Osindero without an architecture; ckmbench's concrete
choice is pix2pix, Isola et al. 2017).

Generator: pix2pix's U-Net (``unet_256`` at num_downs = 8): 4×4 stride-2 convs down with
LeakyReLU(0.2) and BatchNorm (none on the outermost and innermost), transposed convs up with
ReLU and BatchNorm, dropout 0.5 in the three innermost decoder blocks below the bottleneck
(as ``use_dropout``), skip concatenations, tanh output on the map mapped to [−1, 1].
Discriminator: the 70×70 PatchGAN (n_layers = 3, 64 filters) on [condition, map].
Loss: G: adversarial (vanilla GAN, −log D) + λ·L1 with λ = 100; D: (BCE(real) + BCE(fake))/2.
Both networks start from pix2pix's ``init_weights(init_type="normal", init_gain=0.02)``.

Condition channels per task (all mapped by 2x − 1): ``inpaint`` [y, mask]; ``sr*-noisy``
[y upsampled to the target grid]; ``denoise`` [y]; ``envgen-static`` [buildings, Tx
one-hot]; ``envgen-dynamic`` [buildings, cars, Tx one-hot].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.training import AdversarialStep, Trainer, TrainConfig
from ckmbench.weights_import import KeyGroup, OfficialWeights
from ckmbench_plugins.diffusion.srdiff import pad_to_multiple

from .common import LearnedBaseline, bce_logits, upsampled

FIELDS = {"inpaint": ("y", "mask"), "sr": ("y_up",), "denoise": ("y",), "envgen": ("buildings", "tx_map")}


def pix2pix_init(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix's "normal" initialisation (its ``init_weights``, used by the paper for G and D):
    conv and linear weights N(0, gain²), BatchNorm weights N(1, gain²), all biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return net


class UnetBlock(nn.Module):
    """pix2pix's UnetSkipConnectionBlock: down, submodule, up, concatenated with the input."""

    def __init__(self, outer: int, inner: int, c_in: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        c_in = outer if c_in is None else c_in
        down = [nn.Conv2d(c_in, inner, 4, stride=2, padding=1, bias=False)]
        if outermost:
            up = [nn.ReLU(), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1), nn.Tanh()]
            model = down + [sub] + up
        elif innermost:
            up = [nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(outer)]
            model = [nn.LeakyReLU(0.2)] + down + up
        else:
            down = [nn.LeakyReLU(0.2)] + down + [nn.BatchNorm2d(inner)]
            up = [nn.ReLU(), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1, bias=False),
                  nn.BatchNorm2d(outer)] + ([nn.Dropout(0.5)] if dropout else [])
            model = down + [sub] + up
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix's UnetGenerator (the input side must divide by 2**num_downs)."""

    def __init__(self, c_in: int, c_out: int, num_downs: int = 8, ngf: int = 64, dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise CkmError(f"the pix2pix U-Net needs num_downs >= 5, got {num_downs}: pass --set num_downs=5")
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, sub=block, dropout=dropout)
        block = UnetBlock(ngf * 4, ngf * 8, sub=block)
        block = UnetBlock(ngf * 2, ngf * 4, sub=block)
        block = UnetBlock(ngf, ngf * 2, sub=block)
        self.model = UnetBlock(c_out, ngf, c_in=c_in, sub=block, outermost=True)
        self.multiple = 2 ** num_downs
        pix2pix_init(self)

    def forward(self, x):
        return self.model(x)


class PatchGAN(nn.Module):
    """pix2pix's NLayerDiscriminator (n_layers = 3: 70×70 receptive field), logits per patch."""

    def __init__(self, c_in: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(c_in, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)
        pix2pix_init(self)

    def forward(self, x):
        return self.model(x)


class CGANMethod(LearnedBaseline):
    name = "cgan"
    trainer_name = "generator"
    # `ckmbench run --weights`: a pix2pix generator's state_dict (latest_net_G.pth of a
    # --netG unet_256 --norm batch run). UnetGenerator and UnetBlock keep pix2pix's layout
    # (``model`` -> the outermost block, its ``model`` Sequential with the next block at
    # index 1, ...), so the keys are pix2pix's with our ``net.`` in front (docs/weights.md).
    official_weights = OfficialWeights("junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py UnetGenerator",
                                       (KeyGroup("generator", (("model.", "net.model."),)),))

    def configure(self, task) -> dict:
        kind = getattr(task, "kind", None)
        if kind not in FIELDS or (kind == "sr" and not getattr(task, "noisy", False)):
            raise CkmError(f"method {self.name} trains on inpaint, sr*-noisy, denoise and envgen-*; got {task.name}")
        fields = FIELDS[kind]
        if kind == "envgen" and getattr(task, "dynamic", False):
            fields = ("buildings", "cars", "tx_map")
        return {"fields": list(fields)}

    def build_net(self) -> nn.Module:
        hp = self.hparams
        return UnetGenerator(len(self.meta["fields"]), 1, int(hp["num_downs"]), int(hp["ngf"]),
                             bool(hp.get("dropout", True)))

    def import_modules(self, task) -> dict:
        """The untrained generator for ``task`` that ``--weights`` fills (ckmbench.weights_import)."""
        self.meta = self.configure(task)
        self.net = self.build_net()
        return {"net": self.net}

    def variant(self) -> str:
        return f"pix2pix U-Net ({self.hparams['num_downs']} downs, ngf {self.hparams['ngf']}) + 70x70 PatchGAN"

    def condition(self, obs) -> torch.Tensor:
        """The condition channels of the task, in [−1, 1], padded to the U-Net's multiple."""
        chans = []
        for name in self.meta["fields"]:
            v = upsampled(self.name, obs) if name == "y_up" else getattr(obs, name)
            if v is None:
                raise CkmError(f"method {self.name} was trained with '{name}' in the observation; task {obs.task} "
                               f"does not give it: score it on the task it was trained on")
            chans.append(2.0 * v.float() - 1.0)
        return torch.cat(chans, dim=1)

    def forward(self, net, obs) -> torch.Tensor:
        x, _ = pad_to_multiple(self.condition(obs), net.multiple)
        H, W = obs.out_shape
        return (net(x)[..., :H, :W] + 1.0) / 2.0

    def make_trainer(self, cfg: TrainConfig, ctx) -> Trainer:
        hp = self.hparams
        return self.gan_trainer(cfg, ctx, lambda: PatchGAN(len(self.meta["fields"]) + 1, int(hp.get("ndf", 64)),
                                                           int(hp.get("n_layers", 3))))

    def step(self, ctx):
        lam = float(self.hparams.get("l1_weight", 100.0))

        def generate(net, batch, generator):
            obs, target, _ = batch
            m = 2 ** int(self.hparams["num_downs"])
            cond, _ = pad_to_multiple(self.condition(obs), m)
            real, _ = pad_to_multiple(2.0 * target - 1.0, m)
            return {"cond": cond, "fake": net(cond), "real": real}

        def d_loss(disc, out, batch, generator):
            real = disc(torch.cat([out["cond"], out["real"]], dim=1))
            fake = disc(torch.cat([out["cond"], out["fake"]], dim=1))
            return 0.5 * (bce_logits(real, True) + bce_logits(fake, False))

        def g_loss(disc, out, batch, generator):
            fake = disc(torch.cat([out["cond"], out["fake"]], dim=1))
            return bce_logits(fake, True) + lam * F.l1_loss(out["fake"].float(), out["real"])

        return AdversarialStep(generate, d_loss, g_loss)
