"""The method contract (docs/plugins.md) and the context every call receives."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class RunContext:
    """What a method gets besides data: device, seed, profile, run folder, logger, budget."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    profile: str = "small"
    hparams: dict = field(default_factory=dict)
    run_dir: Path | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("ckmbench"))
    time_budget_s: float | None = None
    progress: bool = True
    extras: dict[str, Any] = field(default_factory=dict)
    # time.monotonic() at which training must stop, save and let the run score what it has
    deadline: float | None = None
    # Folder of this fit in the fit cache: the trainer keeps its resumable state there.
    fit_dir: Path | None = None
    # amp: None or "bf16" (autocast for the forward passes; set with --set amp=bf16)
    amp: str | None = None
    # fit_dependency(method_name) -> that method fitted on the same train task, dataset,
    # profile and seed (through the fit cache); e.g. LiCGDM starts from the CGDM fit.
    fit_dependency: Any = None
    # DataLoader worker processes that build training batches ahead (0: in this process;
    # the batches are the same either way). --loader-workers / $CKMBENCH_LOADER_WORKERS.
    loader_workers: int = 0
    # Set by fit_method while a fit trains: says how long training will take (ckmbench.fitnotice).
    fit_notice: Any = None
    # keep the trainer's resumable state of a finished fit (--keep-train-state); default: deleted
    keep_train_state: bool = False
    # networks (weights, and so the convolutions' activations) in channels-last memory format:
    # the runner sets it from the method's measured CPU choice (ckmbench.memformat)
    channels_last: bool = False


class TaskData:
    """A split seen through a task: ``batches(batch_size)`` yields (Observation, targets, regions).

    Learned methods call ``batches`` (or index ``samples``) in ``fit``; observations are
    re-derived deterministically from the degradation seed, so train data is identical for
    every method.
    """

    def __init__(self, dataset, task, seed: int):
        self.dataset = dataset
        self.task = task
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        order = torch.randperm(len(self.dataset), generator=generator).tolist() if shuffle else range(len(self.dataset))
        order = list(order)
        for start in range(0, len(order), batch_size):
            yield self.batch_at(order[start:start + batch_size])

    def batch_at(self, indices, draw: int | None = None):
        """The batch of the samples at ``indices``; ``draw`` = k gives each its k-th fresh
        degradation (training), ``None`` the fixed observation every method is scored on."""
        samples = [self.dataset[int(i)] for i in indices]
        return self.task.batch(samples, self.seed, draw)


class Method:
    """Base class of a method. Classical baselines keep the no-op ``fit`` and empty state."""

    name: str = ""

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        self.profile = profile
        self.hparams = dict(hparams or {})

    def fit(self, train: TaskData, val: TaskData, task, ctx: RunContext) -> None:
        """Train on ``train`` (validate on ``val``); no-op for classical baselines."""

    def predict(self, obs, ctx: RunContext) -> torch.Tensor:
        """Return (B, 1, H, W) predictions of the normalized map u in [0, 1]."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def num_parameters(self) -> int:
        """Trainable parameters of the method's modules (0 for classical baselines)."""
        from .metrics.cost import attribute_parameters

        return attribute_parameters(self)

    def inference_parameters(self) -> int | None:
        """Parameters used at inference when they differ from the trainable ones (a frozen VAE
        decoder, an encoder; S3 counts these), else None: recorded as ``cost.params_inference``."""
        return None

    def sampling_steps(self) -> int | None:
        """Number of network evaluations per prediction for iterative samplers (None otherwise)."""
        return None
