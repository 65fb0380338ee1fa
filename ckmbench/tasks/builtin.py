"""The built-in tasks (docs/tasks.md), registered through the "ckmbench" entry-point group.

Each task is a small ``Task`` subclass that applies the operators of
:mod:`ckmbench.tasks.operators` with the seeded generator of the base class, so every
method sees the identical observation. Besides the observation fields, every batch carries
``extras["noise_std"]`` (the known noise level, 0 for clean tasks) and, for super-resolution,
``extras["lr_mode"]``, so methods can tell where the samples sit and how noisy they are.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..data.sample import Sample
from ..errors import CkmError
from ..hookspecs import hookimpl
from ..specs import TaskSpec
from . import operators as op
from .base import Task, tx_one_hot

SR_FACTORS = (2, 4, 8, 16)
ZERO_SHOT_FACTORS = (2, 8, 16)
ZERO_SHOT_FIT_TASK = "sr4"


class BuiltinTask(Task):
    """Common behaviour: known noise level in ``obs.extras`` and a no-op dataset check."""

    noise_std: float = 0.0

    def observation_extras(self) -> dict:
        return {"noise_std": float(self.noise_std)}

    def batch(self, samples, seed, draw=None):
        obs, targets, regions = super().batch(samples, seed, draw)
        obs.extras.update(self.observation_extras())
        return obs, targets, regions

    def check_dataset(self, dataset) -> None:
        """Raise CkmError when ``dataset`` cannot be used with this task (nothing to check here)."""

    def _fail(self, what: str) -> CkmError:
        return CkmError(f"task {self.name}: {what}")


def _check_noise(task: BuiltinTask, noise_std) -> float:
    if not isinstance(noise_std, (int, float)) or not np.isfinite(noise_std) or noise_std < 0:
        raise task._fail(f"noise_std must be a number >= 0, got {noise_std!r}: pass e.g. noise_std={op.NOISE_STD:.4f}")
    return float(noise_std)


class SuperResolution(BuiltinTask):
    """``y = u[::f, ::f]`` (or f x f block means), optionally noisy, on u or on the EnvCF map."""

    kind = "sr"
    provides = ("y",)

    def __init__(self, factor: int = 4, lr_mode: str = "subsample", noisy: bool = False,
                 noise_std: float = op.NOISE_STD, envcf: bool = False, fit_task: str | None = None):
        prefix = "zeroshot-" if fit_task else ""
        suffix = ("-noisy" if noisy else "") + ("-envcf" if envcf else "")
        self.name = f"{prefix}sr{factor}{suffix}"
        if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 2:
            raise self._fail(f"factor must be an integer >= 2, got {factor!r}: pass e.g. factor=4")
        if lr_mode not in op.LR_MODES:
            raise self._fail(f"lr_mode {lr_mode!r} is not one of {', '.join(op.LR_MODES)}: pass lr_mode=\"subsample\"")
        self.factor = int(factor)
        self.lr_mode = lr_mode
        self.noisy = bool(noisy)
        self.noise_std = _check_noise(self, noise_std) if noisy else 0.0
        self.envcf = bool(envcf)
        self.fit_task = fit_task
        name = "e" if envcf else "u"
        how = (f"{name}[::{factor}, ::{factor}]" if lr_mode == "subsample"
               else f"{factor}x{factor} block means of {name}")
        noise = f" + N(0, {self.noise_std:.4f}^2)" if noisy else ""
        envcf_note = ", e = max(u, buildings, tx) the EnvCF map (also the target)" if envcf else ""
        shot = f"; fitted on {fit_task}, scored here" if fit_task else ""
        self.description = f"x{factor} super-resolution from y = {how}{noise}{envcf_note}{shot}"

    def source(self, sample: Sample) -> np.ndarray:
        if self.envcf:
            return op.envcf(sample.u, sample.buildings, tx_one_hot(sample))
        return sample.u

    def target(self, sample: Sample) -> np.ndarray:
        return self.source(sample)

    def observe(self, sample, rng):
        y = op.lowres(self.source(sample), self.factor, self.lr_mode)
        if self.noisy:
            y = op.add_noise(y, self.noise_std, rng)
        return {"y": y}

    def observation_extras(self) -> dict:
        return {**super().observation_extras(), "lr_mode": self.lr_mode}


class Inpaint(BuiltinTask):
    """A square hole of side ``hole_fraction * H`` inside the map; the rest observed with noise."""

    name = "inpaint"
    kind = "inpaint"
    provides = ("y", "mask")

    def __init__(self, hole_fraction: float = 0.25, noise_std: float = op.NOISE_STD):
        if not isinstance(hole_fraction, (int, float)) or not 0 < hole_fraction < 1:
            raise self._fail(f"hole_fraction must be in (0, 1), got {hole_fraction!r}: pass e.g. hole_fraction=0.25")
        self.hole_fraction = float(hole_fraction)
        self.noise_std = _check_noise(self, noise_std)
        self.description = (f"fill a square hole of side {hole_fraction:g} H at a random position; observed pixels "
                            f"+ N(0, {self.noise_std:.4f}^2), hole 0, mask 1 = observed")

    def observe(self, sample, rng):
        hole = op.square_hole(sample.shape, op.hole_side(sample.shape, self.hole_fraction), rng)
        y = op.add_noise(sample.u, self.noise_std, rng)
        y[hole] = 0.0
        return {"y": y, "mask": (~hole).astype(np.float32)}

    def scored_regions(self, sample, obs):
        return {**super().scored_regions(sample, obs), "hole": obs["mask"] < 0.5}


class Denoise(BuiltinTask):
    """``y = u + N(0, noise_std^2)`` on every pixel."""

    name = "denoise"
    kind = "denoise"
    provides = ("y",)

    def __init__(self, noise_std: float = op.NOISE_STD):
        self.noise_std = _check_noise(self, noise_std)
        self.description = f"denoise u + N(0, {self.noise_std:.4f}^2), not clipped"

    def observe(self, sample, rng):
        return {"y": op.add_noise(sample.u, self.noise_std, rng)}


class Sparse(BuiltinTask):
    """A random ``fraction`` of the outdoor pixels observed exactly, the rest 0."""

    name = "sparse"
    kind = "sparse"
    provides = ("y", "mask")

    def __init__(self, fraction: float = 0.01):
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise self._fail(f"fraction must be in (0, 1], got {fraction!r}: pass e.g. fraction=0.01")
        self.fraction = float(fraction)
        self.description = f"{fraction:.0%} of the outdoor pixels observed (at least 1), the rest 0; mask given"

    def observe(self, sample, rng):
        mask = op.sparse_mask(~sample.buildings, self.fraction, rng)
        return {"y": np.where(mask, sample.u, np.float32(0.0)).astype(np.float32), "mask": mask.astype(np.float32)}


class EnvGen(BuiltinTask):
    """Map from the environment: buildings (+ cars when dynamic) and the transmitter."""

    kind = "envgen"

    def __init__(self, dynamic: bool = False):
        self.dynamic = bool(dynamic)
        self.name = "envgen-dynamic" if dynamic else "envgen-static"
        self.provides = ("buildings", "cars", "tx_map", "tx") if dynamic else ("buildings", "tx_map", "tx")
        self.description = ("map from buildings, cars and the Tx; the target includes the cars" if dynamic
                            else "map from buildings and the Tx (scored on the dataset's map)")

    def observe(self, sample, rng):
        obs = {
            "buildings": sample.buildings.astype(np.float32),
            "tx_map": tx_one_hot(sample),
            "tx": np.asarray(sample.tx, np.float32),
        }
        if self.dynamic:
            obs["cars"] = sample.cars.astype(np.float32)
        return obs

    def check_dataset(self, dataset) -> None:
        if self.dynamic and not np.any(dataset.cars):
            raise CkmError(f"task {self.name} needs a dataset with cars (e.g. city-cars); "
                           f"dataset {dataset.name} has none")


class Generate(BuiltinTask):
    """Unconditional generation: the observation is empty (only sizes and ranges). Scored by
    FID and diversity only: pixel errors against a paired test map mean nothing here."""

    name = "generate"
    kind = "generate"
    provides = ()
    description = "unconditional generation of maps; scored by FID and diversity"
    metrics = ("fid", "diversity")

    def observe(self, sample, rng):
        return {}


def builtin_task_specs() -> list[TaskSpec]:
    """One TaskSpec per built-in task; ``make(**params)`` builds the task."""
    specs = []

    def add(make, params):
        task = make(**params)
        specs.append(TaskSpec(name=task.name, make=make, description=task.description, params=dict(params)))

    for f in SR_FACTORS:
        add(SuperResolution, {"factor": f, "lr_mode": "subsample"})
    for f in SR_FACTORS:
        add(partial(SuperResolution, noisy=True), {"factor": f, "lr_mode": "subsample", "noise_std": op.NOISE_STD})
    for f in SR_FACTORS:
        add(partial(SuperResolution, envcf=True), {"factor": f, "lr_mode": "subsample"})
    for f in ZERO_SHOT_FACTORS:
        add(partial(SuperResolution, fit_task=ZERO_SHOT_FIT_TASK), {"factor": f, "lr_mode": "subsample"})
    add(Inpaint, {"hole_fraction": 0.25, "noise_std": op.NOISE_STD})
    add(Denoise, {"noise_std": op.NOISE_STD})
    add(Sparse, {"fraction": 0.01})
    add(partial(EnvGen, dynamic=False), {})
    add(partial(EnvGen, dynamic=True), {})
    add(Generate, {})
    return specs


@hookimpl
def ckmbench_register_tasks(register):
    from .protocols import protocol_task_specs  # the paper-protocol variants (docs/protocol.md §7)

    for spec in builtin_task_specs() + protocol_task_specs():
        register(spec)
