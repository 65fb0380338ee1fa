"""What a plugin registers: one small, frozen spec per method, dataset, task and metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PROFILES = ("tiny", "small", "paper")


@dataclass(frozen=True)
class MethodSpec:
    """A method or baseline.

    ``factory(profile_name, hparams)`` returns an object with the ``ckmbench.method.Method``
    interface. ``tasks`` lists the task names it supports (exact names, e.g. ``sr4``,
    ``sr4-noisy``, ``inpaint``); ``profiles`` maps each of tiny/small/paper to a plain dict
    of hyper-parameters.
    """

    name: str
    factory: Callable[[str, dict], Any]
    tasks: tuple[str, ...]
    profiles: dict[str, dict] = field(default_factory=lambda: {p: {} for p in PROFILES})
    description: str = ""
    kind: str = "baseline"  # "baseline" (classical), "learned" or "diffusion"
    # Optional ``check_dataset(dataset) -> None`` raising CkmError where the method must not
    # be scored (e.g. the simulator on data it generated itself).
    check_dataset: Callable[[Any], None] | None = None
    # Optional folder of fits shipped with the plugin (read-only, same layout as the fit
    # cache): a run whose fit is there scores it without training (docs/training.md).
    fits_dir: str | None = None
    # Revision of the method's code within its distribution: bumped when a change alters what
    # a fit computes, so fits (cached or shipped) of the older code are never reused. Joins
    # the distribution version in records and fit keys as ``<dist version>+<version>``.
    version: str = ""

    def supports(self, task_name: str) -> bool:
        """Exact names; a paper-protocol variant ``<task>@<protocol>`` is supported with its task."""
        return task_name in self.tasks or task_name.partition("@")[0] in self.tasks


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset.

    ``load(root, **options)`` returns a ``ckmbench.data.sample.MapDataset``. ``root`` is the
    folder on disk for real datasets (``None`` for generated ones); when ``env_var`` is set
    and no root is given, the root is read from that environment variable.
    """

    name: str
    load: Callable[..., Any]
    description: str = ""
    needs_root: bool = False
    env_var: str | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``make(**params)`` returns a ``ckmbench.tasks.base.Task``."""

    name: str
    make: Callable[..., Any]
    description: str = ""
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A metric.

    ``kind`` is ``"per_sample"`` (``compute(pred, target, gain_range, mask=None) -> Tensor (B,)``
    on normalized maps, NaN = skip, averaged over the test set), ``"aggregate"``
    (``compute(per_sample: dict) -> float | None``, inputs listed in ``compute.requires``,
    e.g. rmse from mse), ``"distribution"`` (``compute(preds, targets) -> {"value": float |
    None, "notes": dict}``, e.g. FID) or ``"cost"`` (``compute(cost: dict) -> value``).
    ``by_default=False``: scored only where it is asked for by name (a task's ``metrics``),
    e.g. the diversity of generated maps, which means nothing for a conditional task.
    """

    name: str
    compute: Callable[..., Any]
    higher_is_better: bool
    kind: str = "per_sample"
    description: str = ""
    unit: str = ""
    by_default: bool = True
