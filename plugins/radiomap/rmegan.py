"""RME-GAN (Zhang et al., official code): RadioWNet generator + DCGAN discriminator, two phases.

The generator is RadioWNet; as in the official training (``[fake, _] = netG(inps)`` with
phase "firstU") the prediction is the first U-Net's output, so only that U-Net trains (the
second is built and counted, 13.27 M in all, as the papers count). The discriminator is the
code's DCGAN discriminator (2.77 M at 256² with 3 input channels), conditional here: it
sees [map, generator input], and it keeps the code's closing Sigmoid in front of the
BCE-with-logits loss. Phase 1 ("global") and phase 2 ("local", from phase 1's best
generator) are two runs of the shared trainer in adversarial mode (D then G every step),
each keeping the generator with the best validation MSE. The generator's map has its
building pixels set to 0 before any loss sees it (the benchmark's convention for every
prediction): without that the global phase's gradient-cosine term drives the output to a
flat zero where the final ReLU dies. Loss terms and every departure from the code:
docs/methods/radiomap-baselines.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.training import AdversarialStep, Trainer
from ckmbench.weights_import import KeyGroup, OfficialWeights
from ckmbench_plugins.diffusion.srdiff import seeded_build

from . import gan_losses as L
from .radiounet import RadioUNet, both_phases, phase_config
from .wnet import official_renames, scaled

PHASES = ("global", "local")


class DCGANDiscriminator(nn.Sequential):
    """The code's discriminator: 4×4 stride-2 convs ndf → 8·ndf (BatchNorm after the first),
    LeakyReLU 0.2, a final 4×4 conv to one value per patch, then (``sigmoid``, as the code) a
    Sigmoid. The code's loss is BCE-with-logits on that probability, a second sigmoid that
    keeps D's verdicts within (0.5, 0.73) and so bounds the generator's adversarial term
    (10 × it in phase 1); without it D is certain within steps and that term swamps the MSE."""

    def __init__(self, channels: int, ndf: int = 64, sigmoid: bool = True):
        layers, cin = [], channels
        for i, mult in enumerate((1, 2, 4, 8)):
            layers.append(nn.Conv2d(cin, ndf * mult, 4, 2, 1, bias=False))
            if i:
                layers.append(nn.BatchNorm2d(ndf * mult))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = ndf * mult
        layers.append(nn.Conv2d(cin, 1, 4, 1, 0, bias=False))
        if sigmoid:
            layers.append(nn.Sigmoid())
        super().__init__(*layers)


class RMEGAN(RadioUNet):
    name = "rme-gan"
    # `ckmbench run --weights`: the generator is the official RadioWNet (RME-GAN's lib/modules.py
    # keeps RadioUNet's names); the discriminator, optional (no prediction uses it), is
    # lib/EncoderModels.py's Discriminator, whose ``main.<i>`` is our Sequential's ``<i>``.
    official_weights = OfficialWeights(
        "achinthaw/RME-GAN lib/modules.py RadioWNet (+ lib/EncoderModels.py Discriminator)",
        (KeyGroup("generator", official_renames("net.")), KeyGroup("discriminator", (("main.", "disc."),), False)))

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        self.output = "u1"
        self.disc = self.build_disc(len(self.inputs))

    def build_disc(self, inputs: int) -> DCGANDiscriminator:
        return DCGANDiscriminator(1 + inputs, scaled(64, self.width), bool(self.hparams.get("disc_sigmoid", True)))

    def phase_forward(self, phase: str, net, x: torch.Tensor) -> torch.Tensor:
        """The first U-Net's map (the trained module in both phases), building pixels 0 when
        ``mask_buildings`` (the map as it is scored; x's buildings channel is 1 inside)."""
        out = net(x)
        if self.hparams.get("mask_buildings", True):
            b = self.inputs.index("buildings")
            out = out * (1.0 - x[:, b:b + 1])
        return out

    def import_modules(self, task) -> dict:
        """Generator and discriminator for ``task``; the prediction is the first U-Net's, as
        the code's ``[fake, _] = netG(inps)``."""
        modules = super().import_modules(task)
        self.output = "u1"
        self.disc = self.build_disc(len(self.inputs))
        return {**modules, "disc": self.disc}

    # ------------------------------------------------------------ the adversarial step
    @staticmethod
    def pair(m: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """[map, condition]: the map zero-padded to the (padded) condition's size."""
        return torch.cat([F.pad(m, (0, cond.shape[-1] - m.shape[-1], 0, cond.shape[-2] - m.shape[-2])), cond], 1)

    def generate(self, G, batch, generator) -> dict:
        obs, u, _ = batch
        x = self.network_input(obs)
        return {"fake": self.crop(self.phase_forward("global", G, x), u), "real": self.target(u), "cond": x}

    def d_loss(self, D, out, batch, generator) -> torch.Tensor:
        return 0.5 * (L.bce_logits(D(self.pair(out["real"], out["cond"])), True)
                      + L.bce_logits(D(self.pair(out["fake"], out["cond"])), False))

    def g_loss(self, phase: str):
        hp = self.hparams

        def w(term: str) -> float:
            return float(hp[f"{phase}_{term}"])

        def loss(D, out, batch, generator) -> torch.Tensor:
            fake, real = out["fake"], out["real"]
            total = w("adv") * L.bce_logits(D(self.pair(fake, out["cond"])), True)
            total = total + w("mse") * F.mse_loss(fake, real) + w("tv") * L.tv_loss(fake)
            if phase == "global":
                return total + w("cos") * L.gradient_cosine_loss(fake, real)
            return (total + w("msssim_l1") * L.ms_ssim_l1_loss(fake, real, float(hp["msssim_alpha"]))
                    + w("power") * L.power_loss(fake, real)
                    + w("slic") * L.slic_loss(fake, real, int(hp["slic_segments"]), float(hp["slic_sigma"])))

        return loss

    # ------------------------------------------------------------ training
    def fit(self, train, val, task, ctx) -> None:
        self.inputs = self.inputs_for(task)
        self.net = seeded_build(lambda: self.build_net(len(self.inputs)), ctx.seed).to(ctx.device)
        self.disc = seeded_build(lambda: self.build_disc(len(self.inputs)), ctx.seed + 1).to(ctx.device)
        results = {}
        for phase in PHASES:
            cfg = phase_config(self.hparams, phase, len(train))
            trainer = Trainer(self.net.u1, cfg, ctx, name=phase, discriminator=self.disc)
            results[phase] = trainer.fit(train, AdversarialStep(self.generate, self.d_loss, self.g_loss(phase)),
                                         self.validation_fn("u1", val, cfg.batch_size))
        first, second = results["global"], results["local"]
        report_fit(ctx, both_phases(first, second), inputs=list(self.inputs), thresh=self.thresh, output=self.output,
                   global_phase={"steps_done": first.steps_done, "best_val": first.best_val,
                                 "final_loss": first.final_loss, "final_d_loss": first.final_d_loss})

    def num_parameters(self) -> int:
        """Generator (both U-Nets of RadioWNet) + discriminator: the papers' count."""
        return super().num_parameters() + sum(p.numel() for p in self.disc.parameters())

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "disc": self.disc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "disc" not in state:
            raise CkmError(f"checkpoint is not a {self.name} checkpoint (no 'disc' weights): pass one written by "
                           f"ckmbench run -m {self.name}")
        super().load_state_dict(state)
        self.disc = self.build_disc(len(self.inputs))
        self.disc.load_state_dict(state["disc"])
