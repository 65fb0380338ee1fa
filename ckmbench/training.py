"""The trainer every learned method's ``fit`` calls (docs/training.md).

What it gives a method, so no plugin writes its own loop:

- seeded data order (a permutation per epoch from (seed, epoch)) and a per-step generator
  seeded from (seed, rank, step), so step k sees the same batch and the same noise whether
  or not training was interrupted before it;
- optimizer, learning-rate schedule, gradient clipping and EMA from the profile;
- atomic checkpoints every N steps with model, optimizer, scheduler, EMA, step and every
  RNG state; the same command after a ``kill -9`` resumes and (on the CPU) ends with the
  same weights bit for bit;
- a NaN/inf guard that stops with the step named and keeps the last good checkpoint;
- a time budget that stops cleanly, saves, and lets the run score what was trained;
- progress (tqdm: step, loss, steps/s, time left), validation, best-or-last selection;
- batches built ahead in ``torch.utils.data.DataLoader`` worker processes when
  ``ctx.loader_workers`` > 0 (the same batches: they depend on the step only);
- DistributedDataParallel under ``torchrun`` (NCCL on GPUs, gloo on CPUs); only rank 0
  writes; bf16 autocast with ``amp="bf16"``;
- adversarial training (a GAN's generator and discriminator, each with its own optimizer and
  schedule, alternating per step) through the same loop: pass ``discriminator=`` and an
  :class:`AdversarialStep` (docs/training.md, "Adversarial training").
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import CkmError
from .fitnotice import budget_postfix

log = logging.getLogger("ckmbench.train")

STATE_FILE = "train_state.pt"


class TrainingDiverged(CkmError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------ configuration
@dataclass
class TrainConfig:
    """Training hyper-parameters, read from a method's profile (unknown keys are ignored)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    lr_end: float | None = None  # final learning rate of a "linear"/"cosine" decay
    lr_schedule: str = "constant"  # constant | linear | cosine | step
    lr_step_every: int = 0  # "step": multiply by lr_gamma every this many steps
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    grad_clip: float | None = 1.0
    # norm: global L2 norm <= grad_clip; value: every gradient entry in [-grad_clip, grad_clip];
    # adjustable: entries in [-grad_clip/lr_t, grad_clip/lr_t] at the current lr (VDSR's paper);
    # adjustable-norm: global L2 norm <= grad_clip/lr_t (DRRN's official Caffe patch)
    grad_clip_mode: str = "norm"
    ema_decay: float | None = None
    ema_start: int = 0
    checkpoint_every: int = 200
    val_every: int = 0  # 0: validate only at the end (when a val_fn is given)
    select: str = "last"  # last | best (best validation value)
    amp: str | None = None  # None | "bf16"
    fresh_degradations: bool = False  # a new degradation of each sample every step
    log_every: int = 50

    @classmethod
    def from_hparams(cls, hparams: dict, prefix: str = "") -> "TrainConfig":
        """The fields present in ``hparams`` (optionally under ``prefix``, e.g. "vae_")."""
        kw = {}
        for f in fields(cls):
            key = prefix + f.name
            if key in hparams:
                kw[f.name] = tuple(hparams[key]) if f.name == "adam_betas" else hparams[key]
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        bad = []
        if not isinstance(self.steps, int) or self.steps < 0:
            bad.append(f"steps={self.steps!r} (an integer >= 0)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad.append(f"batch_size={self.batch_size!r} (an integer >= 1)")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr!r} (a number > 0)")
        if self.lr_schedule not in ("constant", "linear", "cosine", "step"):
            bad.append(f"lr_schedule={self.lr_schedule!r} (constant, linear, cosine or step)")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad.append(f"optimizer={self.optimizer!r} (adam, adamw or sgd)")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and 0 < self.grad_clip < math.inf):
            bad.append(f"grad_clip={self.grad_clip!r} (a number > 0, or null for no clipping)")
        if self.grad_clip_mode not in ("norm", "value", "adjustable", "adjustable-norm"):
            bad.append(f"grad_clip_mode={self.grad_clip_mode!r} (norm, value, adjustable or adjustable-norm)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            bad.append(f"ema_decay={self.ema_decay!r} (in (0, 1), or null)")
        if self.select not in ("last", "best"):
            bad.append(f"select={self.select!r} (last or best)")
        if self.amp not in (None, "bf16", "none"):
            bad.append(f"amp={self.amp!r} (bf16 or none)")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            bad.append(f"checkpoint_every={self.checkpoint_every!r} (an integer >= 1)")
        if bad:
            raise CkmError("bad training hyper-parameters: " + "; ".join(bad) + ": fix them with --set key=value")

    def fingerprint(self) -> str:
        """What a resumed state must agree on (everything but cadence, and the length when the
        learning-rate schedule does not depend on it)."""
        d = asdict(self)
        for k in ("checkpoint_every", "log_every"):
            d.pop(k)
        for k, default in _LATER_FIELDS.items():
            if d[k] == default:
                d.pop(k)  # fields added later leave the states written before them resumable
        if self.lr_schedule in ("constant", "step"):
            d.pop("steps")  # the schedule does not depend on the length: training may be extended
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Fields added after the first release, with the value that means "as before".
_LATER_FIELDS = {"momentum": 0.9, "grad_clip_mode": "norm"}


@dataclass
class TrainResult:
    """What the run records about a fit."""

    steps_done: int = 0
    steps_planned: int = 0
    budget_reached: bool = False
    resumed_from: int | None = None
    final_loss: float | None = None
    best_val: float | None = None
    selected: str = "last"
    train_s: float = 0.0  # training seconds over every session of this fit (resumes included)
    history: list = field(default_factory=list)  # (step, mean loss over the last log interval)
    final_d_loss: float | None = None  # adversarial training: the discriminator's last logged loss
    d_history: list = field(default_factory=list)  # adversarial training: (step, mean D loss)

    def as_record(self) -> dict:
        d = asdict(self)
        d.pop("history")
        d.pop("d_history")
        if self.final_d_loss is None:
            d.pop("final_d_loss")  # single-model fits keep the record they always had
        return d


# ------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size from torchrun's environment (1 process when not under torchrun)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up: NCCL for CUDA, gloo for the CPU."""
    info = dist_info()
    if info.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device.index if device.index is not None else info.local_rank)
        torch.distributed.init_process_group(backend=backend)
    return info


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its local rank."""
    info = dist_info()
    if device.type == "cuda" and info.enabled and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


# ------------------------------------------------------------------ helpers
def step_seed(seed: int, rank: int, step: int, stream: str = "") -> int:
    """A 63-bit seed for (seed, rank, step): each step's randomness is independent of the past."""
    text = f"{int(seed)}|{int(rank)}|{int(step)}|{stream}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def rng_states() -> dict:
    """Every RNG the process uses, in a form ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def move_batch(batch, device: torch.device):
    """Observation/targets/regions to ``device``; pinned and non-blocking on CUDA."""
    obs, target, regions = batch
    if device.type == "cuda":
        target = target.pin_memory().to(device, non_blocking=True)
        regions = {k: v.pin_memory().to(device, non_blocking=True) for k, v in regions.items()}
    else:
        target = target.to(device)
        regions = {k: v.to(device) for k, v in regions.items()}
    return obs.to(device), target, regions


def autocast(device: torch.device, amp: str | None):
    """bf16 autocast when asked (CPU and CUDA); a no-op context otherwise (not a disabled
    autocast, which would switch off an outer one such as the runner's ``sample_amp``)."""
    if amp != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Before ``start`` the average tracks the weights exactly (decay 0), as in the SR3/DDPM
    code the seed papers follow ("EMA 0.9999 from step 5,000").
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0):
        self.decay = float(decay)
        self.start = int(start)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """shadow <- d * shadow + (1 - d) * weights, as one fused lerp over every tensor
        (a loop of per-tensor mul/add cost ~3x more per training step on a small net)."""
        d = self.decay if step >= self.start else 0.0
        shadows, weights = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                shadows.append(self.shadow[k])
                weights.append(v)
            else:
                self.shadow[k].copy_(v)
        if shadows:
            torch._foreach_lerp_(shadows, weights, 1.0 - d)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start": self.start, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.start = float(state["decay"]), int(state["start"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at each step: warm-up, then the profile's schedule."""
    end = (cfg.lr_end if cfg.lr_end is not None else cfg.lr) / cfg.lr
    total = max(1, cfg.steps - cfg.warmup_steps)

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = min(1.0, (step - cfg.warmup_steps) / total)
        if cfg.lr_schedule == "linear":
            return 1.0 + (end - 1.0) * p
        if cfg.lr_schedule == "cosine":
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * p))
        if cfg.lr_schedule == "step" and cfg.lr_step_every:
            return cfg.lr_gamma ** (step // cfg.lr_step_every)
        return 1.0

    return f


def make_optimizer(params: list, cfg: TrainConfig):
    """(optimizer, LambdaLR scheduler) of ``cfg`` over ``params``."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def clip_gradients(params: list, cfg: TrainConfig, optimizer) -> None:
    """The profile's gradient clipping (``grad_clip`` null = none), before the optimizer step."""
    if not cfg.grad_clip:
        return
    if cfg.grad_clip_mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    elif cfg.grad_clip_mode == "value":
        torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
    elif cfg.grad_clip_mode == "adjustable-norm":  # DRRN's code: Caffe's norm clip at theta / current lr
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip / optimizer.param_groups[0]["lr"])
    else:  # adjustable (Kim et al. VDSR): theta / current learning rate, entry by entry
        torch.nn.utils.clip_grad_value_(params, cfg.grad_clip / optimizer.param_groups[0]["lr"])


def save_atomic(obj, path: Path) -> None:
    from .results import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, map_location="cpu") -> dict:
    """A trainer state written by ``save_atomic``; never unpickles code (weights_only)."""
    from .checkpoints import load_checkpoint_file

    return load_checkpoint_file(path, map_location, what="training state", kind="a ckmbench training state",
                                fix="delete it or pass --restart to train from scratch")


# ------------------------------------------------------------------ the trainer
StepFn = Callable[[nn.Module, tuple, torch.Generator], torch.Tensor]


@dataclass
class AdversarialStep:
    """The three pieces of one GAN step; the trainer runs them in the order of SRGAN/pix2pix.

    1. ``generate(G, batch, generator) -> dict``: the generator's forward pass, once per step
       (e.g. ``{"fake": G(x), "real": target, "cond": x}``);
    2. ``d_loss(D, out, batch, generator) -> loss``: ``out`` with every tensor detached, so
       the discriminator learns on real vs G(x).detach(); D is updated;
    3. ``g_loss(D, out, batch, generator) -> loss``: the content loss plus the adversarial
       term through the *updated* D (D's weights are frozen for this backward pass); G is
       updated.
    """

    generate: Callable[[nn.Module, tuple, torch.Generator], dict]
    d_loss: Callable[[nn.Module, dict, tuple, torch.Generator], torch.Tensor]
    g_loss: Callable[[nn.Module, dict, tuple, torch.Generator], torch.Tensor]


@dataclass
class BatchOrder:
    """Which samples each step trains on: a permutation per epoch from (seed, epoch), the
    global batch of step k at positions k*batch .. (k+1)*batch, this rank's share of it."""

    seed: int
    batch_size: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        self._perm_cache = None

    def indices(self, n: int, step: int) -> list[int]:
        bs = self.batch_size
        start = step * bs
        out = []
        while len(out) < bs:
            epoch, pos = divmod(start + len(out), n)
            perm = self._perm(n, epoch)
            out.extend(perm[pos:pos + bs - len(out)])
        return out[self.rank::self.world_size]

    def _perm(self, n: int, epoch: int) -> list[int]:
        if self._perm_cache is None or self._perm_cache[0] != (n, epoch):
            g = torch.Generator().manual_seed(step_seed(self.seed, 0, epoch, "epoch"))
            self._perm_cache = ((n, epoch), torch.randperm(n, generator=g).tolist())
        return self._perm_cache[1]


class StepBatches(torch.utils.data.Dataset):
    """Item ``k`` = the batch of training step k (a map-style dataset over steps, so a
    DataLoader's workers build batches ahead while the model trains)."""

    def __init__(self, train, order: BatchOrder, fresh_degradations: bool):
        self.train, self.order, self.fresh = train, order, fresh_degradations

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int):
        idx = self.order.indices(len(self.train), step)
        return self.train.batch_at(idx, draw=step if self.fresh else None)


def _as_is(batch):
    return batch


class Trainer:
    """Runs a method's training loop; the method supplies the loss of one batch.

    ``step_fn(net, batch, generator) -> loss`` computes the loss of one batch (``net`` is
    the model, DDP-wrapped when distributed; ``batch`` = (Observation, targets, regions) on
    the device; ``generator`` a per-step torch.Generator on the device for noise, timesteps
    and crops). ``val_fn(model) -> float`` (lower is better) is called every ``val_every``
    steps and at the end on the EMA weights when EMA is on.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx, name: str = "model",
                 params: list | None = None, discriminator: nn.Module | None = None,
                 d_cfg: TrainConfig | None = None):
        if getattr(ctx, "channels_last", False):  # the method's measured CPU choice (ckmbench.memformat)
            from .memformat import to_channels_last

            for module in (model, discriminator):
                if module is not None:
                    to_channels_last(module)
        self.model = model
        self.cfg = cfg
        self.ctx = ctx
        self.name = name
        self.device = ctx.device
        self.dist = dist_info()
        self.params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(self.params, cfg)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_start) if cfg.ema_decay else None
        # adversarial training: the discriminator, its optimizer and schedule (``d_cfg``; the
        # length, batch, cadence and EMA of the run are the generator's ``cfg``)
        self.disc = discriminator
        self.d_cfg = self.d_params = self.d_optimizer = self.d_scheduler = None
        if discriminator is not None:
            d_cfg = d_cfg or replace(cfg, ema_decay=None)  # default: the generator's settings, no EMA
            if d_cfg.ema_decay:
                raise CkmError(f"{name}: d_ema_decay={d_cfg.ema_decay!r}: EMA applies to the generator only; "
                               f"remove d_ema_decay from the profile")
            self.d_cfg = replace(d_cfg, steps=cfg.steps, batch_size=cfg.batch_size)
            self.d_params = [p for p in discriminator.parameters() if p.requires_grad]
            self.d_optimizer, self.d_scheduler = make_optimizer(self.d_params, self.d_cfg)
        self._d_history: list = []
        self._d_value = float("nan")
        base = ctx.fit_dir or (Path(ctx.run_dir) / "train" if ctx.run_dir else None)
        self.state_dir = Path(base) / name if base is not None else None
        self.best_state: dict | None = None
        self.best_val: float | None = None
        self.elapsed_before = 0.0  # training seconds of earlier (interrupted) sessions of this fit
        self._t0: float | None = None

    # ---------------------------------------------------------- state
    @property
    def state_path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir is not None else None

    def fingerprint(self) -> str:
        """What a resumed state must agree on: the generator's settings (and the discriminator's)."""
        fp = self.cfg.fingerprint()
        return fp if self.disc is None else f"{fp}+d{self.d_cfg.fingerprint()}"

    def state_dict(self, step: int, history: list) -> dict:
        out = {
            "format": "ckmbench-train-state-1",
            "fingerprint": self.fingerprint(),
            "world_size": self.dist.world_size,
            "step": int(step),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "best": {"state": self.best_state, "val": self.best_val},
            "rng": rng_states(),
            "history": [[int(s), float(v)] for s, v in history],
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 else 0.0),
        }
        if self.disc is not None:
            out["adversarial"] = {"model": self.disc.state_dict(), "optimizer": self.d_optimizer.state_dict(),
                                  "scheduler": self.d_scheduler.state_dict(),
                                  "history": [[int(s), float(v)] for s, v in self._d_history]}
        return out

    def save(self, step: int, history: list) -> None:
        if self.state_path is None or not self.dist.is_main:
            return
        save_atomic(self.state_dict(step, history), self.state_path)

    def try_resume(self) -> tuple[int, list]:
        """Load the saved state if there is one for this config; returns (step, history)."""
        path = self.state_path
        if path is None or not path.exists():
            return 0, []
        state = load_state(path, map_location=self.device)
        if state.get("format") != "ckmbench-train-state-1":
            raise CkmError(f"{path} is not a ckmbench training state: delete it or pass --restart")
        if state["fingerprint"] != self.fingerprint() or state.get("world_size", 1) != self.dist.world_size:
            raise CkmError(f"training state {path} was written with other training settings or another number "
                           f"of processes: pass --restart to start again, or run with the settings it was made with")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.disc is not None:
            adv = state["adversarial"]
            self.disc.load_state_dict(adv["model"])
            self.d_optimizer.load_state_dict(adv["optimizer"])
            self.d_scheduler.load_state_dict(adv["scheduler"])
            self._d_history = [tuple(h) for h in adv["history"]]
        self.best_state, self.best_val = state["best"]["state"], state["best"]["val"]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        set_rng_states(state["rng"])
        log.info("%s: resuming from step %d (%s)", self.name, state["step"], path)
        return int(state["step"]), [tuple(h) for h in state["history"]]

    # ---------------------------------------------------------- data order
    def batch_indices(self, n: int, step: int) -> list[int]:
        """Indices of this rank's share of the global batch of ``step`` (seeded epochs)."""
        return self._order().indices(n, step)

    def _order(self) -> "BatchOrder":
        if getattr(self, "_batch_order", None) is None:
            self._batch_order = BatchOrder(self.ctx.seed, self.cfg.batch_size, self.dist.rank, self.dist.world_size)
        return self._batch_order

    def _loader(self, train, start: int):
        """Batches of steps ``start``.. from ``ctx.loader_workers`` DataLoader worker processes
        (None: built on this process, as before). Each step's batch is the same either way:
        the order and the degradations depend on the step only."""
        workers = int(getattr(self.ctx, "loader_workers", 0) or 0)
        if workers <= 0 or start >= self.cfg.steps:
            return None
        from torch.utils.data import DataLoader

        data = StepBatches(train, self._order(), self.cfg.fresh_degradations)
        return iter(DataLoader(data, batch_size=None, sampler=range(start, self.cfg.steps), num_workers=workers,
                               collate_fn=_as_is, prefetch_factor=2))

    # ---------------------------------------------------------- loop
    def fit(self, train, step_fn: StepFn | AdversarialStep,
            val_fn: Callable[[nn.Module], float] | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (resuming a saved state); ``step_fn`` is the loss of one batch,
        or an :class:`AdversarialStep` when the trainer was given a discriminator."""
        cfg = self.cfg
        if (self.disc is not None) != isinstance(step_fn, AdversarialStep):
            raise CkmError(f"{self.name}: a trainer with a discriminator takes an AdversarialStep, one without "
                           f"takes a loss function: pass discriminator= and AdversarialStep(...) together")
        self._step_fn = step_fn
        self._d_history: list = []
        self._bad_loss = "loss"
        if len(train) == 0:
            raise CkmError("the train split is empty: pick a dataset with a train split (e.g. city)")
        if self.dist.enabled:
            init_distributed(self.device)
        self.model.to(self.device)
        if self.disc is not None:
            self.disc.to(self.device)
        step, history = self.try_resume()
        result = TrainResult(steps_planned=cfg.steps, resumed_from=step or None, selected=cfg.select)
        net = self._wrap(self.model)
        self._dnet = self._wrap(self.disc) if self.disc is not None else None
        d_window: list[float] = []
        t0 = self._t0 = time.perf_counter()
        bar = self._progress(step)
        window: list[float] = []
        last_saved = step
        loader = self._loader(train, step)
        notice = getattr(self.ctx, "fit_notice", None) if self.dist.is_main else None
        try:
            while step < cfg.steps:
                if self.ctx.deadline is not None and time.monotonic() >= self.ctx.deadline:
                    result.budget_reached = True
                    log.info("%s: time budget reached at step %d of %d", self.name, step, cfg.steps)
                    break
                loss = self._one_step(net, train, step, next(loader) if loader is not None else None)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"{self.name}: {self._bad_loss} became {loss} at step {step + 1}; the last good checkpoint "
                        f"(step {last_saved}) is kept in {self.state_dir}: lower lr (--set lr=...) or use --restart")
                step += 1
                if notice is not None:
                    notice.step_done(self.name, step, cfg.steps)
                window.append(loss)
                if self.disc is not None:
                    d_window.append(self._d_value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{self.scheduler.get_last_lr()[0]:.2g}",
                                    **budget_postfix(self.ctx.deadline))
                if step % cfg.log_every == 0 or step == cfg.steps:
                    history.append((step, float(np.mean(window))))
                    window = []
                    if d_window:
                        self._d_history.append((step, float(np.mean(d_window))))
                        d_window = []
                if cfg.val_every and val_fn is not None and step % cfg.val_every == 0:
                    self._validate(val_fn)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.save(step, history)
                    last_saved = step
        finally:
            loader = None  # stops the DataLoader workers
            if bar is not None:
                bar.close()
        if window:
            history.append((step, float(np.mean(window))))
        if d_window:
            self._d_history.append((step, float(np.mean(d_window))))
        if val_fn is not None and (not cfg.val_every or step % cfg.val_every):
            self._validate(val_fn)
        if step != last_saved:
            self.save(step, history)
        self._finalise()
        result.steps_done = step
        result.train_s = self.elapsed_before + time.perf_counter() - t0  # all sessions of this fit
        result.history = history
        result.final_loss = history[-1][1] if history else None
        result.best_val = self.best_val
        if self.disc is not None:
            result.d_history = list(self._d_history)
            result.final_d_loss = self._d_history[-1][1] if self._d_history else None
        return result

    def _one_step(self, net: nn.Module, train, step: int, batch=None) -> float:
        cfg = self.cfg
        seed = step_seed(self.ctx.seed, self.dist.rank, step)
        torch.manual_seed(seed)  # dropout and any other global draws of this step
        gen = torch.Generator(device=self.device).manual_seed(seed)
        if batch is None:
            batch = StepBatches(train, self._order(), cfg.fresh_degradations)[step]
        batch = move_batch(batch, self.device)
        net.train()
        if self.disc is not None:
            return self._adversarial_step(net, batch, gen, step)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, cfg.amp):
            loss = self._step_fn(net, batch, gen)
        value = float(loss.detach().float())
        if not math.isfinite(value):
            return value
        loss.backward()
        self._update_model(step)
        return value

    def _update_model(self, step: int) -> None:
        """Clip the model's gradients, step its optimizer and schedule, then the EMA."""
        clip_gradients(self.params, self.cfg, self.optimizer)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step)

    def _adversarial_step(self, net: nn.Module, batch, gen: torch.Generator, step: int) -> float:
        """One GAN step: G's forward once; D on real vs G(x).detach(); then G on its loss through
        the updated D. Returns G's loss (D's is kept in ``_d_value``); a non-finite loss returns
        at once, before any update, with ``_bad_loss`` naming it."""
        cfg, adv = self.cfg, self._step_fn
        self._dnet.train()
        with autocast(self.device, cfg.amp):
            out = adv.generate(net, batch, gen)
        detached = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        self.d_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, cfg.amp):
            d_loss = adv.d_loss(self._dnet, detached, batch, gen)
        self._d_value = float(d_loss.detach().float())
        if not math.isfinite(self._d_value):
            self._bad_loss = "discriminator loss"
            return self._d_value
        d_loss.backward()
        clip_gradients(self.d_params, self.d_cfg, self.d_optimizer)
        self.d_optimizer.step()
        self.d_scheduler.step()
        # G's loss goes through the updated D, unwrapped (no DDP hooks) and frozen (no D gradients)
        flags = [p.requires_grad for p in self.d_params]
        for p in self.d_params:
            p.requires_grad_(False)
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.amp):
                g_loss = adv.g_loss(self.disc, out, batch, gen)
            value = float(g_loss.detach().float())
            if not math.isfinite(value):
                self._bad_loss = "generator loss"
                return value
            g_loss.backward()
        finally:
            for p, f in zip(self.d_params, flags):
                p.requires_grad_(f)
        self._update_model(step)
        return value

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def _progress(self, start: int):
        if not self.ctx.progress or not self.dist.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=start, desc=f"train {self.name}", unit="step", dynamic_ncols=True)

    def _eval_weights(self) -> nn.Module:
        """The weights validation and prediction use: EMA when on, else the raw ones."""
        if self.ema is None:
            return self.model
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m)
        return m

    def _validate(self, val_fn) -> None:
        model = self._eval_weights()
        model.eval()
        with torch.no_grad():
            value = float(val_fn(model))
        log.info("%s: validation %.6g", self.name, value)
        if math.isfinite(value) and (self.best_val is None or value < self.best_val):
            self.best_val = value
            if self.cfg.select == "best":
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _finalise(self) -> None:
        """Leave the model holding the weights the paper scores: best or last (EMA if on)."""
        if self.cfg.select == "best" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.ema is not None:
            self.ema.copy_to(self.model)
        self.model.eval()
