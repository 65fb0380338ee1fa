"""The evaluator the runner calls: every registered metric over a test set, in chunks.

Per-sample metrics come from the plugin registry (built-ins and any third-party plugin),
are computed over whole maps and over each scored region (``name@region``), then averaged
over samples (NaN = sample skipped, and noted). Aggregates (rmse, rmse_gain_db) are built
from those per-sample values; distribution metrics (FID) see the whole set at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CkmError, unknown_name
from .pixel import idle_cores, serial_torch_ops, worker_pool

BUILTIN_DISTRIBUTION = "ckmbench"
SCORED_KINDS = ("per_sample", "aggregate", "distribution")


@dataclass
class EvalResult:
    """``summary``: metric -> mean value (None when not computable); ``per_sample``: metric ->
    (N,) float64 values (NaN = skipped); ``notes``: fid provenance, skip counts, errors."""

    summary: dict[str, float | None]
    per_sample: dict[str, np.ndarray]
    notes: dict = field(default_factory=dict)
    n: int = 0
    suffixes: list = field(default_factory=lambda: [""])  # "" and "@<region>" per scored region
    failed: set = field(default_factory=set)  # per-sample metrics that failed (their mean is None)


def _as_maps(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 4 or t.shape[1] != 1:
        raise CkmError(f"evaluate: {what} has shape {tuple(t.shape)}: pass a (N,1,H,W) tensor of normalized maps")
    return t


# Predictions this far outside [0, 1] are noted in the record (rounding noise is not).
OUT_OF_RANGE_TOL = 1e-3


def bound_predictions(preds: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Predictions clamped to [0, 1] and the notes that say so: a NaN or inf anywhere is a
    CkmError (+inf must not become a perfect 1), and when values lie outside [0, 1] by more
    than ``OUT_OF_RANGE_TOL`` the share of such pixels is noted as ``out_of_range``."""
    bad = 0 if torch.isfinite(preds.sum()) else int((~torch.isfinite(preds)).sum())  # one pass when all is well
    if bad:
        raise CkmError(f"evaluate: predictions contain {bad} non-finite value(s) (NaN/inf): the method diverged; "
                       "fix it before scoring")
    notes = {}
    outside = (preds < -OUT_OF_RANGE_TOL) | (preds > 1 + OUT_OF_RANGE_TOL)
    count = int(outside.sum())
    if count:
        notes["out_of_range"] = (f"{count / preds.numel():.4g} of pixels ({count}) outside [0, 1] by more than "
                                 f"{OUT_OF_RANGE_TOL:g} (min {float(preds.min()):.4g}, max {float(preds.max()):.4g}), "
                                 "clamped before scoring")
    return preds.clamp(0, 1), notes


def _validate(preds, targets, gain_range, regions):
    preds = _as_maps(preds, "preds")
    targets = _as_maps(targets, "targets").to(preds.device)
    if preds.shape != targets.shape:
        raise CkmError(f"evaluate: preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ: predict maps of the targets' size")
    preds, bound_notes = bound_predictions(preds)
    gr = torch.as_tensor(gain_range, dtype=torch.float64).to(preds.device)
    if gr.shape != (preds.shape[0], 2):
        raise CkmError(f"evaluate: gain_range has shape {tuple(gr.shape)}, expected ({preds.shape[0]}, 2): pass (g_min, g_max) dB per map")
    masks = {}
    for name, m in (regions or {}).items():
        m = torch.as_tensor(m)
        if tuple(m.shape) != tuple(preds.shape):
            raise CkmError(f"evaluate: region '{name}' has shape {tuple(m.shape)}, expected {tuple(preds.shape)}: pass a (N,1,H,W) bool mask")
        masks[name] = m.to(device=preds.device, dtype=torch.bool)
    return preds, targets, gr, masks, bound_notes


def _select(reg, metrics) -> dict[str, object]:
    """The registered metrics to score (by name), plus the per-sample inputs aggregates need."""
    specs = {name: s for name, s in reg.items["metrics"].items() if s.kind in SCORED_KINDS}
    if metrics is None:
        return {name: s for name, s in specs.items() if s.by_default}
    chosen = {}
    for name in metrics:
        base = name.split("@", 1)[0]
        if base not in specs:
            raise unknown_name("metric", base, sorted(specs))
        chosen[base] = specs[base]
    for spec in list(chosen.values()):
        for need in getattr(spec.compute, "requires", ()):
            if need in specs:
                chosen.setdefault(need, specs[need])
    return {n: s for n, s in specs.items() if n in chosen}  # keep registry order


def _owner(reg, name: str) -> str:
    info = reg.owner.get(("metrics", name))
    return info.distribution if info is not None else "?"


def _call_isolated(reg, name: str, notes: dict, fn, *args, **kwargs):
    """Run a metric; a third-party metric's failure becomes a note, a built-in's propagates."""
    if _owner(reg, name) == BUILTIN_DISTRIBUTION:
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except CkmError:
        raise
    except Exception as exc:  # isolate a broken plugin metric
        notes[name] = f"error: {type(exc).__name__}: {exc}"
        return None


def _score_regions(reg, name: str, spec, notes: dict, p, t, g, masks: list):
    """A per-sample metric's values for every region (None after a failure): through
    ``compute.all_regions`` in one call when the metric offers it, else region by region."""
    all_regions = getattr(spec.compute, "all_regions", None)
    if all_regions is not None:
        out = _call_isolated(reg, name, notes, all_regions, p, t, g, masks)
        if out is not None and len(out) != len(masks):
            notes[name] = f"error: all_regions returned {len(out)} results for {len(masks)} regions"
            out = None
        yield from (out if out is not None else [None])
        return
    for m in masks:
        yield _call_isolated(reg, name, notes, spec.compute, p, t, g, mask=m)


def _score_slice(registry, specs: dict, variants: list, preds, targets, gr, sl: slice) -> tuple[dict, dict, set]:
    """Every metric of ``specs`` and every region on the maps ``sl``: (values per
    ``name@region``, notes, names that failed)."""
    parts: dict[str, np.ndarray] = {}
    notes: dict = {}
    failed: set[str] = set()
    p, t, g = preds[sl], targets[sl], gr[sl]
    masks = [None if mask is None else mask[sl] for _, mask in variants]  # the same objects for every metric
    for name, spec in specs.items():
        for (suffix, _), out in zip(variants, _score_regions(registry, name, spec, notes, p, t, g, masks)):
            if out is None:
                failed.add(name)
                break
            values = torch.as_tensor(out).detach().to("cpu", torch.float64).reshape(-1).numpy()
            if values.shape[0] != p.shape[0]:
                notes[name] = f"error: returned {values.shape[0]} values for {p.shape[0]} maps"
                failed.add(name)
                break
            parts[name + suffix] = values
    return parts, notes, failed


def _slices(n: int, step: int) -> list[slice]:
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _score_chunks(registry, per_sample_specs: dict, variants: list, notes: dict, failed: set,
                  preds, targets, gr, step: int, threads: int) -> dict[str, np.ndarray]:
    """Per-sample metrics over every region, ``step`` maps at a time; returns the values per
    ``name@region`` in the order of ``per_sample_specs`` and ``variants``.

    The built-in metrics are thread-safe (their shared intermediates are memoised per
    thread), so with ``threads`` > 1 each chunk is cut into one slice per worker and the
    slices are scored at once; third-party metrics are scored chunk by chunk on this thread.
    """
    n = int(preds.shape[0])
    builtin = {k: s for k, s in per_sample_specs.items() if _owner(registry, k) == BUILTIN_DISTRIBUTION}
    others = {k: s for k, s in per_sample_specs.items() if k not in builtin}
    results = []
    if builtin:
        cut = _slices(n, max(1, min(step, -(-n // threads))))
        if threads > 1 and len(cut) > 1:
            pool = worker_pool(threads)
            results += list(pool.map(lambda sl: _score_slice(registry, builtin, variants, preds, targets, gr, sl), cut))
        else:
            results += [_score_slice(registry, builtin, variants, preds, targets, gr, sl) for sl in cut]
    if others:
        results += [_score_slice(registry, others, variants, preds, targets, gr, sl) for sl in _slices(n, step)]
    for _, slice_notes, slice_failed in results:
        failed |= slice_failed
        for key, note in slice_notes.items():
            notes.setdefault(key, note)
    out: dict[str, np.ndarray] = {}
    for name in per_sample_specs:
        if name in failed:
            continue
        for suffix, _ in variants:
            pieces = [parts[name + suffix] for parts, _, _ in results if name + suffix in parts]
            if pieces:
                out[name + suffix] = np.concatenate(pieces)
    return out


def _mean(values: np.ndarray, key: str, notes: dict) -> float | None:
    finite = np.isfinite(values)
    skipped = int(values.size - finite.sum())
    if skipped:
        notes[f"{key}_skipped"] = skipped
    return float(values[finite].mean()) if finite.any() else None


def summarize(per_sample: dict[str, np.ndarray], suffixes: list[str], registry=None, metrics=None,
              failed=frozenset(), notes: dict | None = None) -> dict[str, float | None]:
    """The record's numbers from per-sample values: each per-sample metric's mean (NaN
    skipped, noted) and the aggregates, for the whole map (suffix "") and every region.

    :func:`evaluate` calls it on the values it scored; ``ckmbench results collect`` on the
    values of a sharded run's shards put back in test order, so both give the same numbers.
    """
    if registry is None:
        from ..plugins import registry as process_registry

        registry = process_registry()
    notes = {} if notes is None else notes
    specs = _select(registry, metrics)
    summary: dict[str, float | None] = {}
    for suffix in suffixes:
        view = {k[: len(k) - len(suffix)] if suffix else k: v for k, v in per_sample.items()
                if (k.endswith(suffix) if suffix else "@" not in k)}
        for name, spec in specs.items():
            key = name + suffix
            if spec.kind == "per_sample":
                if name in failed:
                    summary[key] = None
                elif name in view:
                    summary[key] = _mean(view[name], key, notes)
            elif spec.kind == "aggregate":
                if not all(r in view for r in getattr(spec.compute, "requires", ())):
                    continue
                value = _call_isolated(registry, name, notes, spec.compute, view)
                summary[key] = None if value is None or not np.isfinite(value) else float(value)
    return summary


def evaluate(preds, targets, gain_range, regions=None, metrics=None, fid: bool = True,
             chunk: int = 64, registry=None) -> EvalResult:
    """Score predictions against targets with every registered metric (or only ``metrics``).

    ``preds``/``targets``: (N,1,H,W) normalized maps (preds are clipped to [0,1] first);
    ``gain_range``: (N,2) dB; ``regions``: {name: bool (N,1,H,W)} scored as ``metric@name``;
    ``fid``: False skips distribution metrics; ``chunk``: maps per batch (bounds memory);
    ``registry``: a ``ckmbench.plugins.Registry`` (default: the process-wide one).
    """
    if registry is None:
        from ..plugins import registry as process_registry

        registry = process_registry()
    with serial_torch_ops():  # many small ops: threads would only synchronise (slices are scored in parallel instead)
        preds, targets, gr, masks, bound_notes = _validate(preds, targets, gain_range, regions)
    n = int(preds.shape[0])
    specs = _select(registry, metrics)
    per_sample_specs = {k: s for k, s in specs.items() if s.kind == "per_sample"}
    notes: dict = dict(bound_notes)
    variants: list[tuple[str, torch.Tensor | None]] = [("", None)] + [(f"@{k}", m) for k, m in masks.items()]

    failed: set[str] = set()
    step = max(1, int(chunk))
    with serial_torch_ops() as threads:
        threads = min(threads, idle_cores()) if preds.device.type == "cpu" else 1
        per_sample = _score_chunks(registry, per_sample_specs, variants, notes, failed, preds, targets, gr, step, threads)

    summary = summarize(per_sample, [suffix for suffix, _ in variants], registry, metrics, failed, notes)

    for name, spec in specs.items():
        if spec.kind != "distribution":
            continue
        if not fid:
            continue
        out = _call_isolated(registry, name, notes, spec.compute, preds, targets)
        if out is None:
            summary[name] = None
            continue
        value = out.get("value")
        summary[name] = None if value is None or not np.isfinite(value) else float(value)
        notes.update(out.get("notes", {}))
    return EvalResult(summary, per_sample, notes, n, [suffix for suffix, _ in variants], failed)
