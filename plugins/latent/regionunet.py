"""Stage 1 of the physics-inspired LDM (S3): RegionUNet, a 4-class propagation-region segmenter.

Classes: 0 line of sight, 1 slightly shadowed, 2 heavily shadowed, 3 building. The labels of a
map come from its excess gain over a log-distance model, r = g - (a - 10 n log10 d): the
``pathloss`` baseline's least-squares fit of (a, n) to the map's own outdoor pixels above the
floor (``ckmbench_plugins.baselines.logdistance``), d the 3-D Tx distance. S3 gives no
threshold values; ours (``region_thresholds_db``, default [0, -10] dB): LoS r >= 0 (at or above
the distance trend), slightly shadowed -10 <= r < 0 (within about one and a half of a typical
shadow-fading sigma), heavily shadowed r < -10 (and the floor-clipped pixels); buildings from
the scene's footprint mask. On ``city`` that splits the outdoor pixels 51 / 36 / 13 %.

The network is a plain U-Net (Ronneberger et al.: two 3x3 conv-BN-ReLU per level, max-pool
down, transposed conv up, skips; base 64 x [1, 2, 4, 8, 16] at ``paper``) on [map, buildings,
Tx one-hot, cars]. It is trained by the shared trainer with cross-entropy (Adam 1e-4, batch 16,
100 epochs at ``paper``) and kept in the fit cache through :func:`ckmbench.fitting.fit_method`
under ``physdiff-regionunet``, keyed by the ``region_`` hyper-parameters alone, so every loss
ablation of the diffusion stage reuses one RegionUNet.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ckmbench.errors import CkmError
from ckmbench.fitting import fit_method, report_fit
from ckmbench.method import Method
from ckmbench.training import Trainer, TrainConfig
from ckmbench_plugins.baselines.logdistance import distance_m, fit_log_distance, log_distance_gain
from ckmbench_plugins.diffusion.srdiff import seeded_build

NUM_CLASSES = 4
CLASSES = ("line of sight", "slightly shadowed", "heavily shadowed", "building")
REGION_NAME = "physdiff-regionunet"
REGION_VERSION = "1"
ENV_CHANNELS = 3  # buildings, Tx one-hot, cars


# ------------------------------------------------------------------ inputs and labels
def environment(obs) -> torch.Tensor:
    """(B, 3, H, W) [buildings, Tx one-hot, cars]; cars are zeros where the task has none (static)."""
    if obs.buildings is None or obs.tx_map is None:
        raise CkmError(f"physdiff needs buildings and the Tx map; task {obs.task} gives none: use envgen-static "
                       f"or envgen-dynamic")
    cars = obs.cars if obs.cars is not None else torch.zeros_like(obs.buildings)
    return torch.cat([obs.buildings, obs.tx_map, cars], dim=1).float()


def region_labels(u: torch.Tensor, obs, thresholds_db) -> torch.Tensor:
    """(B, H, W) long class labels of the maps ``u`` (B, 1, H, W) of an envgen observation."""
    t_los, t_heavy = (float(t) for t in thresholds_db)
    if not t_los > t_heavy:
        raise CkmError(f"region_thresholds_db must be [LoS threshold, heavy-shadow threshold] with the first "
                       f"larger; got {list(thresholds_db)}")
    out = []
    for i in range(u.shape[0]):
        lo, hi = (float(v) for v in obs.gain_range[i])
        g = lo + u[i, 0].detach().cpu().double().numpy() * (hi - lo)
        b = obs.buildings[i, 0].detach().cpu().numpy() > 0.5
        tx = obs.tx[i].detach().cpu().numpy().astype(np.float64)
        pts = np.indices(g.shape).reshape(2, -1).T.astype(np.float64)
        d = distance_m(pts, tx[:2], float(obs.pixel_m[i]), tx[2]).reshape(g.shape)
        fit = (~b) & (g > lo + 1e-6)  # the floor carries no distance information (as ``pathloss``)
        if not fit.any():
            fit = ~b
        a, n = fit_log_distance(d[fit], g[fit]) if fit.any() else (0.0, 0.0)
        r = g - log_distance_gain(d, a, n)
        lab = np.where(r >= t_los, 0, np.where(r >= t_heavy, 1, 2))
        out.append(np.where(b, 3, lab))
    return torch.from_numpy(np.stack(out)).long().to(u.device)


# ------------------------------------------------------------------ the network
def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class RegionUNet(nn.Module):
    """U-Net segmenter: ``forward([map, environment]) -> logits (B, 4, H, W)``; H, W divisible by 2^(levels-1)."""

    def __init__(self, in_channels: int = 1 + ENV_CHANNELS, base: int = 64, mults=(1, 2, 4, 8, 16)):
        super().__init__()
        chans = [int(base) * int(m) for m in mults]
        self.min_size = 2 ** (len(chans) - 1)
        self.down = nn.ModuleList()
        c = in_channels
        for ch in chans:
            self.down.append(double_conv(c, ch))
            c = ch
        self.ups, self.up_convs = nn.ModuleList(), nn.ModuleList()
        for ch in reversed(chans[:-1]):
            self.ups.append(nn.ConvTranspose2d(c, ch, 2, stride=2))
            self.up_convs.append(double_conv(2 * ch, ch))
            c = ch
        self.head = nn.Conv2d(c, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.min_size or x.shape[-2] % self.min_size:
            raise CkmError(f"RegionUNet: map size {tuple(x.shape[-2:])} must divide by {self.min_size}: "
                           f"use fewer region_mults")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, conv in zip(self.ups, self.up_convs):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def probabilities(self, u: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        return self.forward(torch.cat([u, env], dim=1)).softmax(1)


# ------------------------------------------------------------------ its fit
def region_hparams(hp: dict) -> dict:
    """The RegionUNet's keys of the physdiff profile (``region_`` prefix stripped)."""
    return {k[7:]: v for k, v in sorted(hp.items()) if k.startswith("region_")}


def epochs_to_steps(hp: dict, n_train: int) -> int:
    """``epochs`` (the paper's unit) over the train split, else ``steps``; not both."""
    if hp.get("epochs") is not None and hp.get("steps") is not None:
        raise CkmError("region_epochs and region_steps both set: paper counts epochs, small/tiny steps; "
                       "--set one of them to null")
    if hp.get("epochs") is not None:
        return int(hp["epochs"]) * max(1, math.ceil(n_train / int(hp["batch_size"])))
    return int(hp.get("steps") or 0)


class RegionSegmenter(Method):
    """The RegionUNet as a fit of its own (trained and cached by :func:`fitted_regionunet`)."""

    name = REGION_NAME

    def __init__(self, hp: dict):
        super().__init__("region", hp)
        self.net = self.build()

    def build(self) -> RegionUNet:
        return RegionUNet(base=int(self.hparams["base"]), mults=[int(m) for m in self.hparams["mults"]])

    def loss(self, net, batch, generator) -> torch.Tensor:
        obs, u, _ = batch
        labels = region_labels(u, obs, self.hparams["thresholds_db"])
        return F.cross_entropy(net(torch.cat([u, environment(obs)], dim=1)), labels)

    def accuracy(self, data, batch_size: int = 32, limit: int = 256) -> float | None:
        """Pixel accuracy on the first ``limit`` maps of ``data`` (the record's check of stage 1)."""
        if data is None or len(data) == 0:
            return None
        dev = next(self.net.parameters()).device
        self.net.eval()
        right = total = 0
        with torch.no_grad():
            for s in range(0, min(len(data), limit), batch_size):
                obs, u, _ = data.batch_at(range(s, min(len(data), limit, s + batch_size)))
                obs, u = obs.to(dev), u.to(dev)
                pred = self.net.probabilities(u, environment(obs)).argmax(1)
                right += int((pred == region_labels(u, obs, self.hparams["thresholds_db"])).sum())
                total += pred.numel()
        return right / total

    def fit(self, train, val, task, ctx) -> None:
        self.net = seeded_build(self.build, ctx.seed)
        cfg = TrainConfig.from_hparams({**self.hparams, "steps": epochs_to_steps(self.hparams, len(train))})
        result = Trainer(self.net, cfg, ctx, name="regionunet").fit(train, self.loss)
        report_fit(ctx, result, val_accuracy=self.accuracy(val), classes=list(CLASSES),
                   thresholds_db=list(self.hparams["thresholds_db"]))

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "net" not in state:
            raise CkmError("not a RegionUNet fit (no 'net'): pass --refit to train it again")
        self.net = self.build()
        self.net.load_state_dict(state["net"])


def fitted_regionunet(train, val, task, ctx, hp: dict) -> tuple[RegionUNet, dict]:
    """The RegionUNet of this task, dataset, profile and ``region_`` settings, from the fit cache or
    trained now (and stored); returned frozen in eval mode, with the record's description."""
    seg = RegionSegmenter(hp)
    sub = copy.copy(ctx)
    sub.extras, sub.fit_dir = {}, None
    spec = SimpleNamespace(name=REGION_NAME, kind="learned")
    info = fit_method(seg, spec, version=REGION_VERSION, train_task=task, train_name=train.dataset.name,
                      train_hash=train.dataset.content_hash, profile=ctx.profile, hparams=hp, seed=ctx.seed,
                      train=train, val=val, ctx=sub)
    net = seg.net.to(ctx.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, info
