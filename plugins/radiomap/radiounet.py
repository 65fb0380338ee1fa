"""RadioUNet (Levie et al., official code): RadioWNet trained by the two-phase curriculum.

Phase 1 trains the first U-Net on MSE; phase 2 trains the second U-Net on MSE with the first
frozen (no gradient, not in the optimizer). Each phase is one run of the shared trainer
(its own resumable state, Adam 1e-4, StepLR(30 epochs, 0.1), batch 15, the best-validation
weights kept). Targets go through the loader's ``thresh`` option: u below thresh is
clipped, then v = (u − thresh)/(1 − thresh); predictions are mapped back with
u = thresh + (1 − thresh) v and building pixels (known from the input) set to 0, the
benchmark's convention. Profiles and every choice: docs/methods/radiomap-baselines.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.method import Method
from ckmbench.training import Trainer, TrainConfig
from ckmbench.weights_import import KeyGroup, OfficialWeights
from ckmbench_plugins.diffusion.srdiff import seeded_build

from .wnet import RadioWNet, official_renames

# Observation fields a variant may feed the network, in channel order; cars are used where
# the task provides them (envgen-dynamic) and read as "no cars" (zeros) where it does not.
OPTIONAL_FIELDS = ("cars",)


# ------------------------------------------------------------------ the thresh option
def to_training_scale(u: torch.Tensor, thresh: float) -> torch.Tensor:
    """The loader's thresh: u below thresh is clipped to it, then (u − thresh)/(1 − thresh)."""
    return (u.clamp(min=thresh) - thresh) / (1.0 - thresh)


def from_training_scale(v: torch.Tensor, thresh: float, buildings: torch.Tensor | None = None) -> torch.Tensor:
    """Network output back to u in [0, 1]; building pixels 0 where the observation shows them."""
    u = thresh + (1.0 - thresh) * v.clamp(0.0, 1.0)
    if buildings is not None:
        u = torch.where(buildings > 0.5, torch.zeros_like(u), u)
    return u


def check_thresh(name: str, thresh) -> float:
    if not isinstance(thresh, (int, float)) or not 0.0 <= thresh < 1.0:
        raise CkmError(f"method {name}: thresh must be in [0, 1), got {thresh!r}: pass e.g. --set thresh=0.2")
    return float(thresh)


# ------------------------------------------------------------------ epochs -> trainer steps
def phase_config(hp: dict, phase: str, n_train: int) -> TrainConfig:
    """The trainer settings of one phase. ``epochs_<phase>``, ``lr_step_epochs`` and
    ``val_every_epochs`` (the paper's units) become steps through the train-split size;
    where they are null, ``steps_<phase>``, ``lr_step_every`` and ``val_every`` are used."""
    batch = int(hp["batch_size"])
    per_epoch = max(1, math.ceil(n_train / batch))

    def steps(epochs_key: str, steps_key: str) -> int:
        epochs, count = hp.get(epochs_key), hp.get(steps_key)
        if epochs is not None and count is not None:
            raise CkmError(f"{epochs_key}={epochs} and {steps_key}={count} both set: the paper profile counts in "
                           f"epochs (--set {epochs_key}=...), small and tiny in steps (--set {steps_key}=...)")
        return int(epochs) * per_epoch if epochs is not None else int(count or 0)

    kw = dict(hp, steps=steps(f"epochs_{phase}", f"steps_{phase}"),
              lr_step_every=steps("lr_step_epochs", "lr_step_every"), val_every=steps("val_every_epochs", "val_every"))
    return TrainConfig.from_hparams(kw)


def mse_over(batches, predict) -> float:
    """Mean squared error over the samples of ``batches`` of (input, target)."""
    total, count = 0.0, 0
    for x, target in batches:
        total += float(F.mse_loss(predict(x, target), target, reduction="sum"))
        count += target.numel()
    return total / max(1, count)


def both_phases(first, second):
    """The record of a two-phase fit: the second phase's result with the steps, time and
    budget of both (the first phase's own figures go beside it)."""
    second.steps_done += first.steps_done
    second.steps_planned += first.steps_planned
    second.train_s += first.train_s
    second.budget_reached = first.budget_reached or second.budget_reached
    return second


class RadioUNet(Method):
    """RadioUNet-c / -s: RadioWNet on buildings + Tx (+ cars), or on sparse samples + mask."""

    name = "radiounet-c"
    channels_last_cpu = True  # measured: faster training steps on one CPU thread (docs/training.md)
    kinds = ("envgen",)
    fields = ("buildings", "tx_map", "cars")  # candidates, in channel order
    required = ("buildings", "tx_map")
    # `ckmbench run --weights`: the authors' RadioWNet state_dict (docs/weights.md)
    official_weights = OfficialWeights("RonLevie/RadioUNet lib/modules.py RadioWNet",
                                       (KeyGroup("RadioWNet", official_renames("net.")),))

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        self.thresh = check_thresh(self.name, self.hparams.get("thresh", 0.2))
        self.width = float(self.hparams.get("width", 1.0))
        self.inputs = self.required  # until a fit (or a stored one) says which fields it used
        self.output = "u2"  # the U-Net whose output is the prediction
        self.net = self.build_net(len(self.inputs))

    def build_net(self, inputs: int) -> RadioWNet:
        return RadioWNet(inputs, self.width)

    # ------------------------------------------------------------ inputs and targets
    def inputs_for(self, task) -> tuple[str, ...]:
        """The input channels of a fit on ``task``: the variant's fields the task provides."""
        provides = set(getattr(task, "provides", ()))
        missing = [f for f in self.required if f not in provides]
        if getattr(task, "kind", None) not in self.kinds or missing:
            raise CkmError(f"method {self.name} trains on {', '.join(self.kinds)} tasks whose observation has "
                           f"{', '.join(self.required)}; task {task.name} does not: pick one of its tasks "
                           f"(ckmbench list)")
        return tuple(f for f in self.fields if f in provides)

    def network_input(self, obs) -> torch.Tensor:
        """(B, C, H, W) input, zero-padded bottom/right to a multiple of the U-Nets' pooling."""
        chans = []
        for f in self.inputs:
            v = getattr(obs, f, None)
            if v is None and f in OPTIONAL_FIELDS and obs.buildings is not None:
                v = torch.zeros_like(obs.buildings)
            if v is None:
                raise CkmError(f"method {self.name} was fitted with input '{f}', which the {obs.task} observation "
                               f"lacks: score it on a task that provides {f}")
            if f == "y":  # sparse samples live on the training scale of the targets
                v = to_training_scale(v, self.thresh) * obs.mask
            chans.append(v.float())
        x = torch.cat(chans, dim=1)
        m = self.net.min_size
        H, W = x.shape[-2:]
        return F.pad(x, (0, (-W) % m, 0, (-H) % m))

    def target(self, u: torch.Tensor) -> torch.Tensor:
        return to_training_scale(u, self.thresh)

    @staticmethod
    def crop(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return out[..., :like.shape[-2], :like.shape[-1]]

    def import_modules(self, task) -> dict:
        """The untrained network for ``task`` that ``--weights`` fills (ckmbench.weights_import);
        the prediction is the second U-Net's, as after the official two-phase training."""
        self.inputs = self.inputs_for(task)
        self.net = self.build_net(len(self.inputs))
        self.output = "u2"
        return {"net": self.net}

    # ------------------------------------------------------------ training
    def phase_loss(self, phase: str):
        """Loss of one batch in ``phase`` ("u1": the first U-Net; "u2": the second, first frozen)."""

        def loss(net, batch, generator):
            obs, u, _ = batch
            return F.mse_loss(self.crop(self.phase_forward(phase, net, self.network_input(obs)), u), self.target(u))

        return loss

    def phase_forward(self, phase: str, net, x: torch.Tensor) -> torch.Tensor:
        if phase == "u1":
            return net(x)
        with torch.no_grad():
            out1 = self.net.u1(x)
        return net(self.net.second_input(out1, x))

    def validation_fn(self, phase: str, val, batch_size: int):
        """MSE (training scale) of the phase's output on the val split (its first ``val_max``)."""
        if val is None or len(val) == 0:
            return None
        limit = self.hparams.get("val_max")
        n = len(val) if limit is None else min(len(val), int(limit))

        def value(model) -> float:
            dev = next(model.parameters()).device

            def batches():
                for start in range(0, n, batch_size):
                    obs, u, _ = val.batch_at(range(start, min(n, start + batch_size)))
                    obs, u = obs.to(dev), u.to(dev)
                    yield self.network_input(obs), self.target(u)

            return mse_over(batches(), lambda x, t: self.crop(self.phase_forward(phase, model, x), t))

        return value

    def fit(self, train, val, task, ctx) -> None:
        self.inputs = self.inputs_for(task)
        self.net = seeded_build(lambda: self.build_net(len(self.inputs)), ctx.seed).to(ctx.device)
        results = {}
        for phase, module in (("u1", self.net.u1), ("u2", self.net.u2)):
            cfg = phase_config(self.hparams, phase, len(train))
            if phase == "u2":
                self.net.u1.requires_grad_(False)  # frozen: no gradient, not in the optimizer
            results[phase] = Trainer(module, cfg, ctx, name=phase).fit(
                train, self.phase_loss(phase), self.validation_fn(phase, val, cfg.batch_size))
        self.net.requires_grad_(True)
        first, second = results["u1"], results["u2"]
        # a fit whose second U-Net never trained (steps_u2 = 0, or a time budget spent in
        # phase 1) predicts from the first, not from an untrained second U-Net
        self.output = "u2" if second.steps_done > 0 else "u1"
        report_fit(ctx, both_phases(first, second), inputs=list(self.inputs), thresh=self.thresh, output=self.output,
                   phase1={"steps_done": first.steps_done, "best_val": first.best_val, "final_loss": first.final_loss})

    # ------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, obs, ctx) -> torch.Tensor:
        dev = obs.buildings.device if obs.buildings is not None else obs.y.device
        self.net.to(dev).eval()
        x = self.network_input(obs)
        out = self.net(x)[1 if self.output == "u2" else 0]
        ref = torch.zeros(len(obs), 1, *obs.out_shape, device=dev)
        return from_training_scale(self.crop(out, ref), self.thresh, obs.buildings)

    def num_parameters(self) -> int:
        """Both U-Nets (the papers' count), though only one trains in each phase."""
        return sum(p.numel() for p in self.net.parameters())

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "inputs": list(self.inputs), "output": self.output}

    def load_state_dict(self, state: dict) -> None:
        if "net" not in state or "inputs" not in state:
            raise CkmError(f"checkpoint is not a {self.name} checkpoint (no 'net' weights or 'inputs'): pass one "
                           f"written by ckmbench run -m {self.name}")
        self.inputs = tuple(state["inputs"])
        self.output = state.get("output", "u2")
        self.net = self.build_net(len(self.inputs))
        self.net.load_state_dict(state["net"])


class RadioUNetS(RadioUNet):
    """RadioUNet-s: the sparse samples (on the training scale) and their mask as inputs, plus
    buildings and Tx where the task's observation carries them."""

    name = "radiounet-s"
    kinds = ("sparse",)
    fields = ("buildings", "tx_map", "cars", "y", "mask")
    required = ("y", "mask")
