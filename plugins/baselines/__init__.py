"""Classical (non-learned) baselines, registered through the "ckmbench" entry-point group."""

from __future__ import annotations

from ckmbench.errors import CkmError
from ckmbench.hookspecs import hookimpl
from ckmbench.specs import PROFILES, MethodSpec
from ckmbench.tasks.builtin import SR_FACTORS, ZERO_SHOT_FACTORS

from .methods import IDW, KNN, RBF, Bicubic, Bilinear, Distance, Identity, Kriging, Nearest, PathLoss, Simulator

SR_TASKS = tuple(f"sr{f}" for f in SR_FACTORS)
NOISY_SR_TASKS = tuple(f"sr{f}-noisy" for f in SR_FACTORS)
ENVCF_SR_TASKS = tuple(f"sr{f}-envcf" for f in SR_FACTORS)
ZERO_SHOT_TASKS = tuple(f"zeroshot-sr{f}" for f in ZERO_SHOT_FACTORS)
ALL_SR_TASKS = SR_TASKS + NOISY_SR_TASKS + ENVCF_SR_TASKS + ZERO_SHOT_TASKS
INTERPOLATION_TASKS = ALL_SR_TASKS + ("inpaint", "sparse")
SMOOTHING_TASKS = INTERPOLATION_TASKS + ("denoise",)
PATHLOSS_TASKS = SR_TASKS + NOISY_SR_TASKS + ZERO_SHOT_TASKS + ("inpaint", "sparse", "denoise")
ENVGEN_TASKS = ("envgen-static", "envgen-dynamic")

# (class, supported tasks, description)
BASELINES = (
    (Nearest, INTERPOLATION_TASKS, "nearest measurement (grid replication for sr, nearest sample otherwise)"),
    (Bilinear, INTERPOLATION_TASKS, "bilinear grid interpolation for sr; Delaunay-linear for scattered data"),
    (Bicubic, INTERPOLATION_TASKS, "bicubic (Keys) grid interpolation for sr; Clough-Tocher for scattered data"),
    (IDW, SMOOTHING_TASKS, "inverse distance weighting, power 2, k nearest measurements"),
    (KNN, SMOOTHING_TASKS, "mean of the k nearest measurements"),
    (RBF, SMOOTHING_TASKS, "thin-plate-spline radial basis functions (scipy), local for dense data"),
    (Kriging, SMOOTHING_TASKS, "ordinary kriging, PyKrige-fitted exponential variogram, local neighbourhoods"),
    (PathLoss, PATHLOSS_TASKS, "least-squares log-distance path-loss fit to the measurements"),
    (Distance, ENVGEN_TASKS, "free-space log-distance law from the Tx (fixed exponent), buildings at 0"),
    (Simulator, ENVGEN_TASKS, "the built-in dominant-path simulator on the given layout"),
)


# Reference rows: no method at all, what a table needs to show what "doing nothing" scores.
REFERENCES = (
    (Identity, SMOOTHING_TASKS, "reference: the observation as given (nearest-upsampled for sr; hole or "
                                "unmeasured pixels at 0)"),
)


def not_simulator_data(dataset) -> None:
    """The simulator baseline is physics without learning on data it did not generate: on its
    own output it would score perfectly and say nothing."""
    if dataset.meta.get("generator") == "ckmbench.sim.dpm":
        raise CkmError(f"method 'simulator' is not scored on dataset '{dataset.name}': the built-in simulator "
                       "generated it; use real or ray-traced data (e.g. radiomapseer-map0, radiomapseer-dpm)")


def baseline_specs() -> list[MethodSpec]:
    """One MethodSpec per classical baseline; every profile uses the same hyper-parameters."""
    return [
        MethodSpec(name=cls.name, factory=cls, tasks=tasks, profiles={p: dict(cls.defaults) for p in PROFILES},
                   description=text, kind="baseline",
                   check_dataset=not_simulator_data if cls is Simulator else None)
        for cls, tasks, text in BASELINES
    ]


def reference_specs() -> list[MethodSpec]:
    """The reference rows (``identity``): registered like baselines, kind "baseline"."""
    return [MethodSpec(name=cls.name, factory=cls, tasks=tasks, profiles={p: dict(cls.defaults) for p in PROFILES},
                       description=text, kind="baseline") for cls, tasks, text in REFERENCES]


@hookimpl
def ckmbench_register_methods(register):
    for spec in baseline_specs() + reference_specs():
        register(spec)
