"""The method contract (DESIGN §2) and the context every call receives."""

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
            samples = [self.dataset[i] for i in order[start:start + batch_size]]
            yield self.task.batch(samples, self.seed)


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

    def sampling_steps(self) -> int | None:
        """Number of network evaluations per prediction for iterative samplers (None otherwise)."""
        return None
