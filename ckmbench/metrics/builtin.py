"""The built-in metrics, registered through the same hook a third-party plugin uses.

Calling conventions by ``MetricSpec.kind``:

- ``per_sample``: ``compute(pred, target, gain_range, mask=None) -> Tensor (B,)`` on
  normalized maps (N,1,H,W); NaN marks a sample that cannot be scored (it is skipped).
  Optional ``compute.all_regions(pred, target, gain_range, masks) -> [Tensor (B,), ...]``
  scores every region at once (``masks``: list of masks, ``None`` = whole map).
- ``aggregate``: ``compute(per_sample: dict[str, np.ndarray]) -> float | None`` over the
  per-sample values of one region (keys without the ``@region`` suffix); the inputs it
  needs are listed in ``compute.requires``.
- ``distribution``: ``compute(preds, targets) -> {"value": float | None, "notes": dict}``
  over the whole test set.
- ``cost``: ``compute(cost: dict) -> number | None``, read from the runner's cost figures.
"""

from __future__ import annotations

import numpy as np

from ..hookspecs import hookimpl
from ..specs import MetricSpec
from . import diversity as diversity_module
from . import fid as fid_module
from . import pixel
from . import ssim as ssim_module


def ssim_metric(pred, target, gain_range=None, mask=None):
    """SSIM per sample (Gaussian window, scikit-image definition), optionally over a mask."""
    return ssim_module.ssim(pred, target, mask)


ssim_metric.all_regions = ssim_module.ssim_all_regions  # every region from one SSIM map


def sqrt_of_mean(source: str):
    """Aggregate: sqrt of the mean over samples of ``source`` (skipping NaNs); None if none."""

    def compute(per_sample: dict) -> float | None:
        values = np.asarray(per_sample[source], dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(np.sqrt(values.mean())) if values.size else None

    compute.requires = (source,)
    compute.__doc__ = f"sqrt(mean over samples of {source})"
    return compute


def fid_metric(preds, targets) -> dict:
    """FID through torch-fidelity; weights looked up locally, never downloaded."""
    return fid_module.fid(preds, targets)


def cost_field(name: str, cast=float):
    """Cost metric: the runner's cost figure ``name`` (None when it was not measured)."""

    def compute(cost: dict):
        value = cost.get(name)
        return None if value is None else cast(value)

    return compute


METRICS = (
    MetricSpec("mse", pixel.mse, False, "per_sample", "mean squared error of the normalized map", ""),
    MetricSpec("rmse", sqrt_of_mean("mse"), False, "aggregate", "sqrt of the mean mse over samples", ""),
    MetricSpec("nmse", pixel.nmse, False, "per_sample", "sum(e^2)/sum(u^2) per sample", ""),
    MetricSpec("mse_gain", pixel.mse_gain, False, "per_sample", "mean squared path-gain error", "dB^2"),
    MetricSpec("rmse_gain_db", sqrt_of_mean("mse_gain"), False, "aggregate", "sqrt of the mean mse_gain", "dB"),
    MetricSpec("psnr", pixel.psnr, True, "per_sample", "10 log10(1/mse), capped at 100 dB", "dB"),
    MetricSpec("ssim", ssim_metric, True, "per_sample", "SSIM, Gaussian window sigma 1.5", ""),
    MetricSpec("fid", fid_metric, False, "distribution", "FID on Inception-v3 pool features", ""),
    MetricSpec("diversity", diversity_module.diversity, True, "distribution",
               "mean pairwise RMSE among the predicted maps (the test maps' own: notes.diversity_data)", "",
               by_default=False),
    MetricSpec("params", cost_field("params", int), False, "cost", "trainable parameters", ""),
    MetricSpec("train_s", cost_field("train_s"), False, "cost", "training wall time", "s"),
    MetricSpec("infer_s_per_map", cost_field("infer_s_per_map"), False, "cost", "inference wall time per map", "s"),
    MetricSpec("sampling_steps", cost_field("sampling_steps", int), False, "cost", "sampling steps per generated map", ""),
    MetricSpec("peak_mem_mb", cost_field("peak_mem_mb"), False, "cost", "peak memory increase", "MB"),
)


@hookimpl
def ckmbench_register_metrics(register):
    for spec in METRICS:
        register(spec)
